"""The Hub: what `--push_to_hub` uploads (through a patched `HfApi`, no network), the model card, the item tower as a
sentence-transformers model, and a model loaded back from a folder laid out as the Hub's cache serves it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from recsys_bert.arguments import parse_args
from recsys_bert.hub import save_item_encoder
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel, load_model
from recsys_bert.trainer import train
from recsys_bert.utils import InputError
from tests.conftest import REPO_ROOT, tiny_train_args

REPO_ID = "me/recsys-bert-tiny"


@pytest.fixture(autouse=True)
def _fresh_state(fresh_accelerate_state):
    """Each run in this process starts its own Accelerator."""


class FakeHub:
    """Records what `HfApi` is asked to do instead of doing it."""

    def __init__(self, monkeypatch, fail: bool = False):
        self.repos, self.commits = [], []
        hub = self

        def create_repo(api, repo_id, **kwargs):
            if fail:
                raise ConnectionError("the Hub can't be reached")
            hub.repos.append((repo_id, kwargs))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(api, repo_id, operations, commit_message, **kwargs):
            hub.commits.append((repo_id, list(operations), commit_message))
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


def _texts(items_file: Path, n: int) -> list[str]:
    movies = pd.read_csv(items_file).head(n)
    return [f"{title}. {genres}" for title, genres in zip(movies.title, movies.genres)]


@pytest.mark.latest
def test_push_uploads_a_self_contained_model_that_loads_back_from_the_hub_cache(
    generic_files, tiny, tmp_path, monkeypatch
):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "run"
    hub = FakeHub(monkeypatch)
    extra = ("--max_steps", "4", "--save_steps", "2", "--projection_dim", "16", "--finetune_layers", "1",
             "--push_to_hub", "--hub_model_id", REPO_ID, "--hub_private")  # fmt: skip
    train(*parse_args(tiny_train_args(generic_files, tiny, folder, *extra)))

    # exactly the model's files, one commit, a private repo; no resume state, nothing temporary
    assert hub.repos == [(REPO_ID, {"private": True, "exist_ok": True, "repo_type": "model"})]
    (repo_id, operations, _), = hub.commits  # fmt: skip
    uploaded = {op.path_in_repo: Path(op.path_or_fileobj) for op in operations}
    assert repo_id == REPO_ID and (folder / "checkpoint-4").is_dir()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "metrics.json", "item_encoder/modules.json", "item_encoder/model.safetensors",
            "item_encoder/2_Dense/config.json"} <= set(uploaded)  # fmt: skip
    assert not [p for p in uploaded if p.startswith(("checkpoint-", "best_model", ".")) or p.endswith(".tmp")]
    assert all(path.is_file() and path.is_relative_to(folder) for path in uploaded.values())
    # the run's own record stays home: its TensorBoard logs, and config.yaml with this machine's paths
    assert (folder / "config.yaml").is_file() and list((folder / "logs").rglob("*"))
    assert not [p for p in uploaded if p.startswith("logs/") or p == "config.yaml"]
    for path in uploaded.values():  # no local path in anything published
        if path.suffix in (".json", ".md"):
            text = path.read_text(encoding="utf-8")
            assert str(tmp_path) not in text and str(generic_files[0].parent) not in text, path

    # the model card: Hub metadata, both protocols' metrics of metrics.json, the licence of the encoder (the data
    # are a user's own files)
    card = ModelCard.load(folder / "README.md")
    metrics = json.loads((folder / "metrics.json").read_text())["test"]
    assert card.data.library_name == "recsys-bert" and "recommendation" in card.data.tags
    assert card.data.datasets is None and card.data.model_name == REPO_ID  # no Hub id of the data to name
    assert card.data.license is None  # the tiny test encoder's folder has no model card, so no licence to inherit
    card_metrics = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert card_metrics == {(protocol, k): round(metrics[protocol][k], 4) for protocol in metrics
                            for k in ("ndcg@10", "recall@10", "mrr")}  # fmt: skip
    assert f"python recommend.py --model {REPO_ID}" in card.text and "max_steps: 4" in card.text
    assert "History excluded from the ranking" in card.text and "History kept in the ranking" in card.text

    # the item tower as a sentence-transformers model gives the recommender's item vectors
    model, tokenizer = load_model(str(folder))
    texts = _texts(generic_files[0], 20) + ["a very long text " * 40]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=model.config.max_item_tokens,
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])
    got = SentenceTransformer(str(folder / "item_encoder"), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # what was uploaded, laid out as the Hub's cache serves it, loads by its repo id (offline)
    cache = tmp_path / "hub-cache"
    snapshot = cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    for path_in_repo, source in uploaded.items():
        (snapshot / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, snapshot / path_in_repo)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    items, log = generic_files
    argv = ["--items", str(items), "--interactions", str(log), "--text_template", "{title}. {genres}",
            "--top_k", "10", "--vector_cache", "none"]  # fmt: skip
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    runs = {}
    for name, model_ref in (("hub", REPO_ID), ("local", str(folder))):
        result = subprocess.run(
            [sys.executable, "recommend.py", "--model", model_ref, *argv, "--output", str(tmp_path / f"{name}.jsonl")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert runs["hub"] == runs["local"] and len(runs["hub"].splitlines()) == 40


def test_a_failed_push_keeps_the_model_and_says_how_to_push_it(generic_files, tiny, tmp_path, monkeypatch):
    FakeHub(monkeypatch, fail=True)
    extra = ("--max_steps", "2", "--push_to_hub", "--hub_model_id", REPO_ID)
    with pytest.raises(InputError, match=r"push to me/recsys-bert-tiny failed .*python -m recsys_bert.hub"):
        train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path, *extra)))
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "metrics.json").is_file()
    with pytest.raises(InputError, match="hub_model_id"):
        train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path / "b", "--push_to_hub")))


def test_push_an_existing_folder_from_the_command_line(generic_files, tiny, tmp_path, monkeypatch):
    from recsys_bert import hub

    train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path, "--max_steps", "1")))
    shutil.rmtree(tmp_path / "item_encoder")  # a folder from before item_encoder/ existed: made again on push
    fake = FakeHub(monkeypatch)
    hub.main([str(tmp_path), "--hub_model_id", "me/other"])
    (_, operations, _), = fake.commits  # fmt: skip
    assert "item_encoder/modules.json" in {op.path_in_repo for op in operations}
    assert ModelCard.load(tmp_path / "README.md").data.model_name == "me/other"


@pytest.mark.slow
def test_item_encoder_of_the_real_minilm_matches_sentence_transformers(tmp_path):
    """Real weights: the packaged MiniLM with a projection head, exported and encoded by sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from recsys_bert.encoders import default_encoder_path

    torch.manual_seed(0)
    model = RecsysBertModel.from_encoder(RecsysBertConfig(projection_dim=32, max_item_tokens=24)).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    save_item_encoder(model, tokenizer, tmp_path / "item_encoder")
    texts = _texts(REPO_ROOT / "data" / "ml-latest-small" / "movies.csv", 30) + ["word " * 100]
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        expected = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])  # (31, 32)
    got = SentenceTransformer(str(tmp_path / "item_encoder"), device="cpu").encode(texts, convert_to_tensor=True)
    assert got.shape == (31, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_card_takes_its_licence_from_the_data_or_the_encoder_and_shows_no_local_path():
    from recsys_bert.hub import model_card

    results = {
        "protocol": {"data": "ml-latest-small", "items": 3, "history_excluded": True, "ranking": "full catalogue"},
        "test": {"history_kept": {"ndcg@10": 0.1, "mrr": 0.2}, "history_excluded": {"ndcg@10": 0.3, "mrr": 0.4}},
    }
    movielens = {"data_format": "movielens", "data_dir": str(REPO_ROOT / "data" / "ml-latest-small"),
                 "encoder_name_or_path": None, "output_dir": str(REPO_ROOT / "runs" / "x")}  # fmt: skip
    card = ModelCard(model_card(results, movielens, {"user_tower": "attention"}))
    # MovieLens: research use, non-commercial; its terms travel with the model, not the encoder's apache-2.0
    assert card.data.license == "other" and card.data.license_name == "movielens-terms"
    assert card.data.license_link.startswith("https://files.grouplens.org/")
    assert "data_dir: ml-latest-small" in card.text and str(REPO_ROOT) not in card.text
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    generic = ModelCard(model_card(results, {"data_format": "generic", "encoder_name_or_path": None}, {}))
    assert generic.data.license == "apache-2.0"  # all-MiniLM-L6-v2's own model card says so
    assert "the protocol that chose the best model" in generic.text.split("History excluded")[1].split("\n")[0]


def test_the_readmes_python_api_example_runs(generic_files, tiny, tmp_path):
    """The README's Python API block, on a trained tiny model: it runs and its top-2 agree with recommend's scores."""
    import re

    train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path, "--max_steps", "1")))
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(block.replace('"runs/movielens"', repr(str(tmp_path))), namespace)  # noqa: S102
    scores, model = namespace["scores"], namespace["model"]
    assert scores.shape == (1, 3) and torch.isfinite(scores).all()
    # the history's items get the learned repeat bias, the others not
    plain = namespace["users"] @ namespace["items"].T / model.config.score_temperature
    bias = model.repeat_bias.item() / model.config.score_temperature
    torch.testing.assert_close(scores, plain + torch.tensor([[bias, 0.0, bias]]))


def test_the_card_shows_the_beyond_accuracy_table_only_where_metrics_json_has_it():
    from recsys_bert.hub import model_card

    beyond = {"coverage@10": 0.25, "gini@10": 0.5, "average_popularity@10": 12.345, "novelty@10": 3.0}
    results = {
        "protocol": {"data": "d", "items": 3, "history_excluded": False, "ranking": "full catalogue"},
        "test": {"history_kept": {"ndcg@10": 0.1, "beyond_accuracy": beyond}, "history_excluded": {"ndcg@10": 0.2}},
        "baselines": {"popularity": {"history_kept": {"ndcg@10": 0.0}, "history_excluded": {
            "ndcg@10": 0.0, "beyond_accuracy": {**beyond, "coverage@10": 0.125}}}},
    }  # fmt: skip
    card = model_card(results, {"data_format": "generic"}, {})
    table = card.split("### Beyond accuracy")[1]
    assert "| model | history | coverage@10 | Gini@10 | avg. popularity@10 | novelty@10 |" in table
    assert "| recsys-bert (this model) | kept | 0.2500 | 0.5000 | 12.3 | 3.0000 |" in table
    assert "| popularity | excluded | 0.1250 |" in table and "| recsys-bert (this model) | excluded |" not in table
    del results["test"]["history_kept"]["beyond_accuracy"], results["baselines"]
    assert "Beyond accuracy" not in model_card(results, {"data_format": "generic"}, {})  # MIND, older runs
