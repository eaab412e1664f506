"""The parsed-data cache: a data set is parsed once, saved as Arrow files under a folder keyed by its source files
(paths, sizes, mtimes) and the settings, and memory-mapped from there afterwards."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np

from recsys_bert.arguments import DataArguments
from recsys_bert.data.recdata import RecData
from recsys_bert.utils import atomic_path, one_line

logger = logging.getLogger(__name__)

CACHE_VERSION = "3"  # 2: item counts of every training interaction, ties in time by item id; 3: train timestamps
TABLES = ("items", "train", "valid", "test")


# the data arguments that change the parsed data, per format (max_eval_users, train_since and replay_fraction
# are applied after the cache)
CACHE_KEY_ARGUMENTS = {
    "generic": (
        "item_id_column",
        "user_id_column",
        "timestamp_column",
        "text_template",
        "min_history",
        "valid_since",
        "test_since",
    ),
    "movielens": ("min_history", "valid_since", "test_since"),
    "atomic": (),
    "mind": ("mind_valid_fraction", "mind_test_fraction"),
}


def cache_root() -> Path:
    return Path(os.environ.get("RECSYS_BERT_CACHE") or "~/.cache/recsys_bert/data").expanduser()


def fingerprint(data_args: DataArguments, files: dict[str, Path], max_history: int) -> str:
    stats = {role: [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns] for role, path in files.items()}
    settings = {name: getattr(data_args, name) for name in CACHE_KEY_ARGUMENTS[data_args.data_format]}
    key = {"version": CACHE_VERSION, "format": data_args.data_format, "files": stats, "settings": settings}
    key["max_history"] = max_history
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return f"{data_args.data_format}-{digest}"


def load(cache_dir: Path) -> RecData | None:
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tables = {table: datasets.load_from_disk(str(cache_dir / table)) for table in TABLES}
        counts = np.load(cache_dir / "train_item_counts.npy")
        return RecData(**tables, train_item_counts=counts, skipped=meta["skipped"], name=meta["name"])
    except Exception as err:  # a damaged cache is rebuilt, never fatal
        logger.warning("ignoring the damaged data cache %s (%s)", cache_dir, one_line(err))
        return None


def save(data: RecData, cache_dir: Path) -> RecData:
    """Writes `data` to a temporary folder renamed to `cache_dir`, and returns the memory-mapped copy (`data` itself
    where the cache can't be written)."""
    try:
        with atomic_path(cache_dir, folder=True) as tmp:
            for table in TABLES:
                dataset = getattr(data, table)
                # an empty table needs one (empty) shard: saved with none, load_from_disk fails on it
                dataset.save_to_disk(str(tmp / table), num_shards=1 if len(dataset) == 0 else None)
            np.save(tmp / "train_item_counts.npy", data.train_item_counts)
            meta = {"name": data.name, "skipped": data.skipped, "version": CACHE_VERSION}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    except OSError as err:
        logger.warning("could not write the data cache %s (%s); keeping the data in memory", cache_dir, err)
        return data
    return load(cache_dir) or data
