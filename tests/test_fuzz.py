"""Fuzzing of the generic loaders: random item tables and interaction logs (random columns, types, delimiters,
encodings, truncation, garbage) in every supported format either load into a `RecData` that holds together or stop
with one `InputError` line naming the file, never with another exception."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recsys_bert.arguments import DataArguments
from recsys_bert.data import RecData, load_data, load_items
from recsys_bert.utils import InputError

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
TEMPLATES = ("{title}", "{title}. {brand}")
# small pools, so that the log's ids often match items and users often have enough interactions
ITEM_IDS = ("i1", "i2", "i3", "i4", "i5")
ODD_IDS = (" i2 ", "1", "1.0", "", "ümlaut", "a,b", 'q"t', "i1\n")
USER_IDS = ("u1", "u2")
ODD_USERS = (" u1", "", "7", "u1\t")
TITLES = ("Alpha", "Beta", "γάμμα", "a, b", 'say "hi"', "two\nlines")
TIMES = ("2020-01-01", "2020-01-01T10:00:00+05:00", "01/02/2020 10:00:00 PM", "soon", "NaN", "-inf", "1e400", " ")
JUNK_LINES = ("[1, 2]", "3", '"text"', "null", "{", '{"title": "\\ud800"}', "{'a': 1}", "", " ", '{"a": NaN}')
GARBAGE = (b"\x00", b"\xff\xfe", b'"', b"\n", b"\r", b"{", b",", b"\t", b";", b"\xe9", b'\\ud800"', b"\xef\xbb\xbf")
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

numbers = st.one_of(st.integers(-(2**70), 2**70), st.integers(-5, 10**10), st.floats())
texts = st.text(max_size=12) | st.text(st.characters(codec="utf-8"), max_size=12)
values = st.one_of(st.none(), st.just(""), texts, numbers, st.booleans())


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 9) -> st.SearchStrategy:
    """`good` `odds` times out of `odds + 1`, else `bad` (shrinks towards `good`)."""
    return st.integers(0, odds).flatmap(lambda k: bad if k == odds else good)


COLUMNS = {  # required column -> its values
    "items": {
        "item_id": mostly(st.sampled_from(ITEM_IDS), st.sampled_from(ODD_IDS) | values),
        "title": mostly(st.sampled_from(TITLES), values),
        "brand": mostly(st.sampled_from(TITLES), values),
    },
    "interactions": {
        "user_id": mostly(st.sampled_from(USER_IDS), st.sampled_from(ODD_USERS) | values),
        "item_id": mostly(st.sampled_from(ITEM_IDS), st.sampled_from(ODD_IDS) | values),
        "timestamp": mostly(st.integers(0, 50), st.sampled_from(TIMES) | numbers | values),
    },
}
ROWS = {"items": (3, 8), "interactions": (5, 20)}


@pytest.fixture(autouse=True, scope="module")
def no_cache_writes():
    """A cache folder that can't be created: each load parses and keeps its data in memory (fast, and the path
    taken when the cache can't be written). `test_cache_round_trip` uses a real cache."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        blocker = Path(folder) / "a-file"
        blocker.write_text("")
        patch.setenv("RECSYS_BERT_CACHE", str(blocker / "cache"))
        yield


@st.composite
def tables(draw, role: str) -> tuple[list[str], list[dict]]:
    """Column names (the required ones, each missing now and then, plus random extras, in random order) and rows."""
    required = COLUMNS[role]
    names = [name for name in required if draw(mostly(st.just(True), st.just(False), odds=39))]
    names += draw(mostly(st.just([]), st.lists(texts | st.sampled_from(list(required)), max_size=2)))
    names = list(dict.fromkeys(draw(st.permutations(names))))
    row = st.fixed_dictionaries({name: required.get(name, values) for name in names})
    low, high = ROWS[role]
    return names, draw(st.lists(row, min_size=low, max_size=high))


def _text(value) -> str:
    return "" if value is None else str(value)


def _write_delimited(draw, names: list[str], rows: list[dict], delimiter: str) -> tuple[bytes, int | None]:
    written_with = draw(mostly(st.just(delimiter), st.sampled_from([";", "|", "\t" if delimiter == "," else ","])))
    out = io.StringIO()
    line_end = draw(st.sampled_from(["\n", "\r\n"]))
    writer = csv.writer(
        out,
        delimiter=written_with,
        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
        lineterminator=line_end,
    )
    header = draw(mostly(st.just(True), st.just(False), odds=19))
    if header:
        writer.writerow(names)
    writer.writerows([[_text(row[name]) for name in names] for row in rows])
    encoding = draw(mostly(st.just("utf-8"), st.sampled_from(["utf-8-sig", "latin-1", "utf-16", "cp1252"])))
    # csv.writer leaves a \r unquoted when lines end with \n; readers (pyarrow, pandas) end the line there
    bare_cr = line_end == "\n" and "\r" in out.getvalue()
    exact = header and written_with == delimiter and encoding.startswith("utf-8") and not bare_cr
    return out.getvalue().encode(encoding, errors="replace"), len(rows) if exact else None


def _write_jsonl(draw, names: list[str], rows: list[dict]) -> tuple[bytes, int]:
    """One line per row, and now and then junk lines: each is a skipped line or a row without an id."""
    lines = [json.dumps(row, ensure_ascii=draw(st.booleans())) for row in rows]
    junk = draw(mostly(st.just([]), st.lists(st.sampled_from(JUNK_LINES), min_size=1, max_size=3), odds=3))
    for line in junk:
        lines.insert(draw(st.integers(0, len(lines))), line)
    return "\n".join(lines).encode("utf-8"), len(rows) + sum(1 for line in junk if line.strip())


ARROW_TYPES = {
    "string": pa.string(),
    "large_string": pa.large_string(),
    "dictionary": pa.dictionary(pa.int32(), pa.string()),
    "binary": pa.binary(),
    "int64": pa.int64(),
    "int8": pa.int8(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("ms"),
    "list": pa.list_(pa.string()),
    "null": pa.null(),
    "date": pa.date32(),
    "duration": pa.duration("s"),
    "struct": pa.struct([("text", pa.string()), ("when", pa.timestamp("s"))]),
}


def _convert(value, kind: str):
    """`value` as a Python value of the Arrow type `kind`, None where it has none."""
    if value is None or kind == "null":
        return None
    if kind in ("string", "large_string", "dictionary"):
        return _text(value)
    if kind == "binary":
        return _text(value).encode("utf-8", errors="replace")
    if kind == "list":
        return [_text(value), "x"]
    if kind == "struct":
        return {"text": _text(value), "when": _convert(value, "timestamp")}
    if kind == "bool":
        return bool(value)
    number = value if isinstance(value, (int, float)) else None
    if number is None:
        try:
            number = float(value)
        except ValueError:
            return None
    if kind == "float64":
        return float(number)
    if isinstance(number, float) and not math.isfinite(number):
        return None
    limit = {"int64": 2**63, "int8": 2**7, "timestamp": 2**33, "date": 2**20, "duration": 2**40}[kind]
    return int(number) if -limit < number < limit else None


def _write_parquet(draw, names: list[str], rows: list[dict]) -> tuple[bytes, int]:
    columns = {}
    for name in names:
        usual = "int64" if name == "timestamp" else "string"
        kind = draw(mostly(st.just(usual), st.sampled_from(sorted(ARROW_TYPES)), odds=3))
        columns[name] = pa.array([_convert(row[name], kind) for row in rows], type=ARROW_TYPES[kind])
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue(), len(rows)


def _damage(draw, content: bytes) -> bytes:
    """Now and then truncated, with a few garbage bytes spliced in, or swapped for random bytes."""
    how = draw(mostly(st.just("none"), st.sampled_from(["truncate", "splice", "random"]), odds=5))
    if how == "truncate" and content:
        return content[: draw(st.integers(0, len(content) - 1))]
    if how == "splice":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(content)))
            content = content[:at] + draw(st.sampled_from(GARBAGE) | st.binary(max_size=4)) + content[at:]
    if how == "random":
        return draw(st.binary(max_size=64))
    return content


@st.composite
def sources(draw) -> dict:
    """Two files in random formats, maybe damaged, the settings, and the rows each file holds (None where damage
    or a wrong delimiter or encoding leaves that open)."""
    case = {"template": draw(st.sampled_from(TEMPLATES))}
    for role in ("items", "interactions"):
        suffix = draw(st.sampled_from(FORMATS))
        names, rows = draw(tables(role))
        if suffix in (".csv", ".tsv"):
            content, num_rows = _write_delimited(draw, names, rows, "," if suffix == ".csv" else "\t")
        elif suffix == ".jsonl":
            content, num_rows = _write_jsonl(draw, names, rows)
        else:
            content, num_rows = _write_parquet(draw, names, rows)
        damaged = _damage(draw, content)
        case[role] = (suffix, damaged)
        case[f"{role}_rows"] = num_rows if damaged == content else None
    case["max_history"] = draw(st.integers(1, 4))
    case["min_history"] = draw(mostly(st.integers(0, 1), st.integers(2, 3), odds=3))
    return case


def _check_error(err: InputError, paths: list[Path]) -> None:
    message = str(err)
    assert len(message.splitlines()) == 1 and message.strip() == message, message
    assert any(str(path) in message for path in paths), message
    # `_parse` turns an exception no check caught into an InputError `from` it: every such case is a loader bug
    assert err.__cause__ is None, f"uncaught {type(err.__cause__).__name__}: {message}"


def _check_data(data: RecData, case: dict, item_path: Path, log_path: Path) -> None:
    num_items = len(data.items)
    item_ids, item_texts = data.items["item_id"], data.items["text"]
    assert num_items > 0 and len(set(item_ids)) == num_items
    assert all(item_id and item_id == item_id.strip() for item_id in item_ids)
    assert all(text and text == text.strip() for text in item_texts)

    valid, test, train = data.valid.to_dict(), data.test.to_dict(), data.train.to_dict()
    assert len(test["user_id"]) > 0 and valid["user_id"] == test["user_id"]
    assert len(set(test["user_id"])) == len(test["user_id"])
    for history, target, full in zip(valid["history"], valid["target"], test["history"]):
        assert full == history + [target] and len(history) >= case["min_history"]
    for table in (valid, test, train):
        assert all(0 <= i < num_items for i in table["target"])
        assert all(0 <= i < num_items for history in table["history"] for i in history)
    assert all(1 <= len(history) <= case["max_history"] for history in train["history"])
    # a user with n interactions: valid history n - 2, training rows n - 3
    assert len(train["user_id"]) == sum(max(len(history) - 1, 0) for history in valid["history"])
    training = [i for history in valid["history"] for i in history]  # every interaction before valid's target
    assert np.array_equal(data.train_item_counts, np.bincount(np.array(training, dtype=np.int64), minlength=num_items))

    skipped_rows = {item_path.name: 0, log_path.name: 0}  # rows and lines, not users
    for reason, count in data.skipped.items():
        name, _, why = reason.partition(": ")
        assert count > 0 and len(reason.splitlines()) == 1 and name in skipped_rows, reason
        skipped_rows[name] += 0 if why.startswith("users with") else count
    if case["items_rows"] is not None:  # every row is an item or skipped
        assert num_items + skipped_rows[item_path.name] == case["items_rows"], data.skipped
    if case["interactions_rows"] is not None and not any("users with fewer" in reason for reason in data.skipped):
        used = sum(len(history) + 1 for history in test["history"])
        assert used + skipped_rows[log_path.name] == case["interactions_rows"], data.skipped


def _write(case: dict, folder: Path) -> list[Path]:
    paths = []
    for role in ("items", "interactions"):
        suffix, content = case[role]
        paths.append(folder / f"{role}{suffix}")
        paths[-1].write_bytes(content)
    return paths


def _load(case: dict, paths: list[Path]) -> RecData | None:
    """Loads the case's files; checks the data, or the InputError (then returns None)."""
    args = DataArguments(
        items=str(paths[0]),
        interactions=str(paths[1]),
        text_template=case["template"],
        min_history=case["min_history"],
    )
    try:
        data = load_data(args, max_history=case["max_history"])
    except InputError as err:
        _check_error(err, paths)
        event(f"InputError: {str(err).split(': ', 1)[-1][:25]}")  # for --hypothesis-show-statistics
        return None
    event("loaded")
    _check_data(data, case, *paths)
    return data


@settings(SETTINGS, max_examples=800)
@given(sources())
def test_random_files_load_or_fail_with_one_line(case):
    with tempfile.TemporaryDirectory() as folder:
        _load(case, _write(case, Path(folder)))


@settings(SETTINGS, max_examples=700)
@given(st.sampled_from(FORMATS), st.sampled_from(["items", "interactions"]), st.binary(max_size=200))
def test_random_bytes(suffix, role, content):
    good = {
        "items": (".csv", b"item_id,title\ni1,Alpha\ni2,Beta\n"),
        "interactions": (".csv", b"user_id,item_id,timestamp\nu,i1,1\nu,i2,2\nu,i1,3\n"),
    }
    case = {**good, role: (suffix, content), "template": "{title}", "max_history": 2, "min_history": 1}
    case["items_rows"] = case["interactions_rows"] = None
    with tempfile.TemporaryDirectory() as folder:
        paths = _write(case, Path(folder))
        _load(case, paths)
        if role == "items":  # load_items has no safety net: any other exception escapes as it is
            try:
                load_items(paths[0], text_template="{title}")
            except InputError as err:
                _check_error(err, paths)


@settings(SETTINGS, max_examples=40)
@given(sources())
def test_cache_round_trip(case):
    """The data parsed in memory is what the cache holds, both when written and when read back."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        paths = _write(case, Path(folder))
        parsed = _load(case, paths)  # the cache can't be written: in memory
        if parsed is None:
            return
        patch.setenv("RECSYS_BERT_CACHE", str(Path(folder) / "cache"))
        for _ in ("written", "read back"):
            cached = _load(case, paths)
            assert cached.items.cache_files and cached.skipped == parsed.skipped
            for table in ("items", "train", "valid", "test"):
                assert getattr(cached, table).to_dict() == getattr(parsed, table).to_dict()
