"""Test setup shared by all test files: offline Hugging Face libraries, a private data cache, the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# set before any test module imports transformers or datasets (they read these at import)
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_name] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """`RECSYS_BERT_CACHE` points at a fresh folder for the whole session (never ~/.cache)."""
    path = tmp_path_factory.mktemp("data-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RECSYS_BERT_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder beside the clone (`RECSYS_BERT_SHARED_DATA` overrides it); skips the test if absent."""
    path = Path(os.environ.get("RECSYS_BERT_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set RECSYS_BERT_SHARED_DATA)")
    return path


def reset_accelerate_state() -> None:
    """Lets the next `Accelerator()` in this process start afresh (settings such as mixed precision differ per run)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def fresh_accelerate_state():
    reset_accelerate_state()
    yield


@pytest.fixture(scope="session")
def generic_files(tmp_path_factory) -> tuple[Path, Path]:
    """The first 40 MovieLens users' ratings as a user's own two files (items + interactions)."""
    import pandas as pd

    ml = REPO_ROOT / "data" / "ml-latest-small"
    folder = tmp_path_factory.mktemp("generic")
    ratings = pd.read_csv(ml / "ratings.csv")
    ratings = ratings[ratings.userId <= 40]
    movies = pd.read_csv(ml / "movies.csv")
    movies = movies[movies.movieId.isin(ratings.movieId)]
    movies.rename(columns={"movieId": "item_id"}).to_csv(folder / "items.csv", index=False)
    ratings.rename(columns={"userId": "user_id", "movieId": "item_id"}).to_csv(folder / "log.csv", index=False)
    return folder / "items.csv", folder / "log.csv"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A tiny random BERT folder (see tests/tiny.py)."""
    from tests.tiny import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny"))


def tiny_train_args(generic_files, tiny: str, output_dir, *extra: str) -> list[str]:
    """train.py flags for a quick run of the tiny BERT on `generic_files`."""
    items, log = generic_files
    return [
        "--items", str(items), "--interactions", str(log), "--text_template", "{title}. {genres}",
        "--encoder_name_or_path", tiny, "--output_dir", str(output_dir), "--finetune_layers", "-1",
        "--per_device_train_batch_size", "32", "--num_negatives", "32", "--max_history", "20",
        "--max_item_tokens", "16", "--logging_steps", "5", "--run_baselines", "false", "--seed", "3",
        # one epoch, validated at its end, at the tests' settings (not the defaults' 15 epochs): flags in extra win
        "--projection_dim", "0", "--learning_rate", "1e-3", "--num_train_epochs", "1", "--eval_steps", "0",
        "--early_stopping_patience", "0", "--max_train_minutes", "0", "--text_skip_weight", "0",
        *extra,
    ]  # fmt: skip


# Float results differ between CPUs' kernels and between matrix shapes (a batch of 7 users or of 256, a chunk of 11
# items or the whole catalogue): scores agree to about 1e-6 of their size, not bit for bit, and two items that close
# may swap places. What the README promises, and these tests hold: rankings equal up to such near-ties.
SCORE_TOLERANCE = 1e-4  # logits (cosine / temperature, |logit| <= 20 at temperature .05)


def assert_same_ranking_up_to_ties(ids_a, scores_a, ids_b, scores_b, atol: float = SCORE_TOLERANCE) -> None:
    """Two users' top-K lists (best first) are the same ranking up to near-ties: equal scores place by place to
    `atol`, and where the items differ, they lie among items whose scores are within `atol` of each other (at the end
    of the list, a near-tie may push an item out for another)."""
    import numpy as np

    ids_a, ids_b = list(ids_a), list(ids_b)
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    assert len(ids_a) == len(ids_b)
    np.testing.assert_allclose(scores_a, scores_b, atol=atol, rtol=0)
    # runs of places whose neighbouring scores are within atol: a ranking may order each run any way
    breaks = np.flatnonzero(np.abs(np.diff(scores_a)) > atol) + 1
    for run in np.split(np.arange(len(ids_a)), breaks):
        if len(run) and run[-1] == len(ids_a) - 1:  # the last run: its members may differ at the cut
            assert set(ids_a[: run[0]]) == set(ids_b[: run[0]])
        else:
            assert set(ids_a[run[0] : run[-1] + 1]) == set(ids_b[run[0] : run[-1] + 1]), (run, ids_a, ids_b)


def flat(metrics: dict, prefix: str = "") -> dict:
    """Nested metrics (`{"history_kept": {"ndcg@10": ...}, ...}`) as one flat dict, for `pytest.approx`."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out
