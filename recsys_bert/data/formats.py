"""The four sources (`DataArguments.data_format`) and how each becomes a `RecData`:

- `generic`: an item table and an interaction log (.csv, .tsv, .jsonl or .parquet), split leave-one-out by time, or
  by global time (`valid_since`, `test_since`).
- `movielens`: an ml-latest-small style folder (movies.csv, ratings.csv, tags.csv), split like `generic`.
- `atomic`: RecBole/UniSRec atomic files with their own split, item indices kept as in the files.
- `mind`: MIND news.tsv + behaviors.tsv, impressions split by time.

An item id on several rows keeps its first row with a non-empty text.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_bert.arguments import DataArguments
from recsys_bert.data.readers import (
    SUPPORTED_EXTENSIONS,
    column_names,
    count_skipped,
    is_index,
    lookup,
    read_delimited,
    read_table,
    show_names,
    split_tokens,
    strings,
    to_item_codes,
    to_number,
)
from recsys_bert.data.recdata import RecData
from recsys_bert.data.splits import (
    arrow_dataset,
    list_array,
    parse_time,
    row_bounds,
    split_log,
    training_item_counts,
)
from recsys_bert.utils import InputError, one_line

logger = logging.getLogger(__name__)

MOVIELENS_TEMPLATE = "{title}. {genres}. {tags}"
MIND_TEMPLATE = "{title}. {category}, {subcategory}. {abstract}"
MIND_NEWS_COLUMNS = tuple("news_id category subcategory title abstract url title_entities abstract_entities".split())
MIND_BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
ATOMIC_PARTS = ("text", "item2index", "user2index", "train.inter", "valid.inter", "test.inter")


def check_settings(data_args: DataArguments, max_history: int) -> None:
    if max_history < 1:
        raise InputError(f"max_history must be at least 1, got {max_history}")
    if data_args.min_history < 0:
        raise InputError(f"min_history must be 0 or more, got {data_args.min_history}")
    timed = data_args.data_format in ("generic", "movielens")  # logs with a time of their own per interaction
    if (data_args.valid_since is None) != (data_args.test_since is None):
        raise InputError("valid_since and test_since: give both (a split by global time) or neither (leave-one-out)")
    if data_args.valid_since is not None:
        if not timed:
            raise InputError(f"valid_since, test_since: data_format '{data_args.data_format}' keeps its own split")
        if parse_time(data_args.valid_since, "valid_since") > parse_time(data_args.test_since, "test_since"):
            raise InputError(f"valid_since ({data_args.valid_since}) is after test_since ({data_args.test_since})")
    if data_args.train_since is not None:
        parse_time(data_args.train_since, "train_since")
        if data_args.data_format == "atomic":
            raise InputError("train_since: atomic files have no timestamps")
    if not 0 <= data_args.cold_item_fraction < 1:
        raise InputError(f"cold_item_fraction must be at least 0 and below 1, got {data_args.cold_item_fraction}")
    if data_args.cold_item_fraction and data_args.data_format == "mind":
        raise InputError("cold_item_fraction: MIND's impressions have no single target to hold out")
    if not 0 <= data_args.replay_fraction <= 1:
        raise InputError(f"replay_fraction must be between 0 and 1, got {data_args.replay_fraction}")
    if data_args.replay_fraction and data_args.train_since is None:
        raise InputError("replay_fraction: set train_since too (the replay is a share of the targets before it)")
    if data_args.data_format == "mind":
        valid_fraction, test_fraction = data_args.mind_valid_fraction, data_args.mind_test_fraction
        if not (0 < valid_fraction and 0 < test_fraction and valid_fraction + test_fraction < 1):
            raise InputError(
                f"mind_valid_fraction ({valid_fraction}) and mind_test_fraction ({test_fraction}) must be above 0 "
                "and add up to less than 1 (the rest is train)"
            )


def source_files(data_args: DataArguments) -> dict[str, Path]:
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


def parse(data_args: DataArguments, files: dict[str, Path], max_history: int) -> RecData:
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
        raise InputError(f"{sources}: could not be read ({type(err).__name__}: {one_line(err)})") from err
    items, train, valid, test = tables
    counts = training_item_counts(train, valid, len(items))
    return RecData(items, train, valid, test, train_item_counts=counts, skipped=skipped, name=name)


def default_template(path: str | Path, item_id_column: str = "item_id") -> str:
    """The text template where none is given: every column of the item table but the id, in file order, joined by
    ". " (an item table with `item_id, title, genres` gives "{title}. {genres}")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    names = column_names(path)
    fields = [name for name in names if name != item_id_column and name.strip() and not set(name) & set("{}:!")]
    if not fields:
        raise InputError(
            f"{path}: no column for the item text besides {item_id_column!r} (the file has: {show_names(names)}); "
            "add one, or set text_template"
        )
    return ". ".join(f"{{{name}}}" for name in fields)


def load_items(
    path: str | Path,
    item_id_column: str = "item_id",
    text_template: str | None = None,
    skipped: dict | None = None,
) -> pd.DataFrame:
    """An item table alone (.csv, .tsv, .jsonl or .parquet): `item_id` and `text` (from `text_template`, by default
    `default_template`'s) per item, in file order; rows without an id or text, and repeated ids, are skipped and
    counted in `skipped`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    skipped = {} if skipped is None else skipped
    text_template = text_template or default_template(path, item_id_column)
    fields = _template_fields(text_template)
    why = {field: "named in text_template" for field in fields}
    table = read_table(path, [item_id_column, *fields], skipped, why=why)
    texts = _render_template(table, text_template)
    return _item_table(table[item_id_column], texts, path, item_id_column, skipped)


def _load_generic(data_args: DataArguments, files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    item_column = data_args.item_id_column
    items = load_items(files["items"], item_column, data_args.text_template, skipped)
    columns = (data_args.user_id_column, item_column, data_args.timestamp_column)
    log = read_table(files["interactions"], list(columns), skipped)
    splits = split_log(log, items, files["interactions"], columns, max_history, data_args.min_history, skipped,
                       _cuts(data_args))  # fmt: skip
    return (arrow_dataset(items), *splits)


def _cuts(data_args: DataArguments) -> tuple[float, float] | None:
    """(valid_since, test_since) in Unix seconds for a split by global time; None for leave-one-out."""
    if data_args.valid_since is None:
        return None
    return parse_time(data_args.valid_since, "valid_since"), parse_time(data_args.test_since, "test_since")


def _load_movielens(data_args: DataArguments, files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    movies = read_table(files["items"], ["movieId", "title", "genres"], skipped)
    movies["genres"] = (
        movies["genres"].str.strip().replace("(no genres listed)", "").str.replace("|", ", ", regex=False)
    )
    movie_ids = movies["movieId"].str.strip()
    tags_by_movie = pd.Series(dtype="str")
    if "tags" in files:
        tags = read_table(files["tags"], ["movieId", "tag"], skipped)
        tags = pd.DataFrame({"movieId": tags["movieId"].str.strip(), "tag": tags["tag"].str.strip()})
        tags = tags[tags["tag"] != ""].drop_duplicates()
        unknown = ~tags["movieId"].isin(movie_ids)
        count_skipped(skipped, f"{files['tags'].name}: unknown movieId", unknown.sum())
        tags_by_movie = tags[~unknown].groupby("movieId", sort=False)["tag"].agg(", ".join)
    movies["tags"] = movie_ids.map(tags_by_movie).fillna("")
    items = _item_table(
        movies["movieId"], _render_template(movies, MOVIELENS_TEMPLATE), files["items"], "movieId", skipped
    )
    columns = ("userId", "movieId", "timestamp")
    ratings = read_table(files["interactions"], list(columns), skipped)
    splits = split_log(ratings, items, files["interactions"], columns, max_history, data_args.min_history, skipped,
                       _cuts(data_args))  # fmt: skip
    return (arrow_dataset(items), *splits)


def _load_atomic(files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    """RecBole/UniSRec atomic files: the files' item index stays the internal index (when every item has text)."""
    text_path, item_path = files["text"], files["item2index"]
    texts = read_delimited(text_path, ["item_id", "text"], skipped, "\t", quoted=False, typed_header=True)
    with_text = _item_table(texts["item_id"], texts["text"].str.strip(), text_path, "item_id", skipped)
    asin_by_index = _read_index_file(item_path, skipped)
    text_row = lookup(with_text["item_id"], asin_by_index.to_numpy())
    has_text = text_row >= 0
    count_skipped(skipped, f"{item_path.name}: items without text in {text_path.name} (dropped)", (~has_text).sum())
    count_skipped(
        skipped, f"{text_path.name}: items not in {item_path.name} (unused)", len(with_text) - has_text.sum()
    )
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
    return (arrow_dataset(items), *splits)


def _read_index_file(path: Path, skipped: dict[str, int]) -> pd.Series:
    """A headerless `id<TAB>index` file as a Series index -> id, sorted by index."""
    table = read_delimited(path, ["id", "index"], skipped, "\t", quoted=False, names=("id", "index"))
    ids, index = table["id"].str.strip(), to_number(table["index"])
    bad = (ids == "").to_numpy() | ~is_index(index)
    count_skipped(skipped, f"{path.name}: missing id or bad index", bad.sum())
    ids, index = ids[~bad].to_numpy(), index[~bad].astype(np.int64)
    duplicate = pd.Series(ids).duplicated().to_numpy() | pd.Series(index).duplicated().to_numpy()
    count_skipped(skipped, f"{path.name}: duplicate id or index (kept the first)", duplicate.sum())
    if duplicate.all():
        raise InputError(f"{path}: no usable rows")
    return pd.Series(ids[~duplicate], index=index[~duplicate]).sort_index()


def _read_atomic_split(
    path: Path, remap: np.ndarray, users: pd.Series, max_history: int | None, skipped: dict[str, int]
) -> datasets.Dataset:
    """One *.inter file: user index, history item indices, target index; histories cut when `max_history`."""
    columns = ["user_id", "item_id_list", "item_id"]
    table = read_delimited(path, columns, skipped, "\t", quoted=False, typed_header=True)
    user_pos = pd.Index(users.index).get_indexer(to_number(table["user_id"]))
    targets = to_item_codes(table["item_id"], remap)
    rows, tokens = split_tokens(table["item_id_list"])
    history = to_item_codes(tokens, remap)
    count_skipped(
        skipped, f"{path.name}: unknown item index in item_id_list (dropped from the history)", (history < 0).sum()
    )
    bad_user = user_pos < 0
    count_skipped(skipped, f"{path.name}: unknown user_id (row skipped)", bad_user.sum())
    bad_target = ~bad_user & (targets < 0)
    count_skipped(skipped, f"{path.name}: unknown item_id (row skipped)", bad_target.sum())
    keep = np.flatnonzero(~(bad_user | bad_target))
    if not len(keep):
        raise InputError(f"{path}: no usable rows")
    starts, ends = row_bounds(rows[history >= 0], len(table))
    starts, ends = starts[keep], ends[keep]
    if max_history is not None:
        starts = np.maximum(starts, ends - max_history)
    columns = {
        "user_id": strings(users.to_numpy()).take(user_pos[keep]),
        "history": list_array(history[history >= 0].astype(np.int32), starts, ends),
        "target": pa.array(targets[keep].astype(np.int32)),
    }
    return arrow_dataset(columns)


def _load_mind(data_args: DataArguments, files: dict[str, Path], max_history: int, skipped: dict[str, int]):
    """MIND: items = news with text; impressions split by time into train (one row per click) and valid/test."""
    news_path, behaviors_path = files["items"], files["interactions"]
    news_columns = ["news_id", "category", "subcategory", "title", "abstract"]
    news = read_delimited(news_path, news_columns, skipped, "\t", quoted=False, names=MIND_NEWS_COLUMNS)
    items = _item_table(news["news_id"], _render_template(news, MIND_TEMPLATE), news_path, "news_id", skipped)

    name = behaviors_path.name
    log = read_delimited(
        behaviors_path, list(MIND_BEHAVIOR_COLUMNS), skipped, "\t", quoted=False, names=MIND_BEHAVIOR_COLUMNS
    )
    impression_ids, users = log["impression_id"].str.strip(), log["user_id"].str.strip()
    missing = ((impression_ids == "") | (users == "")).to_numpy()
    count_skipped(skipped, f"{name}: missing impression_id or user_id", missing.sum())
    times = pd.to_datetime(log["time"].str.strip(), format=MIND_TIME_FORMAT, errors="coerce").to_numpy()
    bad_time = ~missing & pd.isna(times)
    count_skipped(skipped, f"{name}: missing or unparseable time", bad_time.sum())
    keep = np.flatnonzero(~(missing | bad_time))
    keep = keep[np.argsort(times[keep], kind="stable")]  # oldest first, ties in file order
    seconds = (times[keep] - np.datetime64(0, "s")) / np.timedelta64(1, "s")  # (impressions,) Unix seconds
    log, impression_ids, users = (
        log.iloc[keep],
        strings(impression_ids.to_numpy()[keep]),
        strings(users.to_numpy()[keep]),
    )
    n = len(keep)
    if not n:
        raise InputError(f"{behaviors_path}: no usable rows")
    n_test, n_valid = round(n * data_args.mind_test_fraction), round(n * data_args.mind_valid_fraction)
    split = np.zeros(n, dtype=np.int8)
    split[n - n_test - n_valid :] = 1
    split[n - n_test :] = 2

    history_rows, history_ids = split_tokens(log["history"])
    impression_rows, entries = split_tokens(log["impressions"])
    parts = entries.str.rpartition("-")
    malformed = ((parts[1] == "") | ~parts[2].isin(["0", "1"]) | (parts[0] == "")).to_numpy()
    count_skipped(skipped, f"{name}: malformed impression entries (not 'NEWSID-0' or 'NEWSID-1')", malformed.sum())
    impression_rows, candidate_ids = impression_rows[~malformed], parts[0][~malformed]
    labels = (parts[2][~malformed] == "1").to_numpy().astype(np.int8)
    history_codes, candidate_codes = lookup(items["item_id"], history_ids), lookup(items["item_id"], candidate_ids)
    unknown_ids = pd.concat([history_ids[history_codes < 0], candidate_ids[candidate_codes < 0]])
    count_skipped(skipped, f"{name}: news ids without text (distinct ids)", unknown_ids.nunique())
    count_skipped(skipped, f"{name}: news ids without text (dropped from histories)", (history_codes < 0).sum())
    count_skipped(skipped, f"{name}: news ids without text (dropped from impressions)", (candidate_codes < 0).sum())
    known = history_codes >= 0
    history_rows, history_codes = history_rows[known], history_codes[known].astype(np.int32)
    known = candidate_codes >= 0
    impression_rows, labels = impression_rows[known], labels[known]
    candidate_codes = candidate_codes[known].astype(np.int32)
    history_starts, history_ends = row_bounds(history_rows, n)
    candidate_starts, candidate_ends = row_bounds(impression_rows, n)
    clicks = np.bincount(impression_rows, weights=labels, minlength=n).astype(np.int64)
    non_clicks = (candidate_ends - candidate_starts) - clicks

    no_click = (split == 0) & (clicks == 0)
    count_skipped(skipped, f"{name}: train impressions without a click (no training rows)", no_click.sum())
    is_click = labels == 1
    train_click = is_click & (split[impression_rows] == 0)
    click_rows = impression_rows[train_click]
    negative_starts, negative_ends = row_bounds(impression_rows[~is_click], n)
    train = {
        "user_id": users.take(click_rows),
        "history": list_array(
            history_codes,
            np.maximum(history_starts, history_ends - max_history)[click_rows],
            history_ends[click_rows],
        ),
        "target": pa.array(candidate_codes[train_click]),
        "negatives": list_array(candidate_codes[~is_click], negative_starts[click_rows], negative_ends[click_rows]),
        "timestamp": pa.array(seconds[click_rows]),
    }
    if not len(click_rows):
        raise InputError(f"{behaviors_path}: no usable rows (no click in the train impressions)")
    evaluation = []
    for split_id, split_name in ((1, "valid"), (2, "test")):
        in_split = split == split_id
        usable = in_split & (clicks > 0) & (non_clicks > 0)
        dropped = in_split & ~usable
        count_skipped(skipped, f"{name}: {split_name} impressions without both a click and a non-click", dropped.sum())
        rows = np.flatnonzero(usable)
        if not len(rows):
            raise InputError(f"{behaviors_path}: no usable {split_name} impressions (with a click and a non-click)")
        evaluation.append(
            arrow_dataset(
                {
                    "impression_id": impression_ids.take(rows),
                    "user_id": users.take(rows),
                    "history": list_array(history_codes, history_starts[rows], history_ends[rows]),
                    "candidates": list_array(candidate_codes, candidate_starts[rows], candidate_ends[rows]),
                    "labels": list_array(labels, candidate_starts[rows], candidate_ends[rows]),
                }
            )
        )
    return (arrow_dataset(items), arrow_dataset(train), *evaluation)


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
    count_skipped(skipped, f"{path.name}: missing {id_column}", missing.sum())
    count_skipped(skipped, f"{path.name}: duplicate {id_column} (kept the first)", duplicate.sum())
    count_skipped(skipped, f"{path.name}: empty text", empty.sum())
    keep = ~(missing | duplicate | empty)
    if not keep.any():
        raise InputError(f"{path}: no usable rows (no item with an id and a non-empty text)")
    return pd.DataFrame({"item_id": ids.to_numpy()[keep], "text": texts.to_numpy()[keep]})
