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
