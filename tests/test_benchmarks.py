"""The benchmark scripts run end to end at their smallest settings and end with their JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
