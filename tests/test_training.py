"""End-to-end training on real files with a tiny random BERT: learning, resume, save/load, MIND, the text tower."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from recsys_bert.arguments import parse_args
from recsys_bert.metrics import ranking_metrics
from recsys_bert.recommender import run_data_args
from recsys_bert.trainer import TEXT_SKIP_WEIGHTS, ZERO_SHOT_DECAYS, train
from tests.conftest import REPO_ROOT, flat, reset_accelerate_state, tiny_train_args

ML = REPO_ROOT / "data" / "ml-latest-small"


@pytest.fixture(autouse=True)
def _fresh_state(fresh_accelerate_state):
    """Each run in this process starts its own Accelerator."""


def _train(argv):
    return train(*parse_args(argv))


@pytest.fixture(scope="module")
def popular_movies_files(tmp_path_factory) -> tuple[Path, Path]:
    """All MovieLens users' ratings of the 2,000 most rated movies, as a user's own two files."""
    folder = tmp_path_factory.mktemp("popular")
    ratings = pd.read_csv(ML / "ratings.csv")
    ratings = ratings[ratings.movieId.isin(ratings.movieId.value_counts().index[:2000])]
    movies = pd.read_csv(ML / "movies.csv")
    movies = movies[movies.movieId.isin(ratings.movieId)]
    movies.rename(columns={"movieId": "item_id"}).to_csv(folder / "items.csv", index=False)
    ratings.rename(columns={"userId": "user_id", "movieId": "item_id"}).to_csv(folder / "log.csv", index=False)
    return folder / "items.csv", folder / "log.csv"


@pytest.mark.latest
def test_training_beats_the_untrained_model_and_popularity(popular_movies_files, tmp_path):
    """The real MiniLM, frozen: 200 steps must clearly beat the same model untrained, and popularity."""
    items, log = popular_movies_files
    argv = [
        "--items", str(items), "--interactions", str(log), "--text_template", "{title}. {genres}",
        "--finetune_layers", "0", "--projection_dim", "64", "--max_history", "20", "--max_item_tokens", "24",
        "--exclude_history", "--per_device_train_batch_size", "128", "--num_negatives", "128", "--max_steps", "200",
        "--seed", "1", "--text_skip_weight", "0",  # the training alone (the skip adds the untrained encoder's score)
    ]  # fmt: skip
    untrained = _train(
        [*argv, "--output_dir", str(tmp_path / "a"), "--learning_rate", "0", "--run_baselines", "false"]
    )
    trained = _train([*argv, "--output_dir", str(tmp_path / "b"), "--learning_rate", "3e-3"])
    for name in ("history_excluded", "history_kept"):  # chosen on the first; the second reported too
        assert trained["test"][name]["ndcg@10"] > 2 * untrained["test"][name]["ndcg@10"]
        assert trained["test"][name]["mrr"] > 2 * untrained["test"][name]["mrr"]
    excluded = trained["test"]["history_excluded"]
    assert excluded["ndcg@10"] > trained["baselines"]["popularity"]["history_excluded"]["ndcg@10"]
    # the model's lead over the baselines, with its paired interval over the same users
    lead = trained["comparisons"]["popularity"]["history_excluded"]
    assert lead["metric"] == "ndcg@10" and lead["low"] <= lead["difference"] <= lead["high"]
    assert lead["difference"] == pytest.approx(excluded["ndcg@10"] - trained["baselines"]["popularity"][
        "history_excluded"]["ndcg@10"], abs=1e-9)  # fmt: skip
    written = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert set(written) >= {"valid", "test", "baselines", "protocol", "run"}
    assert set(written["baselines"]) == {"popularity", "zero_shot"}
    assert written["baselines"]["zero_shot"]["decay"] in ZERO_SHOT_DECAYS  # chosen on valid
    assert {"ndcg@10", "recall@10", "mrr", "precision@5", "mrr@10"} <= set(written["test"]["history_kept"])
    # every test user's target rank, the model's and the baselines', reproduce the written metrics
    ranks = json.loads((tmp_path / "b" / "test_ranks.json").read_text())
    assert len(ranks["user_id"]) == len(set(ranks["user_id"])) == 610
    for name in ("history_excluded", "history_kept"):
        assert ranking_metrics(ranks[name], [10])["ndcg@10"] == pytest.approx(written["test"][name]["ndcg@10"])
        for baseline in ("popularity", "zero_shot"):
            assert ranking_metrics(ranks["baselines"][baseline][name], [10])["ndcg@10"] == pytest.approx(
                written["baselines"][baseline][name]["ndcg@10"]
            )
    assert written["protocol"]["history_excluded"] is True and written["test"]["history_excluded"]["users"] == 610
    assert (tmp_path / "b" / "model.safetensors").exists() and (tmp_path / "b" / "config.yaml").exists()
    assert list((tmp_path / "b" / "logs").rglob("events.out.tfevents*"))


@pytest.mark.latest
def test_resumed_run_equals_uninterrupted_run(generic_files, tiny, tmp_path):
    extra = (
        "--max_steps",
        "9",
        "--save_steps",
        "3",
        "--eval_steps",
        "3",
        "--dropout",
        "0.2",
        "--save_total_limit",
        "5",
    )
    full = _train(tiny_train_args(generic_files, tiny, tmp_path / "full", *extra))
    # the interrupted run: killed after its step-6 checkpoint, with a half-written one beside it
    shutil.copytree(tmp_path / "full" / "checkpoint-6", tmp_path / "resumed" / "checkpoint-6")
    (tmp_path / "resumed" / "checkpoint-7").mkdir()
    resume = ("--resume_from_checkpoint", "latest")
    resumed = _train(tiny_train_args(generic_files, tiny, tmp_path / "resumed", *extra, *resume))
    assert flat(resumed["test"]) == pytest.approx(flat(full["test"]), abs=1e-6)
    assert flat(resumed["valid"]) == pytest.approx(flat(full["valid"]), abs=1e-6)
    for name in ("checkpoint-9/model.safetensors", "model.safetensors"):  # the last training state and the best model
        weights_full = load_file(tmp_path / "full" / name)
        weights_resumed = load_file(tmp_path / "resumed" / name)
        for key, tensor in weights_full.items():
            assert torch.allclose(tensor, weights_resumed[key], atol=1e-6), (name, key)


def test_gradient_accumulation_of_3_sees_every_batch_of_every_epoch_and_resumes_exactly(
    generic_files, tiny, tmp_path, monkeypatch
):
    """Accelerate also steps on an epoch's last, partial window: 173 batches of 32 with 3 micro-batches a step make
    58 steps an epoch, not 57. Every micro-batch of each epoch is trained on once, in the loader's order, and a run
    resumed in its second epoch skips exactly what it had seen."""
    from recsys_bert.trainer import Trainer

    extra = ("--gradient_accumulation_steps", "3", "--max_steps", "65", "--save_steps", "30", "--eval_steps", "0",
             "--save_total_limit", "5", "--dropout", "0.2")  # fmt: skip
    seen, original = [], Trainer._micro_step

    def micro_step(self, batch, *position):
        seen.append(batch["positive_ids"].clone())
        original(self, batch, *position)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_micro_step", micro_step)
        trainer = Trainer(*parse_args(tiny_train_args(generic_files, tiny, tmp_path / "full", *extra)))
        full = trainer.train()
    assert len(trainer.train_loader) == 173 and trainer.steps_per_epoch == 58
    expected = []
    for epoch in (0, 1):  # the loader's own batches, epoch by epoch: 173, then 7 steps of 3
        trainer.train_loader.set_epoch(epoch)
        expected += [batch["positive_ids"] for batch in trainer.train_loader][: 173 if epoch == 0 else 21]
    assert len(seen) == len(expected) == 194
    assert all(torch.equal(got, want) for got, want in zip(seen, expected))

    shutil.copytree(tmp_path / "full" / "checkpoint-60", tmp_path / "resumed" / "checkpoint-60")
    reset_accelerate_state()
    resumed = _train(tiny_train_args(generic_files, tiny, tmp_path / "resumed", *extra, "--resume_from_checkpoint",
                                     "latest"))  # fmt: skip
    assert flat(resumed["test"]) == pytest.approx(flat(full["test"]), abs=1e-6)
    weights_full, weights_resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("full", "resumed"))
    for key, tensor in weights_full.items():
        assert torch.allclose(tensor, weights_resumed[key], atol=1e-6), key


@pytest.mark.latest
@pytest.mark.parametrize("text_skip", ["0", "0.5", "-1"])
def test_saved_model_reloads_to_the_scores_it_was_tested_with(generic_files, tiny, tmp_path, text_skip):
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from recsys_bert.catalogue import Catalogue
    from recsys_bert.collators import EvalCollator
    from recsys_bert.data import load_data, tokenize_items
    from recsys_bert.evaluation import eval_loader, evaluate, model_scorer
    from recsys_bert.modeling import RecsysBertModel

    extra = ("--max_steps", "3", "--finetune_layers", "1", "--projection_dim", "16", "--text_skip_weight", text_skip)
    argv = tiny_train_args(generic_files, tiny, tmp_path, *extra)
    written = _train(argv)
    model = RecsysBertModel.from_pretrained(tmp_path).eval()
    assert model.config.finetune_layers == 1 and model.config.projection_dim == 16
    # the head trained alone; then the skip was added at the asked weight, or (-1) the one chosen on valid
    weight = model.config.text_skip_weight
    assert weight == (
        float(text_skip)
        if text_skip != "-1"
        else max(written["text_skip"]["valid_by_weight"], key=written["text_skip"]["valid_by_weight"].get)
    )
    assert written["text_skip"]["weight"] == weight and (text_skip != "-1" or weight in TEXT_SKIP_WEIGHTS)
    if weight:  # its decay, left unset, is the one the zero-shot mean chose on valid (not run as a baseline)
        assert model.config.text_skip_decay in ZERO_SHOT_DECAYS and not written.get("baselines")
        assert (
            not (tmp_path / "item_encoder").exists()
            and "not a sentence-transformers pipeline" in (tmp_path / "README.md").read_text()
        )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    _, data_args, args = parse_args(argv)
    data = load_data(data_args, max_history=model.config.max_history)
    input_ids = tokenize_items(data.items, tokenizer, model.config.max_item_tokens)["input_ids"]
    catalogue = Catalogue(input_ids, tokenizer.pad_token_id)
    accelerator = Accelerator(cpu=True)
    catalogue.compute_frozen_states(model, accelerator)
    vectors = catalogue.item_vectors(model, accelerator)
    # the batch size of training's evaluation: the same matrix shapes give the same floats, ties and all
    loader = eval_loader(
        data.test, EvalCollator(model.config.max_history), args.per_device_eval_batch_size, accelerator
    )
    metrics = evaluate(model_scorer(model, vectors, accelerator), loader, accelerator, args.eval_ks)
    # the written metrics also hold beyond_accuracy (trainer passes the item statistics); the accuracy must agree
    accuracy = {name: {k: v for k, v in m.items() if k != "beyond_accuracy"} for name, m in written["test"].items()}
    assert flat(metrics) == pytest.approx(flat(accuracy), abs=1e-6)


def test_impressions_train_and_evaluate_on_mind(shared_data, tiny, tmp_path):
    argv = [
        "--data_format", "mind", "--data_dir", str(shared_data / "mind-sample"), "--encoder_name_or_path", tiny,
        "--output_dir", str(tmp_path), "--max_steps", "4", "--per_device_train_batch_size", "16", "--npratio", "3",
        "--max_item_tokens", "24", "--metric_for_best_model", "auc",
    ]  # fmt: skip
    metrics = _train(argv)
    assert {"auc", "mrr", "ndcg@5", "ndcg@10"} <= set(metrics["test"])
    assert metrics["protocol"]["ranking"] == "impressions"
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and metrics["test"]["impressions"] > 0


def test_text_user_tower_trains_in_bf16_with_gradient_accumulation(generic_files, tiny, tmp_path):
    argv = tiny_train_args(
        generic_files, tiny, tmp_path, "--max_steps", "3", "--user_tower", "text", "--max_user_tokens", "64",
        "--finetune_layers", "1", "--mixed_precision", "bf16", "--gradient_accumulation_steps", "2",
        "--logging_steps", "1",
    )  # fmt: skip
    metrics = _train(argv)
    assert metrics["test"]["history_kept"]["users"] == 40 and metrics["test"]["history_kept"]["mrr"] > 0
    assert metrics["protocol"]["steps"] == 3 and metrics["run"]["effective_batch_size"] == 64
    assert metrics["run"]["mixed_precision"] == "bf16"


def test_time_budget_stops_training_then_validates_tests_and_saves(generic_files, tiny, tmp_path):
    argv = tiny_train_args(generic_files, tiny, tmp_path, "--max_steps", "1000", "--max_train_minutes", "1e-9")
    metrics = _train(argv)
    assert metrics["protocol"]["steps"] == 1 and metrics["protocol"]["best_step"] == 1
    assert [h["step"] for h in metrics["history"]] == [1] and metrics["history"][0]["seconds"] >= 0
    assert metrics["test"]["history_kept"]["users"] == 40 and metrics["run"]["max_steps"] == 1000
    assert metrics["run"]["mixed_precision"] == "no"  # no flag, no accelerate launch setting: full precision
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "metrics.json").is_file()


def test_without_a_text_template_the_item_files_columns_are_the_text_and_config_yaml_says_which(
    generic_files, tiny, tmp_path
):
    argv = tiny_train_args(generic_files, tiny, tmp_path, "--max_steps", "1")
    at = argv.index("--text_template")
    _train(argv[:at] + argv[at + 2 :])
    settings = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert settings["text_template"] == "{title}. {genres}"  # items.csv: item_id, title, genres
    assert run_data_args(tmp_path).text_template == "{title}. {genres}"  # what recommend.py reads the items with


def test_unreadable_interactions_stop_before_training_with_one_line(generic_files, tmp_path):
    items, _ = generic_files
    log = tmp_path / "log.csv"
    log.write_text("user,item_id,timestamp\n1,1,5\n")
    result = subprocess.run(
        [sys.executable, "train.py", "--items", str(items), "--interactions", str(log), "--text_template", "{title}",
         "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(log) in lines[0] and "user_id" in lines[0], result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_bad_config_stops_with_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("max_steps: 3\nlearning_rte: 0.1\n")
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(config)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        == f"error: {config}, line 2, field 'learning_rte': unknown setting (see --help for the settings)"
    )


@pytest.mark.parametrize("repeaters", [False, True])
def test_the_repeat_bias_learns_whether_users_pick_an_item_again(generic_files, tiny, tmp_path, repeaters):
    """MovieLens users never rate a movie twice: the bias of history items turns negative. Users who alternate
    between two items pick from their history every time: it turns positive."""
    items, log = generic_files
    if repeaters:
        ratings = pd.read_csv(log)
        rng = np.random.default_rng(0)
        rows = []
        for user in range(1, 41):
            pair = rng.choice(ratings.item_id.unique(), 2, replace=False)
            rows += [(user, pair[t % 2], 4.0, 1_000_000 + t) for t in range(12)]
        log = tmp_path / "log.csv"
        pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).to_csv(log, index=False)
    run = tmp_path / "run"
    flags = ("--max_steps", "30", "--learning_rate", "5e-3", "--exclude_history", "false")
    _train(tiny_train_args((items, log), tiny, run, *flags))
    bias = load_file(run / "model.safetensors")["repeat_bias"].item()  # in cosine units, from 0
    assert bias > 0.03 if repeaters else bias < -0.03


def test_cold_items_are_held_out_of_training_and_reported_apart(generic_files, tiny, tmp_path):
    """`--cold_item_fraction`: the same items held out for every seed, in no training row (target or history; never
    negatives either: test_losses), and test reported again on the users whose target is one of them."""
    from recsys_bert.data import load_data

    argv = tiny_train_args(generic_files, tiny, tmp_path, "--max_steps", "3", "--cold_item_fraction", "0.2",
                           "--run_baselines", "true")  # fmt: skip
    model_args, data_args, _ = parse_args(argv)
    data = load_data(data_args, model_args.max_history, seed=1)
    again = load_data(data_args, model_args.max_history, seed=2)
    assert np.array_equal(data.held_out_items, again.held_out_items)
    assert len(data.held_out_items) == round(0.2 * len(data.items))
    trained_on = set(data.train["target"]) | {i for h in data.train["history"] for i in h}
    assert not trained_on & set(data.held_out_items.tolist())
    assert (data.train_item_counts[data.held_out_items] == 0).all()
    cold_users = int(np.isin(data.test["target"], data.held_out_items).sum())
    assert cold_users > 0
    written = _train(argv)
    cold = written["test_cold_items"]
    assert cold["items"] == len(data.held_out_items) and cold["users"] == cold_users
    ranks = json.loads((tmp_path / "test_ranks.json").read_text())
    is_cold = np.isin(np.asarray(data.test["target"]), data.held_out_items)
    for name in ("history_kept", "history_excluded"):
        expected = ranking_metrics(np.asarray(ranks[name])[is_cold], [10])["ndcg@10"]
        assert cold[name]["ndcg@10"] == pytest.approx(expected)
        assert set(cold["baselines"]) == {"popularity", "zero_shot"}
