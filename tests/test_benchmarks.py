"""The benchmark scripts run end to end at their smallest settings and end with their JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT


def _last_json_line(script: str, *flags: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *flags],
        cwd=REPO_ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_train_throughput_runs():
    figures = _last_json_line(
        "train_throughput.py", "--batch_size", "8", "--num_negatives", "8", "--naive_batch_size", "4",
        "--steps", "1", "--repeats", "1", "--cache_scope", "batches",
    )  # fmt: skip
    assert figures["speedup_vs_naive"] > 0
    assert figures["samples_per_s"]["project"] > 0 and figures["samples_per_s"]["naive"] > 0
    assert figures["config"]["finetune_layers"] == 0 and figures["config"]["projection_dim"] == 128


@pytest.mark.slow
def test_encode_throughput_runs():
    figures = _last_json_line(
        "encode_throughput.py", "--items", "16", "--batch_size", "8", "--repeats", "1", "--skip_ndcg"
    )
    assert figures["ratio_vs_sentence_transformers"] > 0
    assert figures["max_abs_diff_vs_sentence_transformers"] < 1e-4  # the same vectors
    assert figures["items_per_s"]["int8"] > 0 and "skipped" in figures["ndcg"]


def test_rank_throughput_runs():
    figures = _last_json_line(
        "rank_throughput.py", "--sizes", "1000", "3000", "--users", "16", "--k", "10", "--user_batch_size", "8",
        "--item_chunk_size", "700", "--repeats", "1", "--naive_max_gib", "0.0001",
    )  # fmt: skip
    assert set(figures["users_per_s"]) == {"1000", "3000"} and min(figures["users_per_s"].values()) > 0
    sizes = {row["items"]: row for row in figures["sizes"]}
    assert sizes[1000]["top_k_naive_agree"] is True and sizes[3000]["naive"].startswith("skipped")


@pytest.mark.slow
def test_gpu_throughput_runs_on_a_cpu_too():
    """Its --quick mode on MovieLens: the ceiling loop, train.py's step and the two encoders, all finite."""
    figures = _last_json_line("gpu_throughput.py", "--quick", "--config", "configs/movielens.yaml")
    assert figures["ceiling"]["train_sequences_per_s"] > 0 and figures["train"]["encoder_sequences_per_s"] > 0
    assert figures["ratio_vs_sentence_transformers"] > 0
    assert figures["encode"]["cosine_vs_sentence_transformers_min"] > 0.999  # the same vectors


def test_sasrec_gets_exactly_our_split(tmp_path):
    """The RecBole input `benchmarks/sasrec.py` writes for generic data: every user's time-ordered sequence, whose
    leave-one-out by time (RecBole's `LS: valid_and_test`, `order: TO`) gives back our valid and test targets, and
    whose training prefixes are as many as our training rows (RecBole itself is not needed for this check)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import pandas as pd
    import sasrec

    from recsys_bert.arguments import parse_args
    from recsys_bert.data import load_data

    mode, test_users, num_items, train_rows, held_out = sasrec.write_recbole_data("movielens", tmp_path)
    assert held_out == []
    assert mode == "inter"
    log = pd.read_csv(tmp_path / "movielens.inter", sep="\t")
    assert list(log.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    log = log.sort_values(["user_id:token", "timestamp:float"], kind="stable")
    sequences = log.groupby("user_id:token", sort=False)["item_id:token"].agg(list)
    model_args, data_args, _ = parse_args(["--config", "configs/movielens.yaml"])
    data = load_data(data_args, model_args.max_history)
    valid = dict(zip(data.valid["user_id"], data.valid["target"]))
    test = dict(zip(data.test["user_id"], data.test["target"]))
    assert len(sequences) == len(test) == len(test_users) == 610 and num_items == len(data.items)
    for user, sequence in sequences.items():
        assert sequence[-1] == test[str(user)] and sequence[-2] == valid[str(user)]
    # RecBole trains on targets 2 .. n-2 of each sequence of n, as we do
    assert sum(len(s) - 3 for s in sequences) == train_rows == len(data.train)


@pytest.mark.slow
def test_quality_quick_runs():
    """`quality.py --quick`: a 20-step MovieLens run, its baselines (the zero-shot decay chosen on valid) and the
    paired intervals of the model against them, difference and ratio."""
    figures = _last_json_line("quality.py", "--quick")
    assert figures["quick"] is True and figures["movielens"]["best"] == "frozen"
    assert 0 <= figures["movielens"]["ndcg@10"] <= 1


@pytest.mark.slow
def test_distill_brings_the_student_closer_to_the_wider_teacher(tmp_path, tiny):
    """`distill.py`: a wider teacher (48) reduced by PCA to the student's width (32), the student trained on
    MovieLens titles; on the held-out titles its vectors come closer to the targets, and the folder it writes is an
    encoder `train.py` loads, of the student's width, pooled by mean."""
    from recsys_bert.encoders import load_encoder, sentence_transformers_pooling
    from tests.tiny import make_tiny_encoder

    teacher = make_tiny_encoder(tmp_path / "teacher", seed=1, hidden_size=48)
    out = tmp_path / "student"
    figures = _last_json_line(
        "distill.py", "--data", "movielens", "--teacher", teacher, "--student", tiny, "--output", str(out),
        "--max_texts", "320", "--held_out", "0.2", "--epochs", "4", "--learning_rate", "1e-3", "--max_tokens", "24",
        "--results", "",
    )  # fmt: skip
    cosine = figures["held_out_cosine"]
    assert figures["texts"] == {"train": 256, "held_out": 64}
    assert cosine["after"] > cosine["before"] + 0.1, cosine
    assert load_encoder(str(out)).config.hidden_size == 32
    assert sentence_transformers_pooling(str(out)) == "mean"
    assert json.loads((out / "distill.json").read_text())["held_out_cosine"] == cosine


def _update_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("update", REPO_ROOT / "benchmarks" / "update.py")
    update = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update)
    return update


def test_update_recipes_are_train_py_settings():
    """update.py --tune's grid: each recipe's flags parse as train.py's (the learning rate, epochs and replayed share
    it names)."""
    from recsys_bert.arguments import parse_args

    update = _update_module()
    for recipe in [update.DEFAULT_UPDATE, *update.UPDATE_GRID]:
        flags = update.update_flags(Path("runs/stale"), recipe)
        _, data_args, training_args = parse_args([*update.RECIPE, *flags, "--train_since", "1"])
        assert training_args.learning_rate == pytest.approx(update.LEARNING_RATE * recipe["lr_scale"])
        assert training_args.num_train_epochs == recipe["epochs"]
        assert training_args.init_from == "runs/stale"
        assert data_args.replay_fraction == recipe["replay_fraction"]


def test_update_budget_counts_training_rows_as_train_py_makes_them():
    """The time budget's row count: a user's targets in the window, but their first interaction (no history);
    hand-counted on a log of three users."""
    import pandas as pd

    update = _update_module()
    log = pd.DataFrame({"user": ["a", "a", "a", "b", "b", "c"], "timestamp": [5, 1, 3, 2, 6, 4]})
    # a: 1 (first), 3, 5; b: 2 (first), 6; c: 4 (first)
    assert update.training_rows(log, "user", -np.inf, 10) == 3
    assert update.training_rows(log, "user", 4, 10) == 2  # a's 5, b's 6; c's 4 is its first
    assert update.training_rows(log, "user", 0, 4) == 1  # a's 3


def test_update_across_seeds_pairs_the_seed_means():
    """update.py's aggregate: per-seed means and stds, and the update paired against the others on per-user values
    averaged over seeds (hand-made values: the update gains .1 on every user in every seed)."""
    update = _update_module()
    protocols = ("history_kept", "history_excluded")
    base = {"42": [0.1, 0.3, 0.2, 0.0], "1": [0.2, 0.1, 0.1, 0.1]}
    gain = {"stale": 0.0, "updated": 0.1, "retrained": 0.1}
    values = {seed: {run: {p: np.asarray(base[seed]) + gain[run] for p in protocols} for run in gain} for seed in base}
    results = {
        seed: {
            "p3": {run: {p: {"all": {"ndcg@10": float(values[seed][run][p].mean())}, "recall@10": 0.5}
                         for p in protocols} for run in gain},
            "verdict": {"wall_time_ratio": 0.2 if seed == "42" else 0.4, "train_time_ratio": 0.1},
        }
        for seed in base
    }  # fmt: skip
    summary = update.across_seeds(results, values)
    stale = summary["p3"]["stale"]["history_excluded"]["ndcg@10"]
    assert stale["mean"] == pytest.approx(0.1375) and stale["std"] == pytest.approx(0.025 / 2**0.5)
    versus_stale = summary["comparisons"]["updated - stale"]["history_excluded"]
    assert versus_stale["difference"] == pytest.approx(0.1) and versus_stale["low"] == pytest.approx(0.1)
    assert summary["comparisons"]["updated - retrained"]["history_kept"]["difference"] == pytest.approx(0.0)
    assert summary["verdict"]["beats_stale"] and summary["verdict"]["within_5_percent_of_retrained"]
    assert summary["verdict"]["wall_time_ratio"] == pytest.approx(0.3)
