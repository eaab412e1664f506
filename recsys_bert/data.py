"""Data loading: item tables and interaction logs become `RecData`, four memory-mapped `datasets.Dataset` tables.

Four sources (`DataArguments.data_format`):

- `generic`: an item table and an interaction log (.csv, .tsv, .jsonl or .parquet), split leave-one-out by time.
- `movielens`: an ml-latest-small style folder (movies.csv, ratings.csv, tags.csv), split like `generic`.
- `atomic`: RecBole/UniSRec atomic files with their own split, item indices kept as in the files.
- `mind`: MIND news.tsv + behaviors.tsv, impressions split by time.

A few bad rows in a good file are skipped and counted in `RecData.skipped` (an item id on several rows keeps its
first row with a non-empty text); a file that can't be used at all, or whose malformed lines outnumber the good ones,
raises `InputError` with one line naming the file, the line and the column. Parsed data is saved under a cache folder
keyed by the source files (paths, sizes, mtimes) and the settings, so a second load only memory-maps it.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import string
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from recsys_bert.config import DataArguments
from recsys_bert.errors import InputError

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
MOVIELENS_TEMPLATE = "{title}. {genres}. {tags}"
MIND_TEMPLATE = "{title}. {category}, {subcategory}. {abstract}"
MIND_NEWS_COLUMNS = tuple("news_id category subcategory title abstract url title_entities abstract_entities".split())
MIND_BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
ATOMIC_PARTS = ("text", "item2index", "user2index", "train.inter", "valid.inter", "test.inter")
TABLES = ("items", "train", "valid", "test")
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_JSON_NULL_LINE = re.compile(rb"(?m)^[ \t\r]*null[ \t\r]*$")
_SURROGATES = re.compile("[\ud800-\udfff]")
# the data arguments that change the parsed data, per format (max_eval_users is applied after the cache)
CACHE_KEY_ARGUMENTS = {
    "generic": ("item_id_column", "user_id_column", "timestamp_column", "text_template", "min_history"),
    "movielens": ("min_history",),
    "atomic": (),
    "mind": ("mind_valid_fraction", "mind_test_fraction"),
}


@dataclass
class RecData:
    """A data set ready for training and evaluation; row i of `items` is internal item index i.

    Args:
        items: `item_id` (string) and `text` (string) of every item.
        train: `user_id`, `history` (list<int32>, oldest -> newest, the last `max_history`), `target` (int32);
            MIND also has `negatives` (list<int32>, the impression's non-clicked items).
        valid: leave-one-out: `user_id`, `history` (the full history before the target), `target`. MIND:
            impressions with `impression_id`, `user_id`, `history` (full), `candidates` (list<int32>) and `labels`
            (list<int8>, 1 = click).
        test: like `valid`.
        train_item_counts: (num_items,) int64, how often each item is a training target.
        skipped: reason -> count of skipped rows or ids.
        name: short data set name for logs and the model card.
    """

    items: datasets.Dataset
    train: datasets.Dataset
    valid: datasets.Dataset
    test: datasets.Dataset
    train_item_counts: np.ndarray
    skipped: dict[str, int]
    name: str

    @property
    def is_impressions(self) -> bool:
        """True when valid/test are impressions (candidates + labels) rather than one target per user (MIND)."""
        return "candidates" in self.valid.column_names


def load_data(data_args: DataArguments, max_history: int, seed: int = 42) -> RecData:
    """Loads the data set `data_args` describes, from the cache when it was parsed before.

    Args:
        data_args: the source (format, files) and the split settings.
        max_history: most recent history items kept in training rows (valid/test keep the full history).
        seed: picks the users kept when `data_args.max_eval_users` > 0.

    Returns:
        `RecData` whose tables are memory-mapped from the cache folder (in memory if the cache can't be written).

    Raises:
        InputError: a file that can't be used at all, or settings that don't fit the data.
    """
    _check_settings(data_args, max_history)
    files = _source_files(data_args)
    cache_dir = _cache_root() / _fingerprint(data_args, files, max_history)
    data = _load_cache(cache_dir)
    if data is None:
        start = time.perf_counter()
        data = _parse(data_args, files, max_history)
        logger.info("parsed %s in %.1f s", data.name, time.perf_counter() - start)
        data = _save_cache(data, cache_dir)
    else:
        logger.info("loaded %s from the cache %s", data.name, cache_dir)
    if data_args.max_eval_users > 0:
        data.valid, data.test = _limit_eval_users(data.valid, data.test, data_args.max_eval_users, seed)
    return data


def tokenize_items(items: datasets.Dataset, tokenizer, max_tokens: int) -> datasets.Dataset:
    """Adds `input_ids` (list<int32>, with special tokens, truncated to `max_tokens`, not padded) to `items`.

    One batched `map`, so each item is tokenized once and `datasets` caches the result next to memory-mapped items.
    """
    if "input_ids" in items.column_names:
        items = items.remove_columns("input_ids")
    features = items.features.copy()
    features["input_ids"] = datasets.List(datasets.Value("int32"))

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(
            batch["text"],
            truncation=True,
            max_length=max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return {"input_ids": encoded["input_ids"]}

    return items.map(tokenize, batched=True, batch_size=1000, features=features, desc="Tokenizing item texts")


def format_skipped(skipped: dict[str, int]) -> str:
    """One line per skip reason ("reason: count"), or "no rows skipped"."""
    if not skipped:
        return "no rows skipped"
    return "\n".join(f"{reason}: {count:,}" for reason, count in skipped.items())


# ---------------------------------------------------------------- sources, cache


def _check_settings(data_args: DataArguments, max_history: int) -> None:
    if max_history < 1:
        raise InputError(f"max_history must be at least 1, got {max_history}")
    if data_args.min_history < 0:
        raise InputError(f"min_history must be 0 or more, got {data_args.min_history}")
    if data_args.data_format == "mind":
        valid_fraction, test_fraction = data_args.mind_valid_fraction, data_args.mind_test_fraction
        if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
            raise InputError(
                f"mind_valid_fraction ({valid_fraction}) and mind_test_fraction ({test_fraction}) must be above 0 "
                "and add up to less than 1 (the rest is train)"
            )


def _source_files(data_args: DataArguments) -> dict[str, Path]:
    """The files a format reads, by role; every one checked to exist before anything is parsed."""
    data_format = data_args.data_format
    if data_format == "generic":
        if not data_args.items or not data_args.interactions:
            raise InputError("data_format 'generic' needs --items and --interactions")
        files = {"items": Path(data_args.items), "interactions": Path(data_args.interactions)}
        for path in files.values():
            if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                raise InputError(
                    f"{path}: unknown file type '{path.suffix}' (supported: {', '.join(SUPPORTED_EXTENSIONS)})"
                )
    elif data_format in ("movielens", "atomic", "mind"):
        if not data_args.data_dir:
            raise InputError(f"data_format '{data_format}' needs --data_dir")
        folder = Path(data_args.data_dir)
        if not folder.is_dir():
            raise InputError(f"{folder}: data folder not found")
        if data_format == "movielens":
            files = {"items": folder / "movies.csv", "interactions": folder / "ratings.csv"}
            if (folder / "tags.csv").exists():
                files["tags"] = folder / "tags.csv"
        elif data_format == "mind":
            files = {"items": folder / "news.tsv", "interactions": folder / "behaviors.tsv"}
        else:
            found = sorted(folder.glob("*.train.inter"))
            if len(found) != 1:
                names = ", ".join(p.name for p in found) or "none"
                raise InputError(f"{folder}: needs exactly one *.train.inter file (found: {names})")
            stem = found[0].name[: -len(".train.inter")]
            files = {part: folder / f"{stem}.{part}" for part in ATOMIC_PARTS}
    else:
        raise InputError(f"data_format '{data_format}': unknown (use generic, movielens, atomic or mind)")
    for path in files.values():
        if not path.is_file():
            raise InputError(f"{path}: file not found")
    return files


def _cache_root() -> Path:
    return Path(os.environ.get("RECSYS_BERT_CACHE") or "~/.cache/recsys_bert/data").expanduser()


def _fingerprint(data_args: DataArguments, files: dict[str, Path], max_history: int) -> str:
    stats = {role: [str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns] for role, path in files.items()}
    settings = {name: getattr(data_args, name) for name in CACHE_KEY_ARGUMENTS[data_args.data_format]}
    key = {"version": CACHE_VERSION, "format": data_args.data_format, "files": stats, "settings": settings}
    key["max_history"] = max_history
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return f"{data_args.data_format}-{digest}"


def _load_cache(cache_dir: Path) -> RecData | None:
    meta_path = cache_dir / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tables = {table: datasets.load_from_disk(str(cache_dir / table)) for table in TABLES}
        counts = np.load(cache_dir / "train_item_counts.npy")
        return RecData(**tables, train_item_counts=counts, skipped=meta["skipped"], name=meta["name"])
    except Exception as err:  # a damaged cache is rebuilt, never fatal
        logger.warning("ignoring the damaged data cache %s (%s)", cache_dir, _one_line(err))
        return None


def _save_cache(data: RecData, cache_dir: Path) -> RecData:
    """Writes `data` to a temporary folder, renames it to `cache_dir` and returns the memory-mapped copy."""
    tmp = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
        for table in TABLES:
            dataset = getattr(data, table)
            # an empty table needs one (empty) shard: saved with none, load_from_disk fails on it
            dataset.save_to_disk(str(tmp / table), num_shards=1 if len(dataset) == 0 else None)
        np.save(tmp / "train_item_counts.npy", data.train_item_counts)
        meta = {"name": data.name, "skipped": data.skipped, "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, cache_dir)
        except OSError:  # another process wrote the same cache first
            if not (cache_dir / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        logger.warning("could not write the data cache %s (%s); keeping the data in memory", cache_dir, err)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return data
    return _load_cache(cache_dir) or data


def _limit_eval_users(
    valid: datasets.Dataset, test: datasets.Dataset, max_users: int, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Keeps the rows of at most `max_users` users per split. Each split keeps its first users in one seeded random
    order of all users, so leave-one-out valid and test keep the same users (MIND's, with other users, favour shared
    ones)."""
    valid_users = valid.data.column("user_id").to_numpy()
    test_users = test.data.column("user_id").to_numpy()
    users = pd.unique(np.concatenate([valid_users, test_users]))
    rank = pd.Series(np.random.default_rng(seed).permutation(len(users)), index=users)

    def keep(table: datasets.Dataset, table_users: np.ndarray) -> datasets.Dataset:
        present = pd.unique(table_users)
        if len(present) <= max_users:
            return table
        chosen = rank[present].nsmallest(max_users).index
        return table.select(np.flatnonzero(pd.Index(chosen).get_indexer(table_users) >= 0))

    return keep(valid, valid_users), keep(test, test_users)


# ---------------------------------------------------------------- parsing


def _parse(data_args: DataArguments, files: dict[str, Path], max_history: int) -> RecData:
    skipped: dict[str, int] = {}
    data_format = data_args.data_format
    try:
        if data_format == "generic":
            tables, name = _load_generic(data_args, files, max_history, skipped), files["items"].stem
        elif data_format == "atomic":
            tables, name = _load_atomic(files, max_history, skipped), files["text"].stem
        else:
            load = _load_movielens if data_format == "movielens" else _load_mind
            tables, name = load(data_args, files, max_history, skipped), files["items"].resolve().parent.name
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, OSError, pa.ArrowException) as err:
        # a safety net: every bad input is meant to be caught above with a precise message
        sources = ", ".join(str(path) for path in files.values())
        raise InputError(f"{sources}: could not be read ({type(err).__name__}: {_one_line(err)})") from err
    items, train, valid, test = tables
    targets = train.data.column("target").to_numpy()
    counts = np.bincount(targets, minlength=len(items)).astype(np.int64)
    return RecData(items, train, valid, test, train_item_counts=counts, skipped=skipped, name=name)


def load_items(
    path: str | Path, item_id_column: str = "item_id", text_template: str = "{text}", skipped: dict | None = None
) -> pd.DataFrame:
    """An item table alone (.csv, .tsv, .jsonl or .parquet): `item_id` and `text` (from `text_template`) per item,
    in file order; rows without an id or text, and repeated ids, are skipped and counted in `skipped`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    skipped = {} if skipped is None else skipped
    fields = _template_fields(text_template)
    why = {field: "named in text_template" for field in fields}
    table = _read_table(path, [item_id_column, *fields], skipped, why=why)
    texts = _render_template(table, text_template)
    return _item_table(table[item_id_column], texts, path, item_id_column, skipped)


def _load_generic(data_args: DataArguments, files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    item_column = data_args.item_id_column
    items = load_items(files["items"], item_column, data_args.text_template, skipped)
    columns = (data_args.user_id_column, item_column, data_args.timestamp_column)
    log = _read_table(files["interactions"], list(columns), skipped)
    splits = _leave_one_out(log, items, files["interactions"], columns, max_history, data_args.min_history, skipped)
    return (_dataset(items), *splits)


def _load_movielens(data_args: DataArguments, files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    movies = _read_table(files["items"], ["movieId", "title", "genres"], skipped)
    movies["genres"] = (
        movies["genres"].str.strip().replace("(no genres listed)", "").str.replace("|", ", ", regex=False)
    )
    movie_ids = movies["movieId"].str.strip()
    tags_by_movie = pd.Series(dtype="str")
    if "tags" in files:
        tags = _read_table(files["tags"], ["movieId", "tag"], skipped)
        tags = pd.DataFrame({"movieId": tags["movieId"].str.strip(), "tag": tags["tag"].str.strip()})
        tags = tags[tags["tag"] != ""].drop_duplicates()
        unknown = ~tags["movieId"].isin(movie_ids)
        _count(skipped, f"{files['tags'].name}: unknown movieId", unknown.sum())
        tags_by_movie = tags[~unknown].groupby("movieId", sort=False)["tag"].agg(", ".join)
    movies["tags"] = movie_ids.map(tags_by_movie).fillna("")
    items = _item_table(
        movies["movieId"], _render_template(movies, MOVIELENS_TEMPLATE), files["items"], "movieId", skipped
    )
    columns = ("userId", "movieId", "timestamp")
    ratings = _read_table(files["interactions"], list(columns), skipped)
    splits = _leave_one_out(
        ratings, items, files["interactions"], columns, max_history, data_args.min_history, skipped
    )
    return (_dataset(items), *splits)


def _leave_one_out(
    log: pd.DataFrame,
    items: pd.DataFrame,
    path: Path,
    columns: tuple[str, str, str],
    max_history: int,
    min_history: int,
    skipped: dict[str, int],
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """Sorts the interactions by (user, time), ties in file order, and splits each user's sequence: test = the last
    item, valid = the second-last, train = one row per earlier position t >= 1 (history = the items before it)."""
    user_column, item_column, time_column = columns
    users, item_ids = log[user_column].str.strip(), log[item_column].str.strip()
    missing = ((users == "") | (item_ids == "")).to_numpy()
    _count(skipped, f"{path.name}: missing {user_column} or {item_column}", missing.sum())
    item_codes = _lookup(items["item_id"], item_ids)
    unknown = ~missing & (item_codes < 0)
    _count(skipped, f"{path.name}: unknown {item_column}", unknown.sum())
    if unknown.any() and not (~missing & ~unknown).any():  # not one id matches: another column or id format?
        raise InputError(
            f"{path}: no usable rows (none of its {item_column} values is in the item table: e.g. "
            f"{_show(item_ids[unknown][:1])}; the item table has e.g. {_show(items['item_id'][:3])})"
        )
    times = _parse_timestamps(log[time_column])
    bad_time = ~missing & ~unknown & ~np.isfinite(times)
    _count(skipped, f"{path.name}: missing or unparseable {time_column}", bad_time.sum())
    negative = ~missing & ~unknown & ~bad_time & (times < 0)
    _count(skipped, f"{path.name}: negative {time_column}", negative.sum())
    keep = ~(missing | unknown | bad_time | negative)
    _count(
        skipped, f"{path.name}: users with no usable interaction", users[~missing].nunique() - users[keep].nunique()
    )
    user_codes, user_names = pd.factorize(users[keep])
    order = np.lexsort((times[keep], user_codes))  # np.lexsort is stable: ties keep file order
    user_codes, sequence = user_codes[order], item_codes[keep][order].astype(np.int32)

    starts = (
        np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]]) if len(user_codes) else np.zeros(0, np.int64)
    )
    ends = np.r_[starts[1:], len(user_codes)].astype(np.int64)
    needed = min_history + 2
    long_enough = ends - starts >= needed
    _count(skipped, f"{path.name}: users with fewer than {needed} interactions", (~long_enough).sum())
    if not long_enough.any():
        prefix = f"{path.name}: "
        why = "; ".join(f"{reason[len(prefix) :]}: {n}" for reason, n in skipped.items() if reason.startswith(prefix))
        raise InputError(f"{path}: no usable rows (no user has the {needed} interactions needed; skipped {why})")
    starts, ends = starts[long_enough], ends[long_enough]
    names = _strings(np.asarray(user_names, dtype=object)[user_codes[starts]])  # one per user

    rows_per_user = np.maximum(ends - starts - 3, 0)  # targets at positions 1 .. n-3
    if not rows_per_user.any():
        logger.warning("%s: no training rows (no user has more than 3 interactions), only valid and test", path)
    row_user = np.repeat(np.arange(len(starts)), rows_per_user)
    first_row = np.cumsum(rows_per_user) - rows_per_user
    target_pos = starts[row_user] + 1 + np.arange(len(row_user)) - first_row[row_user]
    train = {
        "user_id": names.take(row_user),
        "history": _lists(sequence, np.maximum(starts[row_user], target_pos - max_history), target_pos),
        "target": pa.array(sequence[target_pos]),
    }
    valid = {
        "user_id": names,
        "history": _lists(sequence, starts, ends - 2),
        "target": pa.array(sequence[ends - 2]),
    }
    test = {
        "user_id": names,
        "history": _lists(sequence, starts, ends - 1),
        "target": pa.array(sequence[ends - 1]),
    }
    return _dataset(train), _dataset(valid), _dataset(test)


def _load_atomic(files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    """RecBole/UniSRec atomic files: the files' item index stays the internal index (when every item has text)."""
    text_path, item_path = files["text"], files["item2index"]
    texts = _read_delimited(text_path, ["item_id", "text"], skipped, "\t", quoted=False, typed_header=True)
    with_text = _item_table(texts["item_id"], texts["text"].str.strip(), text_path, "item_id", skipped)
    asin_by_index = _read_index_file(item_path, skipped)
    text_row = _lookup(with_text["item_id"], asin_by_index.to_numpy())
    has_text = text_row >= 0
    _count(skipped, f"{item_path.name}: items without text in {text_path.name} (dropped)", (~has_text).sum())
    _count(skipped, f"{text_path.name}: items not in {item_path.name} (unused)", len(with_text) - has_text.sum())
    if not has_text.any():
        raise InputError(f"{item_path}: no usable rows (no item has text in {text_path.name})")
    file_index = asin_by_index.index.to_numpy()
    remap = np.full(file_index.max() + 1, -1, dtype=np.int64)
    remap[file_index[has_text]] = np.arange(has_text.sum())
    if not np.array_equal(file_index[has_text], np.arange(has_text.sum())):
        logger.warning("%s: item indices renumbered (gaps or items without text)", item_path)
    items = pd.DataFrame(
        {"item_id": asin_by_index.to_numpy()[has_text], "text": with_text["text"].to_numpy()[text_row[has_text]]}
    )
    users = _read_index_file(files["user2index"], skipped)
    splits = [
        _read_atomic_split(files[f"{split}.inter"], remap, users, max_history if split == "train" else None, skipped)
        for split in ("train", "valid", "test")
    ]
    return (_dataset(items), *splits)


def _read_index_file(path: Path, skipped: dict[str, int]) -> pd.Series:
    """A headerless `id<TAB>index` file as a Series index -> id, sorted by index."""
    table = _read_delimited(path, ["id", "index"], skipped, "\t", quoted=False, names=("id", "index"))
    ids, index = table["id"].str.strip(), _to_number(table["index"])
    bad = (ids == "").to_numpy() | ~_is_index(index)
    _count(skipped, f"{path.name}: missing id or bad index", bad.sum())
    ids, index = ids[~bad].to_numpy(), index[~bad].astype(np.int64)
    duplicate = pd.Series(ids).duplicated().to_numpy() | pd.Series(index).duplicated().to_numpy()
    _count(skipped, f"{path.name}: duplicate id or index (kept the first)", duplicate.sum())
    if duplicate.all():
        raise InputError(f"{path}: no usable rows")
    return pd.Series(ids[~duplicate], index=index[~duplicate]).sort_index()


def _read_atomic_split(
    path: Path, remap: np.ndarray, users: pd.Series, max_history: int | None, skipped: dict[str, int]
) -> datasets.Dataset:
    """One *.inter file: user index, history item indices, target index; histories cut when `max_history`."""
    columns = ["user_id", "item_id_list", "item_id"]
    table = _read_delimited(path, columns, skipped, "\t", quoted=False, typed_header=True)
    user_pos = pd.Index(users.index).get_indexer(_to_number(table["user_id"]))
    targets = _to_item_codes(table["item_id"], remap)
    rows, tokens = _split_tokens(table["item_id_list"])
    history = _to_item_codes(tokens, remap)
    _count(skipped, f"{path.name}: unknown item index in item_id_list (dropped from the history)", (history < 0).sum())
    bad_user = user_pos < 0
    _count(skipped, f"{path.name}: unknown user_id (row skipped)", bad_user.sum())
    bad_target = ~bad_user & (targets < 0)
    _count(skipped, f"{path.name}: unknown item_id (row skipped)", bad_target.sum())
    keep = np.flatnonzero(~(bad_user | bad_target))
    if not len(keep):
        raise InputError(f"{path}: no usable rows")
    starts, ends = _row_bounds(rows[history >= 0], len(table))
    starts, ends = starts[keep], ends[keep]
    if max_history is not None:
        starts = np.maximum(starts, ends - max_history)
    columns = {
        "user_id": _strings(users.to_numpy()).take(user_pos[keep]),
        "history": _lists(history[history >= 0].astype(np.int32), starts, ends),
        "target": pa.array(targets[keep].astype(np.int32)),
    }
    return _dataset(columns)


def _load_mind(data_args: DataArguments, files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    """MIND: items = news with text; impressions split by time into train (one row per click) and valid/test."""
    news_path, behaviors_path = files["items"], files["interactions"]
    news_columns = ["news_id", "category", "subcategory", "title", "abstract"]
    news = _read_delimited(news_path, news_columns, skipped, "\t", quoted=False, names=MIND_NEWS_COLUMNS)
    items = _item_table(news["news_id"], _render_template(news, MIND_TEMPLATE), news_path, "news_id", skipped)

    name = behaviors_path.name
    log = _read_delimited(
        behaviors_path, list(MIND_BEHAVIOR_COLUMNS), skipped, "\t", quoted=False, names=MIND_BEHAVIOR_COLUMNS
    )
    impression_ids, users = log["impression_id"].str.strip(), log["user_id"].str.strip()
    missing = ((impression_ids == "") | (users == "")).to_numpy()
    _count(skipped, f"{name}: missing impression_id or user_id", missing.sum())
    times = pd.to_datetime(log["time"].str.strip(), format=MIND_TIME_FORMAT, errors="coerce").to_numpy()
    bad_time = ~missing & pd.isna(times)
    _count(skipped, f"{name}: missing or unparseable time", bad_time.sum())
    keep = np.flatnonzero(~(missing | bad_time))
    keep = keep[np.argsort(times[keep], kind="stable")]  # oldest first, ties in file order
    log, impression_ids, users = (
        log.iloc[keep],
        _strings(impression_ids.to_numpy()[keep]),
        _strings(users.to_numpy()[keep]),
    )
    n = len(keep)
    if not n:
        raise InputError(f"{behaviors_path}: no usable rows")
    n_test, n_valid = round(n * data_args.mind_test_fraction), round(n * data_args.mind_valid_fraction)
    split = np.zeros(n, dtype=np.int8)
    split[n - n_test - n_valid :] = 1
    split[n - n_test :] = 2

    history_rows, history_ids = _split_tokens(log["history"])
    impression_rows, entries = _split_tokens(log["impressions"])
    parts = entries.str.rpartition("-")
    malformed = ((parts[1] == "") | ~parts[2].isin(["0", "1"]) | (parts[0] == "")).to_numpy()
    _count(skipped, f"{name}: malformed impression entries (not 'NEWSID-0' or 'NEWSID-1')", malformed.sum())
    impression_rows, candidate_ids = impression_rows[~malformed], parts[0][~malformed]
    labels = (parts[2][~malformed] == "1").to_numpy().astype(np.int8)
    history_codes, candidate_codes = _lookup(items["item_id"], history_ids), _lookup(items["item_id"], candidate_ids)
    unknown_ids = pd.concat([history_ids[history_codes < 0], candidate_ids[candidate_codes < 0]])
    _count(skipped, f"{name}: news ids without text (distinct ids)", unknown_ids.nunique())
    _count(skipped, f"{name}: news ids without text (dropped from histories)", (history_codes < 0).sum())
    _count(skipped, f"{name}: news ids without text (dropped from impressions)", (candidate_codes < 0).sum())
    known = history_codes >= 0
    history_rows, history_codes = history_rows[known], history_codes[known].astype(np.int32)
    known = candidate_codes >= 0
    impression_rows, labels = impression_rows[known], labels[known]
    candidate_codes = candidate_codes[known].astype(np.int32)
    history_starts, history_ends = _row_bounds(history_rows, n)
    candidate_starts, candidate_ends = _row_bounds(impression_rows, n)
    clicks = np.bincount(impression_rows, weights=labels, minlength=n).astype(np.int64)
    non_clicks = (candidate_ends - candidate_starts) - clicks

    no_click = (split == 0) & (clicks == 0)
    _count(skipped, f"{name}: train impressions without a click (no training rows)", no_click.sum())
    is_click = labels == 1
    train_click = is_click & (split[impression_rows] == 0)
    click_rows = impression_rows[train_click]
    negative_starts, negative_ends = _row_bounds(impression_rows[~is_click], n)
    train = {
        "user_id": users.take(click_rows),
        "history": _lists(
            history_codes,
            np.maximum(history_starts, history_ends - max_history)[click_rows],
            history_ends[click_rows],
        ),
        "target": pa.array(candidate_codes[train_click]),
        "negatives": _lists(candidate_codes[~is_click], negative_starts[click_rows], negative_ends[click_rows]),
    }
    if not len(click_rows):
        raise InputError(f"{behaviors_path}: no usable rows (no click in the train impressions)")
    evaluation = []
    for split_id, split_name in ((1, "valid"), (2, "test")):
        in_split = split == split_id
        usable = in_split & (clicks > 0) & (non_clicks > 0)
        dropped = in_split & ~usable
        _count(skipped, f"{name}: {split_name} impressions without both a click and a non-click", dropped.sum())
        rows = np.flatnonzero(usable)
        if not len(rows):
            raise InputError(f"{behaviors_path}: no usable {split_name} impressions (with a click and a non-click)")
        evaluation.append(
            _dataset(
                {
                    "impression_id": impression_ids.take(rows),
                    "user_id": users.take(rows),
                    "history": _lists(history_codes, history_starts[rows], history_ends[rows]),
                    "candidates": _lists(candidate_codes, candidate_starts[rows], candidate_ends[rows]),
                    "labels": _lists(labels, candidate_starts[rows], candidate_ends[rows]),
                }
            )
        )
    return (_dataset(items), _dataset(train), *evaluation)


# ---------------------------------------------------------------- items, text


def _template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(f"text_template {template!r}: not a valid template ({err})") from None
    if any(spec or conversion for _, field, spec, conversion in parsed if field is not None):
        raise InputError(f"text_template {template!r}: format specs and conversions (':', '!') aren't supported")
    fields = list(dict.fromkeys(field for _, field, _, _ in parsed if field is not None))
    if not fields or "" in fields:
        raise InputError(f"text_template {template!r}: name each field, e.g. '{{title}}. {{categories}}'")
    return fields


def _render_template(table: pd.DataFrame, template: str) -> pd.Series:
    """Fills `template` row by row, vectorised. An empty field drops the literal text after it, so
    "{title}. {genres}. {tags}" with no tags gives "Title. Genres", not "Title. Genres. "."""
    parsed = list(string.Formatter().parse(template))
    lead = parsed[0][0] if parsed[0][1] is not None else ""
    field_pieces = [
        (field, parsed[i + 1][0] if i + 1 < len(parsed) else "") for i, (_, field, _, _) in enumerate(parsed)
    ]
    field_pieces = [(field, literal) for field, literal in field_pieces if field is not None]
    trailing = field_pieces[-1][1]
    text = pd.Series("", index=table.index, dtype="str")
    separator = pd.Series("", index=table.index, dtype="str")  # the literal after the last non-empty field so far
    for field, literal_after in field_pieces:
        value = table[field].fillna("").astype("str").str.strip()
        has_value = value != ""
        text = text.where(~has_value, text + separator.where(text != "", "") + value)
        separator = separator.where(~has_value, literal_after)
    return text.where(text == "", lead + text + trailing).str.strip()


def _item_table(ids: pd.Series, texts: pd.Series, path: Path, id_column: str, skipped: dict[str, int]) -> pd.DataFrame:
    """Items in file order with a usable id and text; missing ids, empty texts and repeated ids are counted.

    An id on several rows keeps its first row with a non-empty text (whatever the other rows' texts are).
    """
    ids = ids.str.strip()
    missing = (ids == "").to_numpy()
    empty = ~missing & (texts == "").to_numpy()
    duplicate = ~missing & ~empty
    duplicate[duplicate] = ids[duplicate].duplicated().to_numpy()
    _count(skipped, f"{path.name}: missing {id_column}", missing.sum())
    _count(skipped, f"{path.name}: duplicate {id_column} (kept the first)", duplicate.sum())
    _count(skipped, f"{path.name}: empty text", empty.sum())
    keep = ~(missing | duplicate | empty)
    if not keep.any():
        raise InputError(f"{path}: no usable rows (no item with an id and a non-empty text)")
    return pd.DataFrame({"item_id": ids.to_numpy()[keep], "text": texts.to_numpy()[keep]})


# ---------------------------------------------------------------- file readers


def _read_table(
    path: Path, columns: list[str], skipped: dict[str, int], why: dict[str, str] | None = None
) -> pd.DataFrame:
    """Reads `columns` of a .csv, .tsv, .jsonl or .parquet file as strings ("" where a value is missing)."""
    columns = list(dict.fromkeys(columns))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, columns, skipped, "," if suffix == ".csv" else "\t", why=why)
    if suffix == ".jsonl":
        return _read_jsonl(path, columns, skipped, why=why)
    if suffix == ".parquet":
        return _read_parquet(path, columns, why=why)
    raise InputError(f"{path}: unknown file type '{path.suffix}' (supported: {', '.join(SUPPORTED_EXTENSIONS)})")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: can't be read ({err.strerror or err})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if not data or data.isspace():
        raise InputError(f"{path}: empty file")
    return data


def _decode(
    path: Path, data: bytes, delimiter: str | None = None, names: list[str] | None = None, quoted: bool = True
) -> str:
    """`data` as UTF-8 text; else an error naming the line, the byte and, in a delimited file, the column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise InputError(f"{path}: UTF-16 text; save the file as UTF-8") from None
        line_start = data.rfind(b"\n", 0, err.start) + 1
        line = data.count(b"\n", 0, err.start) + 1
        column = ""
        if delimiter is not None:
            if names is None:  # the header, readable enough to name the column
                try:
                    names, _ = _first_record(data[: 1 << 20].decode("utf-8", errors="replace"), delimiter, quoted)
                except csv.Error:
                    names = []
            before = data[line_start : err.start].decode("utf-8", errors="replace")  # the line up to the bad byte
            quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
            try:  # the bad byte is in the line's last field so far
                field = max(len(next(csv.reader([before], delimiter=delimiter, quoting=quoting), [])) - 1, 0)
            except csv.Error:
                field = len(names)
            column = f", column {names[field][:60]!r}" if field < len(names) else ""
        byte = f"byte {err.start - line_start + 1}: not UTF-8 text (0x{data[err.start]:02x}{column})"
        raise InputError(f"{path}, line {line}, {byte}; save the file as UTF-8") from None


def _first_record(text: str, delimiter: str, quoted: bool = True) -> tuple[list[str], str]:
    """The fields of the first record of a delimited text and its text, line end included. Records end at \\n, \\r
    or \\r\\n, as pyarrow reads them, and a quoted field may hold a line break."""
    lines = io.StringIO(text, newline="")
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    fields = next(csv.reader(lines, delimiter=delimiter, quoting=quoting), [])
    return fields, text[: lines.tell()]


def _show(names, limit: int = 20) -> str:
    """Names from a file (header fields, JSON keys) for a one-line message: quoted where not plain, at most `limit`."""
    names = list(names)
    plain = [name.isprintable() and name.strip() == name != "" and len(name) <= 60 for name in names[:limit]]
    shown = [name if is_plain else repr(name[:60]) for name, is_plain in zip(names, plain)]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _missing_column(
    where: str, column: str, holder: str, present, why: dict[str, str] | None, hint: str = ""
) -> InputError:
    """E.g. "items.csv, line 1, column 'brand': missing, named in text_template (the header has: item_id, title)"."""
    reason = f", {why[column]}" if why and column in why else ""
    return InputError(f"{where}, column '{column}': missing{reason} ({holder}: {_show(present)}){hint}")


def _wrong_delimiter(first_line: str, header: list[str], delimiter: str) -> str:
    """A hint when a one-field header holds another delimiter, e.g. a .csv file written with ';'."""
    found = [name for sep, name in DELIMITER_NAMES.items() if sep != delimiter and sep in first_line]
    if len(header) != 1 or not found:
        return ""
    return (
        f"; the line has no {DELIMITER_NAMES[delimiter]} but a {found[0]}: "
        ".csv files must be comma-separated, .tsv files tab-separated"
    )


def _read_delimited(
    path: Path,
    columns: list[str],
    skipped: dict[str, int],
    delimiter: str,
    quoted: bool = True,
    names: tuple[str, ...] | None = None,
    typed_header: bool = False,
    why: dict[str, str] | None = None,
) -> pd.DataFrame:
    """A delimited text file (header line unless `names`); lines with the wrong number of fields are counted, and
    a file where they are the majority can't be read.

    `typed_header` drops RecBole's type suffixes ("item_id:token" -> "item_id"); `quoted=False` reads '"' as text.
    """
    data = _read_bytes(path)
    _decode(path, data, delimiter, list(names) if names else None, quoted)
    body = pa.py_buffer(data)
    if names is None:
        head = data[: 1 << 20]  # a header longer than that: read the whole file below
        try:
            header, first_line = _first_record(head.decode("utf-8", errors="ignore"), delimiter, quoted)
            if len(head) < len(data) and len(first_line.encode("utf-8")) >= len(head) - 4:
                header, first_line = _first_record(data.decode("utf-8"), delimiter, quoted)
        except csv.Error as err:
            raise InputError(f"{path}, line 1: not a readable header ({_one_line(err)})") from None
        header = [name.split(":")[0] if typed_header else name for name in header]
        body = body[len(first_line.encode("utf-8")) :]  # zero-copy slice past the header line
        for column in columns:
            if column not in header:
                hint = _wrong_delimiter(first_line, header, delimiter)
                raise _missing_column(f"{path}, line 1", column, "the header has", header, why, hint)
    else:
        header = list(names)
    if not re.compile(rb"\S").search(data, len(data) - len(body)):
        raise InputError(f"{path}: no usable rows (only a header line)")
    malformed = []  # (fields, text) of the first few malformed rows

    def on_invalid_row(row) -> str:
        malformed.append((row.actual_columns, row.text) if len(malformed) < 10 else None)
        return "skip"

    try:
        table = pa_csv.read_csv(
            body,
            read_options=pa_csv.ReadOptions(column_names=header, block_size=1 << 24),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                newlines_in_values=quoted,
                invalid_row_handler=on_invalid_row,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={column: pa.string() for column in columns},
                include_columns=columns,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        raise InputError(
            f"{path}: not a readable {'CSV' if delimiter == ',' else 'TSV'} file ({_one_line(err)})"
        ) from None
    if malformed:
        rows = [(_line_of(data, row_text), fields) for fields, row_text in malformed[:10]]
        line, fields = min(rows, key=lambda row: (row[0] == 0, row[0]))  # the first line found
        where = f"{path}, line {line}" if line else str(path)
        detail = f"{fields} field{'s' * (fields != 1)}, expected {len(header)}"
        if len(malformed) > table.num_rows:
            total = len(malformed) + table.num_rows
            raise InputError(
                f"{where}: {detail}; {len(malformed):,} of {total:,} rows are malformed, so the file can't be read"
            )
        logger.warning("%s: %s; skipped (malformed lines in all: %d)", where, detail, len(malformed))
    _count(skipped, f"{path.name}: malformed lines (wrong number of fields, expected {len(header)})", len(malformed))
    if table.num_rows == 0:
        raise InputError(f"{path}: no usable rows")
    return pd.DataFrame({column: table.column(column).to_pandas() for column in columns})


def _line_of(data: bytes, row_text: str) -> int:
    """The number of the first line of `data` that is `row_text` (0 where there is none)."""
    found = re.search(rb"(?m)^" + re.escape(row_text.encode("utf-8")) + rb"\r?$", data)
    return data.count(b"\n", 0, found.start()) + 1 if found else 0


def _read_json_lines(path: Path, text: str, columns: list[str], skipped: dict[str, int]) -> tuple[dict, dict]:
    """JSON Lines parsed line by line: the keys present and the `columns`' values as text; bad lines are counted."""
    present, values, bad, first_bad = {}, {column: [] for column in columns}, 0, None
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip(" \t\r"):  # JSON whitespace
            continue
        try:
            record, problem = json.loads(line), "not a JSON object"
        except ValueError as err:
            record, problem = None, f"not JSON ({err.args[0].split(':')[0]})"
        if not isinstance(record, dict):
            bad += 1
            first_bad = first_bad or (number, problem)
            continue
        present.update(dict.fromkeys(record))
        for column in columns:
            values[column].append(_to_text(record.get(column)))
    if bad:
        where, detail = f"{path}, line {first_bad[0]}", first_bad[1]
        good = len(values[columns[0]])
        if bad > good:
            raise InputError(
                f"{where}: {detail}; {bad:,} of {bad + good:,} lines are not JSON objects, so the file can't be read "
                "as JSON Lines"
            )
        logger.warning("%s: %s; skipped (malformed lines in all: %d)", where, detail, bad)
    _count(skipped, f"{path.name}: malformed lines (not a JSON object)", bad)
    return present, {column: pd.Series(value, dtype="str") for column, value in values.items()}


def _read_jsonl(
    path: Path, columns: list[str], skipped: dict[str, int], why: dict[str, str] | None = None
) -> pd.DataFrame:
    """One JSON object per line. A bad line later in the file is counted; a bad first line, or more bad lines than
    good ones: not JSON Lines."""
    data = _read_bytes(path)
    text = _decode(path, data)
    found = re.search(rb"[^ \t\r\n]", data)  # the first character that isn't JSON whitespace
    if found is None:
        raise InputError(f"{path}: empty file")
    number = data.count(b"\n", 0, found.start()) + 1
    end = data.find(b"\n", found.start())
    line = data[data.rfind(b"\n", 0, found.start()) + 1 : end if end >= 0 else len(data)]
    try:
        first = json.loads(line)
    except ValueError as err:
        raise InputError(f"{path}, line {number}: not JSON ({err.args[0].split(':')[0]}); is it JSON Lines?") from None
    if not isinstance(first, dict):
        raise InputError(f"{path}, line {number}: not a JSON object")
    table = None
    if not _JSON_NULL_LINE.search(data):  # pyarrow would read a "null" line as a row
        try:  # fast path: pyarrow parses well-formed files with consistent types
            table = pa_json.read_json(pa.py_buffer(data))
        except pa.ArrowInvalid:  # a bad line, mixed types or a lone surrogate: line by line below
            pass
    if table is not None:
        present = table.column_names
        values = {column: _arrow_to_text(table.column(column)) for column in columns if column in present}
    else:
        present, values = _read_json_lines(path, text, columns, skipped)
    for column in columns:
        if column not in present:
            raise _missing_column(str(path), column, "the records have", present, why)
    return pd.DataFrame(values)


def _read_parquet(path: Path, columns: list[str], why: dict[str, str] | None = None) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
        for column in columns:
            if column not in present:
                raise _missing_column(str(path), column, "the file has", present, why)
        table = parquet.read(columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({_one_line(err)})") from None
    if table.num_rows == 0:
        raise InputError(f"{path}: no usable rows")
    return pd.DataFrame({column: _arrow_to_text(table.column(column)) for column in columns})


def _arrow_to_text(column: pa.ChunkedArray) -> pd.Series:
    """An Arrow column as strings the way `_to_text` writes JSON values ("" for null)."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_floating(kind):  # like _to_text: whole numbers without ".0", NaN and null as ""
        numbers = column.to_numpy().astype(np.float64)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers)) & (np.abs(numbers) < 2**53)
        text = np.where(whole, np.where(whole, numbers, 0).astype(np.int64).astype(str), numbers.astype(str))
        return pd.Series(np.where(np.isnan(numbers), "", text), dtype="str")
    if any(is_kind(kind) for is_kind in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)):
        return pc.fill_null(column.cast(pa.string()), "").to_pandas()
    if pa.types.is_temporal(kind):  # e.g. "2019-11-12 14:14:46", which _parse_timestamps reads as ISO 8601
        return pc.fill_null(column.cast(pa.string()), "").to_pandas()
    return pd.Series([_to_text(value) for value in column.to_pylist()], dtype="str")


def _to_text(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):  # a Parquet binary column
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(text for text in map(_to_text, value) if text)
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, default=str)  # default: a Parquet struct's dates
    if isinstance(value, str):  # a JSON escape like "\ud800" gives a lone surrogate, which isn't text
        return _SURROGATES.sub("\ufffd", value)
    return str(value)


# ---------------------------------------------------------------- vectorised helpers


def _count(skipped: dict[str, int], reason: str, count) -> None:
    if count:
        skipped[reason] = skipped.get(reason, 0) + int(count)


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split())


def _to_number(values) -> np.ndarray:
    """Strings to float64, NaN where a value isn't a number."""
    text = pc.utf8_trim_whitespace(_strings(values))
    try:  # fast path: every value is a number
        return text.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return pd.to_numeric(text.to_pandas(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _lookup(keys, values) -> np.ndarray:
    """The position of each of `values` in the unique strings `keys`, -1 where absent."""
    found = pc.index_in(_strings(values), value_set=_strings(keys))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _is_index(numbers: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(numbers) & (numbers >= 0) & (numbers == np.floor(numbers))


def _to_item_codes(values: pd.Series, remap: np.ndarray) -> np.ndarray:
    """File item indices (as text) -> internal indices; -1 where not an index or not a known item."""
    numbers = _to_number(values)
    ok = _is_index(numbers) & (numbers < len(remap))
    codes = np.full(len(numbers), -1, dtype=np.int64)
    codes[ok] = remap[numbers[ok].astype(np.int64)]
    return codes


def _parse_timestamps(values: pd.Series) -> np.ndarray:
    """Numbers (e.g. Unix seconds) as they are, else date-time strings as Unix seconds; NaN where unparseable."""
    text = values.str.strip()
    numbers = _to_number(text)
    present = (text != "").to_numpy()
    if not present.any() or np.isfinite(numbers[present]).mean() >= 0.5:
        return numbers
    for date_format in ("ISO8601", "mixed"):
        times = pd.to_datetime(text, errors="coerce", utc=True, format=date_format)
        seconds = ((times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64, na_value=np.nan)
        if np.isfinite(seconds[present]).mean() >= 0.5:
            break
    return seconds


def _split_tokens(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Splits each string at whitespace; returns the row of each token and the tokens."""
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pa.array(values.fillna(""), type=pa.string())))
    rows = pc.list_parent_indices(lists).to_numpy()
    tokens = pc.list_flatten(lists)
    nonempty = pc.not_equal(tokens, "")
    return rows[nonempty.to_numpy(zero_copy_only=False)], tokens.filter(nonempty).to_pandas()


def _row_bounds(rows: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each row's entries in a flat array whose entries are sorted by `rows`."""
    ends = np.cumsum(np.bincount(rows, minlength=num_rows)).astype(np.int64)
    return ends - np.bincount(rows, minlength=num_rows), ends


def _lists(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """An Arrow list array whose row i is values[starts[i]:ends[i]] (one gather, no loop)."""
    lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if max(offsets[-1], len(values)) > np.iinfo(np.int32).max:
        raise InputError(f"{offsets[-1]:,} list entries are too many for one table; lower max_history")
    # int32 is enough for these positions and halves the memory of the gather
    gather = np.repeat((np.asarray(starts, dtype=np.int64) - offsets[:-1]).astype(np.int32), lengths)
    gather += np.arange(offsets[-1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[gather]))


def _strings(values) -> pa.Array:
    if isinstance(values, pd.Series):
        return pa.array(values, type=pa.string())
    return pa.array(np.asarray(values, dtype=object), type=pa.string())


def _dataset(columns: dict | pd.DataFrame) -> datasets.Dataset:
    if isinstance(columns, pd.DataFrame):
        columns = {name: _strings(columns[name].to_numpy()) for name in columns.columns}
    # a fresh random fingerprint: datasets would otherwise hash the whole table (seconds for millions of rows)
    return datasets.Dataset(pa.table(columns), fingerprint=uuid.uuid4().hex[:16])
