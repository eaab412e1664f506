"""recommend.py: the top-K lists of a trained model reproduce its test metrics; cold start, history exclusion,
chunked ranking, output formats, the vector cache and two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_bert.arguments import parse_args, parse_recommend_args
from recsys_bert.catalogue import Catalogue
from recsys_bert.inference import read_users, recommend
from recsys_bert.metrics import impression_metrics
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel, load_model
from recsys_bert.retrieval import top_k
from recsys_bert.trainer import train
from recsys_bert.utils import InputError
from tests.conftest import REPO_ROOT, assert_same_ranking_up_to_ties, reset_accelerate_state, tiny_train_args


@pytest.fixture(autouse=True)
def _fresh_state(fresh_accelerate_state):
    """Each run in this process starts its own Accelerator."""


@pytest.fixture(scope="module")
def trained(generic_files, tiny, tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny model trained for a few steps with history excluded and the text skip (as the defaults ship: wider
    vectors, `[head, sqrt(beta) x text]`), and the data flags it was trained with."""
    folder = tmp_path_factory.mktemp("trained")
    extra = ("--max_steps", "4", "--finetune_layers", "1", "--projection_dim", "16", "--exclude_history",
             "--text_skip_weight", "0.5")  # fmt: skip
    reset_accelerate_state()
    train(*parse_args(tiny_train_args(generic_files, tiny, folder, *extra)))
    assert json.loads((folder / "config.json").read_text())["text_skip_weight"] == 0.5
    items, log = generic_files
    data_flags = ["--items", str(items), "--interactions", str(log), "--text_template", "{title}. {genres}"]
    return folder, data_flags


def _recommend(*argv: str) -> dict:
    reset_accelerate_state()
    return recommend(*parse_recommend_args(list(argv)))


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype={"user_id": str, "target_id": str})
    frame = pd.read_csv(path, dtype={"user_id": str, "target_id": str})
    for column in ("item_ids", "scores", "probabilities"):
        frame[column] = frame[column].map(json.loads)
    return frame


def _metrics_from_file(frame: pd.DataFrame, k: int) -> dict[str, float]:
    """NDCG@k, Recall@k and MRR@k from the ranked lists and targets alone (one target per user)."""
    ranks = np.array(
        [list(ids).index(t) + 1 if t in list(ids) else 10**9 for ids, t in zip(frame.item_ids, frame.target_id)]
    )
    hit = ranks <= k
    return {
        f"ndcg@{k}": float(np.where(hit, 1 / np.log2(ranks + 1), 0).mean()),
        f"recall@{k}": float(hit.mean()),
        f"mrr@{k}": float(np.where(hit, 1 / ranks, 0).mean()),
    }


@pytest.mark.latest
def test_top_k_lists_reproduce_the_test_metrics_of_training(trained, tmp_path):
    folder, data_flags = trained
    output = tmp_path / "recs.parquet"
    summary = _recommend("--model", str(folder), *data_flags, "--split", "test", "--top_k", "50",
                         "--exclude_history", "--output", str(output))  # fmt: skip
    written = json.loads((folder / "metrics.json").read_text())["test"]["history_excluded"]
    frame = _read(output)
    assert len(frame) == written["users"] == summary["users"] == 40
    for k in (10, 20, 50):
        assert _metrics_from_file(frame, k) == pytest.approx({m: written[m] for m in _metrics_from_file(frame, k)},
                                                             abs=1e-4)  # fmt: skip
    # probabilities are the softmax over the catalogue (history excluded): below 1 in sum, best first
    assert all(0 < sum(p) <= 1 + 1e-5 and list(p) == sorted(p, reverse=True) for p in frame.probabilities)


def test_output_formats_hold_the_same_rows(trained, tmp_path):
    folder, data_flags = trained
    frames = {}
    for suffix in (".parquet", ".jsonl", ".csv"):
        _recommend("--model", str(folder), *data_flags, "--top_k", "7", "--output", str(tmp_path / f"r{suffix}"))
        frames[suffix] = _read(tmp_path / f"r{suffix}")
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    reference = frames[".parquet"]
    assert list(reference.columns) == ["user_id", "item_ids", "scores", "probabilities", "target_id"]
    for frame in frames.values():
        assert frame.user_id.tolist() == reference.user_id.tolist()
        assert [list(x) for x in frame.item_ids] == [list(x) for x in reference.item_ids]
        np.testing.assert_allclose(np.stack(frame.scores.map(list)), np.stack(reference.scores.map(list)), rtol=1e-6)
    with pytest.raises(InputError, match=r"\.xlsx"):
        _recommend("--model", str(folder), *data_flags, "--output", str(tmp_path / "r.xlsx"))


@pytest.mark.latest
def test_explanations_and_diversification_in_every_format_and_in_the_python_api(trained, generic_files, tmp_path):
    folder, data_flags = trained
    ratings = pd.read_csv(generic_files[1], dtype=str)
    users = [
        {
            "user_id": str(user),
            "history": ratings[ratings.user_id == str(user)].sort_values("timestamp").item_id.tolist()[-8:],
        }
        for user in (1, 2, 3)
    ]
    (tmp_path / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users))
    flags = ["--model", str(folder), "--items", data_flags[1], "--text_template", "{title}. {genres}",
             "--users", str(tmp_path / "users.jsonl"), "--top_k", "6", "--exclude_history"]  # fmt: skip
    frames = {}
    for suffix in (".parquet", ".jsonl", ".csv"):
        _recommend(*flags, "--explain", "2", "--output", str(tmp_path / f"r{suffix}"))
        frames[suffix] = _read(tmp_path / f"r{suffix}")
    frames[".csv"]["because"] = frames[".csv"]["because"].map(json.loads)
    reference = frames[".parquet"]
    assert list(reference.columns) == ["user_id", "item_ids", "scores", "probabilities", "because"]
    for frame in frames.values():
        for ids, because, user in zip(frame.item_ids, frame.because, users):
            assert len(because) == len(ids) == 6
            assert all(
                len(reasons) == 2 and {r["item_id"] for r in reasons} <= set(user["history"]) for reasons in because
            )
        assert [[[r["item_id"] for r in x] for x in b] for b in frame.because] == [
            [[r["item_id"] for r in x] for x in b] for b in reference.because
        ]
    # the Python API gives the same lists and explanations for the same histories
    from recsys_bert.recommender import Recommender, load_catalogue, run_data_args

    reset_accelerate_state()
    model, tokenizer = load_model(folder)
    data_args = run_data_args(folder)
    data_args.interactions = None  # the catalogue alone, as recommend.py read it with --items
    items, _, _ = load_catalogue(data_args, tokenizer, model.config)
    recommender = Recommender(model, tokenizer, items, vector_cache=None)
    results = recommender.recommend([u["history"] for u in users], top_k=6, exclude_history=True, explain=2)
    for entries, ids, scores, because in zip(results, reference.item_ids, reference.scores, reference.because):
        assert_same_ranking_up_to_ties([e["item_id"] for e in entries], [e["score"] for e in entries], ids, scores)
        for entry, item, reasons in zip(entries, ids, because):
            if entry["item_id"] == item:
                assert [r["item_id"] for r in entry["because"]] == [r["item_id"] for r in reasons]
                np.testing.assert_allclose(
                    [r["drop"] for r in entry["because"]], [r["drop"] for r in reasons], atol=1e-4
                )
    # MMR with lambda 1 is the plain top-K; lambda .2 spreads the list over other items
    _recommend(*flags, "--diversify", "mmr", "--diversity_lambda", "1", "--output", str(tmp_path / "mmr1.jsonl"))
    _recommend(*flags, "--output", str(tmp_path / "plain.jsonl"))
    plain, mmr1 = _read(tmp_path / "plain.jsonl"), _read(tmp_path / "mmr1.jsonl")
    assert plain.item_ids.tolist() == mmr1.item_ids.tolist()
    _recommend(*flags, "--diversify", "dpp", "--diversity_lambda", "0.2", "--output", str(tmp_path / "dpp.jsonl"))
    assert _read(tmp_path / "dpp.jsonl").item_ids.tolist() != plain.item_ids.tolist()


def test_a_users_file_is_streamed_in_batches(trained, generic_files, tmp_path):
    """Users are read and written a batch at a time (a Parquet row group per batch); the lists don't depend on the
    batch size; a bad line is skipped and counted; a non-UTF-8 line is an error naming its line, and nothing is
    written."""
    import pyarrow.parquet as pq

    folder, data_flags = trained
    ratings = pd.read_csv(generic_files[1], dtype=str)
    lines = [
        json.dumps({"user_id": str(u), "history": ratings[ratings.user_id == str(u)].item_id.tolist()[:5]})
        for u in range(1, 11)
    ]
    lines.insert(4, '{"history": ["1"]}')  # no user_id
    (tmp_path / "users.jsonl").write_text("\n".join(lines) + "\n")
    flags = ["--model", str(folder), "--items", data_flags[1], "--text_template", "{title}. {genres}",
             "--users", str(tmp_path / "users.jsonl"), "--top_k", "5"]  # fmt: skip
    small = _recommend(*flags, "--batch_size", "3", "--output", str(tmp_path / "small.parquet"))
    _recommend(*flags, "--output", str(tmp_path / "one.parquet"))
    assert small["users"] == 10 and pq.ParquetFile(tmp_path / "small.parquet").num_row_groups == 4
    a, b = _read(tmp_path / "small.parquet"), _read(tmp_path / "one.parquet")
    assert a.user_id.tolist() == b.user_id.tolist() == [str(u) for u in range(1, 11)]
    for ids_a, scores_a, ids_b, scores_b in zip(a.item_ids, a.scores, b.item_ids, b.scores):
        assert_same_ranking_up_to_ties(ids_a, scores_a, ids_b, scores_b)
    (tmp_path / "bad.jsonl").write_bytes(("\n".join(lines[:3]) + "\n").encode() + b'{"user_id": "\xff"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl, line 4: not UTF-8"):
        _recommend(*flags[:-4], "--users", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "bad.parquet"))
    assert not (tmp_path / "bad.parquet").exists()


@pytest.mark.latest
def test_a_faiss_index_gives_the_exact_lists_where_it_is_exhaustive(trained, tmp_path):
    folder, data_flags = trained
    flags = ["--model", str(folder), *data_flags, "--split", "test", "--top_k", "10", "--exclude_history",
             "--vector_cache", str(tmp_path / "cache")]  # fmt: skip
    exact = _recommend(*flags, "--output", str(tmp_path / "exact.parquet"))
    assert exact["index"] == "exact"  # 'auto' on a small catalogue
    for run in ("built", "cached"):
        summary = _recommend(
            *flags, "--index", "faiss", "--index_factory", "Flat", "--output", str(tmp_path / f"{run}.parquet")
        )
        assert summary["index"] == "Flat" and len(list((tmp_path / "cache").glob("*.faiss"))) == 1
        a, b = _read(tmp_path / "exact.parquet"), _read(tmp_path / f"{run}.parquet")
        for ids_a, scores_a, ids_b, scores_b in zip(a.item_ids, a.scores, b.item_ids, b.scores):
            assert_same_ranking_up_to_ties(ids_a, scores_a, ids_b, scores_b)
        assert _metrics_from_file(a, 10) == pytest.approx(_metrics_from_file(b, 10), abs=1e-3)
    # an IVF searched in every list is exhaustive too
    _recommend(*flags, "--index", "faiss", "--index_factory", "IVF4,Flat", "--nprobe", "4",
               "--output", str(tmp_path / "ivf.parquet"))  # fmt: skip
    ivf = _read(tmp_path / "ivf.parquet")
    assert _metrics_from_file(ivf, 10) == pytest.approx(
        _metrics_from_file(_read(tmp_path / "exact.parquet"), 10), abs=1e-3
    )


def test_second_run_hits_the_vector_cache(trained, tmp_path, monkeypatch):
    folder, data_flags = trained
    flags = ["--model", str(folder), *data_flags, "--vector_cache", str(tmp_path / "cache")]
    first = _recommend(*flags, "--output", str(tmp_path / "a.jsonl"))
    assert first["vector_cache"] == "written" and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1

    def no_encoding(*args, **kwargs):
        raise AssertionError("the catalogue was encoded again")

    monkeypatch.setattr(Catalogue, "encode", no_encoding)
    second = _recommend(*flags, "--output", str(tmp_path / "b.jsonl"))
    assert second["vector_cache"] == "hit"
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_chunked_ranking_equals_full_ranking(tiny):
    generator = torch.Generator().manual_seed(0)
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, score_temperature=0.1)).eval()
    dim = model.config.encoder["hidden_size"]
    users = torch.nn.functional.normalize(torch.randn(9, dim, generator=generator), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(53, dim, generator=generator), dim=-1)
    exclude = torch.randint(0, 53, (9, 6), generator=generator)
    exclude[0] = -1  # a user with nothing to exclude
    history = torch.randint(-1, 53, (9, 5), generator=generator)  # the repeat term's items, -1 = padding
    history[1, :2] = 17  # an item twice in a history gets the bias once
    history[history == 5] = 6  # item 5 gets a copy below, which must tie with it
    with torch.no_grad():
        model.repeat_bias.fill_(-0.3)
    logits = users @ items.T / 0.1
    rows = torch.arange(9)[:, None].expand_as(history)
    logits[rows[history >= 0], history[history >= 0]] -= 3.0  # -0.3 / temperature
    rows = torch.arange(9)[:, None].expand_as(exclude)
    logits[rows[exclude >= 0], exclude[exclude >= 0]] = -torch.inf  # (users, items)
    score = partial(model.score, history_ids=history)

    expected_logits, expected_index = logits.topk(10, dim=1)
    for chunk in (1, 7, 10, 53, 1000):
        got_logits, got_index, log_normalizer = top_k(users, items, 10, score, exclude, item_chunk_size=chunk)
        torch.testing.assert_close(got_logits, expected_logits)
        assert torch.equal(got_index, expected_index)
        torch.testing.assert_close(log_normalizer, logits.logsumexp(dim=1))
    # ties: an item with a copy is placed after the copy when ties go against it, with its own score
    copies = torch.cat([items, items[[5]]])  # item 53 = item 5
    for target in (5, 53):
        got_logits, got_index, _ = top_k(users, copies, 54, score, None, 7, torch.full((9,), target))
        position = (got_index == target).nonzero()[:, 1]
        assert (got_index.gather(1, position[:, None] - 1).squeeze(1) == 58 - target).all()
        expected = score(users, items[5:6], first_item=5)[:, 0]
        torch.testing.assert_close(got_logits.gather(1, position[:, None]).squeeze(1), expected)
    everything, _, _ = top_k(users, items, 100, score, exclude, item_chunk_size=7)
    assert everything.shape == (9, 53) and torch.isinf(everything[1:, -1]).all()  # excluded items come last
    assert torch.isfinite(everything[0]).all()


def test_recommend_in_chunks_equals_one_pass(trained, tmp_path):
    folder, data_flags = trained
    _recommend("--model", str(folder), *data_flags, "--top_k", "30", "--batch_size", "7", "--item_chunk_size", "11",
               "--exclude_history", "--output", str(tmp_path / "chunked.parquet"))  # fmt: skip
    _recommend("--model", str(folder), *data_flags, "--top_k", "30", "--exclude_history",
               "--output", str(tmp_path / "whole.parquet"))  # fmt: skip
    chunked, whole = _read(tmp_path / "chunked.parquet"), _read(tmp_path / "whole.parquet")
    assert chunked.user_id.tolist() == whole.user_id.tolist()
    for a, b in zip(chunked.itertuples(), whole.itertuples()):  # equal up to near-ties (matrix shapes differ)
        assert_same_ranking_up_to_ties(a.item_ids, a.scores, b.item_ids, b.scores)
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-4, atol=1e-7)


@pytest.mark.latest
def test_cold_start_users_and_items(trained, generic_files, tmp_path):
    folder, _ = trained
    items, log = generic_files
    catalogue = pd.read_csv(items, dtype=str)
    new_item = {"item_id": "new-1", "title": "Zyzzyx Road Quantum Teapot Saga (2031)", "genres": "Documentary"}
    catalogue = pd.concat([catalogue, pd.DataFrame([new_item])], ignore_index=True)  # unseen at training
    catalogue.to_csv(tmp_path / "items.csv", index=False)
    ratings = pd.read_csv(log, dtype=str)
    known = ratings[ratings.user_id == "1"].sort_values("timestamp").item_id.tolist()[-5:]
    titles = catalogue.set_index("item_id")
    texts = [f"{titles.title[i]}. {titles.genres[i]}" for i in known]  # the catalogue's texts of those items
    users = [
        {"user_id": "by-ids", "history": known},
        {"user_id": "by-texts", "history": texts},
        {"user_id": "new-text", "history": ["A documentary about teapots"]},
        {"user_id": "nobody", "history": []},
        {"user_id": 7, "history": ["new-1"]},
    ]
    (tmp_path / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users) + "not json\n")
    flags = ["--model", str(folder), "--items", str(tmp_path / "items.csv"), "--text_template", "{title}. {genres}",
             "--users", str(tmp_path / "users.jsonl"), "--top_k", str(len(catalogue))]  # fmt: skip
    summary = _recommend(*flags, "--output", str(tmp_path / "all.jsonl"))
    assert summary["users"] == 5 and summary["items"] == len(catalogue) and summary["new_texts"] == 1
    frame = _read(tmp_path / "all.jsonl").set_index("user_id")
    assert set(frame.index) == {"by-ids", "by-texts", "new-text", "nobody", "7"}
    assert frame.item_ids["by-texts"] == frame.item_ids["by-ids"]  # an item's text is that item
    assert all(len(frame.item_ids[user]) == len(catalogue) for user in frame.index)  # the new item included
    # a new user (a free text never seen) and a new item (in --items only), scored as the model scores them
    model, tokenizer = load_model(str(folder))

    def encode(texts):
        tokens = tokenizer(texts, truncation=True, max_length=model.config.max_item_tokens, return_tensors="pt")
        return model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])  # (1, dim)

    with torch.no_grad():
        user = model.encode_users(encode(["A documentary about teapots"])[None], torch.ones(1, 1, dtype=torch.bool))
        expected = model.score(user, encode([f"{new_item['title']}. {new_item['genres']}"])).item()
    position = frame.item_ids["new-text"].index("new-1")
    assert frame.scores["new-text"][position] == pytest.approx(expected, abs=1e-4)
    # --exclude_history drops what the user has, and only that
    _recommend(*flags, "--exclude_history", "--output", str(tmp_path / "excluded.jsonl"))
    without = _read(tmp_path / "excluded.jsonl").set_index("user_id")
    assert not set(known) & set(without.item_ids["by-ids"]) and len(without.item_ids["by-ids"]) == len(catalogue) - 5
    assert without.item_ids["by-texts"] == without.item_ids["by-ids"]
    assert "new-1" not in without.item_ids["7"] and len(without.item_ids["nobody"]) == len(catalogue)


def test_cold_start_with_the_text_user_tower(generic_files, tiny, tmp_path):
    """The 'text' tower reads the history's tokens: new texts join the catalogue's tokens for it."""
    extra = ("--max_steps", "2", "--user_tower", "text", "--max_user_tokens", "64", "--finetune_layers", "1")
    train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path / "model", *extra)))
    items, _ = generic_files
    users = [{"user_id": "ids", "history": ["1", "3"]}, {"user_id": "texts", "history": ["A new film about teapots"]}]
    (tmp_path / "users.jsonl").write_text("".join(json.dumps(u) + "\n" for u in users))
    summary = _recommend("--model", str(tmp_path / "model"), "--items", str(items), "--text_template",
                         "{title}. {genres}", "--users", str(tmp_path / "users.jsonl"), "--top_k", "5",
                         "--output", str(tmp_path / "recs.jsonl"))  # fmt: skip
    assert summary["users"] == 2 and summary["new_texts"] == 1
    frame = _read(tmp_path / "recs.jsonl").set_index("user_id")
    assert all(len(frame.item_ids[user]) == 5 for user in ("ids", "texts"))
    assert frame.item_ids["ids"] != frame.item_ids["texts"]


def test_read_users_counts_bad_lines_and_rejects_a_bad_file(tmp_path):
    path = tmp_path / "users.jsonl"
    path.write_text('{"user_id": "a", "history": ["1", "x"]}\n{"history": []}\n{"user_id": "b", "history": 5}\n[1]\n')
    skipped: dict[str, int] = {}
    rows, new_texts = read_users(path, {"1": 0}, skipped)
    assert rows == [{"user_id": "a", "history": [0, 1]}] and new_texts == ["x"]
    assert skipped == {"users.jsonl: missing user_id": 1, "users.jsonl: history not a list": 1,
                       "users.jsonl: malformed lines (not a JSON object)": 1}  # fmt: skip
    path.write_text("user_id,history\n")
    with pytest.raises(InputError, match=r"users.jsonl, line 1: not JSON"):
        read_users(path, {"1": 0}, {})


def test_a_model_folder_without_weights_is_a_clear_error(trained, tmp_path):
    folder, _ = trained
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(InputError, match="model.safetensors"):
        load_model(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_pseudonymous_user_ids(trained, tmp_path, monkeypatch):
    folder, data_flags = trained
    flags = ["--model", str(folder), *data_flags, "--top_k", "3", "--pseudonymize_user_ids"]
    with pytest.raises(InputError, match="RECSYS_BERT_USER_ID_SALT"):
        _recommend(*flags, "--output", str(tmp_path / "a.jsonl"))
    monkeypatch.setenv("RECSYS_BERT_USER_ID_SALT", "s3cret")
    _recommend(*flags, "--output", str(tmp_path / "a.jsonl"))
    ids = _read(tmp_path / "a.jsonl").user_id.tolist()
    assert len(set(ids)) == 40 and all(len(i) == 32 and not i.isdigit() for i in ids)


def test_two_processes_write_what_one_process_writes(trained, tmp_path):
    folder, data_flags = trained
    argv = ["recommend.py", "--model", str(folder), *data_flags, "--top_k", "10", "--batch_size", "6",
            "--vector_cache", "none"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *argv, "--output",
         str(tmp_path / "two.jsonl")], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert '"processes": 2' in two.stderr
    _recommend(*argv[1:], "--output", str(tmp_path / "one.jsonl"))
    one, two = _read(tmp_path / "one.jsonl"), _read(tmp_path / "two.jsonl")
    assert one.user_id.tolist() == two.user_id.tolist() and len(one) == 40
    for a, b in zip(one.itertuples(), two.itertuples()):  # the processes' user batches differ from one process's
        assert_same_ranking_up_to_ties(a.item_ids, a.scores, b.item_ids, b.scores)
    assert not list(tmp_path.glob(".*"))  # the parts were merged and removed


def test_mind_prediction_file_reproduces_the_impression_metrics(shared_data, tiny, tmp_path):
    data_flags = ["--data_format", "mind", "--data_dir", str(shared_data / "mind-sample")]
    train(*parse_args([*data_flags, "--encoder_name_or_path", tiny, "--output_dir", str(tmp_path / "m"),
                       "--max_steps", "3", "--per_device_train_batch_size", "16", "--max_item_tokens", "24",
                       "--metric_for_best_model", "auc", "--run_baselines", "false"]))  # fmt: skip
    _recommend("--model", str(tmp_path / "m"), *data_flags, "--output", str(tmp_path / "prediction.txt"))
    reset_accelerate_state()
    data_args, _ = parse_recommend_args([*data_flags, "--model", "x"])
    from recsys_bert.data import load_data

    test = load_data(data_args, max_history=50).test
    lines = (tmp_path / "prediction.txt").read_text().splitlines()
    assert len(lines) == len(test)
    labels, scores = [], []
    for line, row in zip(lines, test):
        impression_id, ranks = line.split(" ", 1)
        assert impression_id == str(row["impression_id"])
        ranks = np.array(json.loads(ranks))
        assert sorted(ranks) == list(range(1, len(row["labels"]) + 1))
        labels.append(np.array(row["labels"]))
        scores.append(-ranks.astype(float))  # MIND's scorer reads ranks: the best has rank 1
    written = json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]
    from_file = impression_metrics(labels, scores)
    for name in ("auc", "mrr", "ndcg@5", "ndcg@10"):
        assert from_file[name] == pytest.approx(written[name], abs=1e-4)


def test_int8_ranks_like_fp32_from_its_own_vector_cache(trained, tmp_path):
    """`--int8` (CPU): the quantized model's lists stay close to fp32's, its vectors cached under their own key."""
    folder, data_flags = trained
    flags = ["--model", str(folder), *data_flags, "--top_k", "10", "--vector_cache", str(tmp_path / "cache")]
    _recommend(*flags, "--output", str(tmp_path / "fp32.parquet"))
    first = _recommend(*flags, "--int8", "--output", str(tmp_path / "int8.parquet"))
    assert first["vector_cache"] == "written" and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert _recommend(*flags, "--int8", "--output", str(tmp_path / "again.parquet"))["vector_cache"] == "hit"
    fp32, int8 = _read(tmp_path / "fp32.parquet"), _read(tmp_path / "int8.parquet")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fp32.item_ids, int8.item_ids)])
    assert overlap > 0.8  # 0.93 measured
    assert _read(tmp_path / "again.parquet").equals(int8)
