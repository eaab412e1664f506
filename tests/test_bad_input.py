"""Bad input, one case per kind, in each file format where it matters: a file that can't be used raises one
`InputError` line naming the file, the line and the column; a few bad rows are skipped, counted in
`RecData.skipped`, and the load goes on. test_data.py holds the first cases and the helpers used here, test_fuzz.py
the random ones, test_config.py the YAML ones."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_bert.arguments import DataArguments, parse_args
from recsys_bert.cli import run_main
from recsys_bert.data import load_data
from recsys_bert.utils import InputError
from tests import test_data
from tests.test_data import _plain, _write

generic_frames = test_data.generic_frames  # a fixture: the movies and first 600 ratings of ml-latest-small

FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
TEXT_FORMATS = (".csv", ".tsv", ".jsonl")
HOLDER = {".csv": "the header has", ".tsv": "the header has", ".jsonl": "the records have", ".parquet": "the file has"}
LINE_1 = {".csv": ", line 1", ".tsv": ", line 1", ".jsonl": "", ".parquet": ""}


def _args(items: Path, log: Path, **kwargs) -> DataArguments:
    """Arguments for files written from `generic_frames` (ml-latest-small under other column names)."""
    settings = {"item_id_column": "product", "user_id_column": "customer", "timestamp_column": "when"}
    return DataArguments(
        items=str(items), interactions=str(log), text_template="{name} | {kind} | {year}", **{**settings, **kwargs}
    )


def _simple_args(items: Path, log: Path, **kwargs) -> DataArguments:
    """Arguments for the small item_id/title + user_id/item_id/timestamp tables below."""
    return DataArguments(items=str(items), interactions=str(log), text_template="{title}", **kwargs)


def _error(args, max_history: int = 10) -> str:
    with pytest.raises(InputError) as error:
        load_data(args, max_history=max_history)
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def _items(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "title"])


def _log(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


ITEMS = _items([("i1", "Alpha"), ("i2", "Beta"), ("i3", "Gamma")])
LOG = _log([("u1", "i1", 1), ("u1", "i2", 2), ("u1", "i3", 3), ("u1", "i1", 4)])


# ---------------------------------------------------------------- unusable files


@pytest.mark.parametrize("suffix", FORMATS)
def test_missing_column(generic_frames, tmp_path, suffix):
    items, log = generic_frames
    items_path = _write(items.drop(columns="kind"), tmp_path / f"items{suffix}")
    log_path = _write(log, tmp_path / f"log{suffix}")
    assert _error(_args(items_path, log_path)) == (
        f"{items_path}{LINE_1[suffix]}, column 'kind': missing, named in text_template "
        f"({HOLDER[suffix]}: product, name, year)"
    )
    _write(items, items_path)
    _write(log.drop(columns="when"), log_path)
    assert _error(_args(items_path, log_path)) == (
        f"{log_path}{LINE_1[suffix]}, column 'when': missing ({HOLDER[suffix]}: customer, product, rating)"
    )


@pytest.mark.parametrize(
    ("suffix", "separator", "header", "found"),
    [
        (".csv", ";", "product;name;kind;year", "no comma but a semicolon"),
        (".csv", "\t", "'product\\tname\\tkind\\tyear'", "no comma but a tab"),
        (".tsv", ",", "product,name,kind,year", "no tab but a comma"),
    ],
)
def test_wrong_delimiter(generic_frames, tmp_path, suffix, separator, header, found):
    items, log = generic_frames
    items_path = tmp_path / f"items{suffix}"
    items.to_csv(items_path, sep=separator, index=False)
    log_path = _write(log, tmp_path / "log.csv")
    assert _error(_args(items_path, log_path)) == (
        f"{items_path}, line 1, column 'product': missing (the header has: {header}); the line has {found}: "
        ".csv files must be comma-separated, .tsv files tab-separated"
    )


@pytest.mark.parametrize("suffix", TEXT_FORMATS)
def test_latin1_file_names_line_byte_and_column(generic_frames, tmp_path, suffix):
    items, log = generic_frames
    log_path = _write(log, tmp_path / "log.csv")
    items_path = tmp_path / f"items{suffix}"
    if suffix == ".jsonl":
        items_path.write_bytes(items.to_json(orient="records", lines=True, force_ascii=False).encode("latin-1"))
    else:
        items.to_csv(items_path, sep="," if suffix == ".csv" else "\t", index=False, encoding="latin-1")
    row = int(np.flatnonzero(~items["name"].map(str.isascii))[0])  # "City of Lost Children, The (Cité des ..."
    line = row + (1 if suffix == ".jsonl" else 2)
    content = items_path.read_bytes().split(b"\n")[line - 1]
    byte = next(i for i, value in enumerate(content) if value >= 0x80)
    assert content[byte] == "é".encode("latin-1")[0]
    column = "" if suffix == ".jsonl" else ", column 'name'"
    assert _error(_args(items_path, log_path)) == (
        f"{items_path}, line {line}, byte {byte + 1}: not UTF-8 text (0xe9{column}); save the file as UTF-8"
    )
    items_path.write_bytes(items_path.read_bytes().decode("latin-1").encode("utf-16"))
    assert _error(_args(items_path, log_path)) == f"{items_path}: UTF-16 text; save the file as UTF-8"


@pytest.mark.parametrize("suffix", (".csv", ".tsv"))
def test_malformed_rows_are_skipped_unless_most_are(generic_frames, tmp_path, suffix, caplog):
    items, log = generic_frames
    separator = "," if suffix == ".csv" else "\t"
    items_path, log_path = _write(items, tmp_path / f"items{suffix}"), _write(log, tmp_path / f"log{suffix}")
    lines = log_path.read_text().splitlines()
    lines[6] += f"{separator}extra"  # line 7: a field too many
    log_path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="recsys_bert.data"):
        data = load_data(_args(items_path, log_path), max_history=10)
    assert data.skipped == {f"log{suffix}: malformed lines (wrong number of fields, expected 4)": 1}
    assert f"{log_path}, line 7: 5 fields, expected 4; skipped (malformed lines in all: 1)" in caplog.text
    # the header written with the right delimiter, the rows with another one
    log_path.write_text("\n".join([lines[0]] + [line.replace(separator, ";") for line in lines[1:]]) + "\n")
    assert _error(_args(items_path, log_path)) == (
        f"{log_path}, line 2: 1 field, expected 4; 600 of 600 rows are malformed, so the file can't be read"
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("items.tsv", b"", "empty file"),
        ("items.csv", b"\xef\xbb\xbf \r\n", "empty file"),  # a BOM and blanks
        ("items.tsv", b"item_id\ttitle\r\n\r\n", "no usable rows (only a header line)"),
        ("items.jsonl", b"", "empty file"),
        ("items.jsonl", b"\n  \n\r\n", "empty file"),
        ("items.parquet", b"", "empty file"),
        ("items.parquet", ITEMS.head(0), "no usable rows"),
        ("log.tsv", LOG.head(0), "no usable rows (only a header line)"),
        ("log.parquet", LOG.head(0), "no usable rows"),
    ],
)
def test_empty_file(tmp_path, name, content, message):
    paths = {"items": _write(ITEMS, tmp_path / "items.csv"), "log": _write(LOG, tmp_path / "log.csv")}
    paths[name.split(".")[0]] = path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write(content, path)
    assert _error(_simple_args(paths["items"], paths["log"])) == f"{path}: {message}"


# ---------------------------------------------------------------- JSON Lines


def test_malformed_json_line_is_skipped_and_named(generic_frames, tmp_path, caplog):
    items, log = generic_frames
    items_path = _write(items, tmp_path / "items.jsonl")
    log_path = _write(log, tmp_path / "log.jsonl")
    reference = load_data(_args(items_path, log_path), max_history=10)
    lines = log_path.read_text().splitlines()
    lines.insert(4, lines[4][:25])  # a truncated copy of line 5 becomes line 5
    log_path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="recsys_bert.data"):
        data = load_data(_args(items_path, log_path), max_history=10)
    assert data.skipped == {"log.jsonl: malformed lines (not a JSON object)": 1}
    assert {**_plain(data), "skipped": {}} == _plain(reference)
    assert (
        f"{log_path}, line 5: not JSON (Expecting ',' delimiter); skipped (malformed lines in all: 1)" in caplog.text
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # a pretty-printed JSON array saved as .jsonl
        (
            json.dumps([{"item_id": "i1", "title": "A"}], indent=1),
            "line 1: not JSON (Expecting value); is it JSON Lines?",
        ),
        ('\n\n{"item_id": "i1", "title": \n', "line 3: not JSON (Expecting value); is it JSON Lines?"),
        ('["i1", "A"]\n', "line 1: not a JSON object"),
        (
            '{"item_id": "i1", "title": "A"}\n{"item_id": "i2", "title": \'B\'}\n[]\n{"item_id": "i3"\n',
            "line 2: not JSON (Expecting value); 3 of 4 lines are not JSON objects, so the file can't be read as "
            "JSON Lines",
        ),
    ],
    ids=["json-array", "first-line-after-blanks", "array-line", "mostly-malformed"],
)
def test_unreadable_json_lines(tmp_path, content, message):
    items_path = tmp_path / "items.jsonl"
    items_path.write_text(content)
    assert _error(_simple_args(items_path, _write(LOG, tmp_path / "log.csv"))) == f"{items_path}, {message}"


def test_lone_surrogate_in_json_becomes_a_replacement_character(tmp_path):
    items_path = tmp_path / "items.jsonl"
    items_path.write_text('{"item_id": "i1", "title": "Al\\ud800pha"}\n{"item_id": "i2", "title": "Beta"}\n')
    data = load_data(_simple_args(items_path, _write(LOG, tmp_path / "log.csv")), max_history=10)
    assert data.items["text"] == ["Al\ufffdpha", "Beta"]


def test_cli_prints_the_message_on_one_line_and_exits_2(tmp_path, capsys):
    """What train.py does with an InputError (test_training.py runs it end to end on a missing column)."""
    items_path = tmp_path / "items.jsonl"
    items_path.write_text('{"item_id": "i1", "title": "A"}\n{"item_id": "i2"\n{"item_id": "i3"\n')
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: load_data(_simple_args(items_path, _write(LOG, tmp_path / "log.csv")), max_history=10))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: {items_path}, line 2: not JSON (Expecting ',' delimiter); 2 of 3 lines are not JSON objects, so the "
        "file can't be read as JSON Lines\n"
    )


# ---------------------------------------------------------------- bad rows: skipped and counted


@pytest.mark.parametrize("suffix", FORMATS)
def test_duplicate_ids_keep_the_first_row_with_text(tmp_path, suffix):
    items = _items([("i1", None), ("i1", "First"), ("i2", "Beta"), ("i1", "Second"), (" i2 ", "Beta again"),
                    ("i3", "Gamma")])  # fmt: skip
    data = load_data(_simple_args(_write(items, tmp_path / f"items{suffix}"), _write(LOG, tmp_path / "log.csv")), 10)
    assert data.items.to_dict() == {"item_id": ["i1", "i2", "i3"], "text": ["First", "Beta", "Gamma"]}
    assert data.skipped == {f"items{suffix}: duplicate item_id (kept the first)": 2, f"items{suffix}: empty text": 1}


@pytest.mark.parametrize("suffix", FORMATS)
def test_items_with_empty_text(tmp_path, suffix):
    items = pd.DataFrame(
        {"item_id": ["i1", "i2", "i3", "i4", "i5"], "title": ["Alpha", " \t ", None, "", "Gamma"],
         "brand": ["Acme", None, "", " ", None]}
    )  # fmt: skip
    log = _log([("u1", "i1", 1), ("u1", "i5", 2), ("u1", "i1", 3)])
    items_path, log_path = _write(items, tmp_path / f"items{suffix}"), _write(log, tmp_path / "log.csv")
    args = DataArguments(items=str(items_path), interactions=str(log_path), text_template="{title}. {brand}")
    data = load_data(args, max_history=10)
    assert data.items.to_dict() == {"item_id": ["i1", "i5"], "text": ["Alpha. Acme", "Gamma"]}
    assert data.skipped == {f"items{suffix}: empty text": 3}
    _write(items.iloc[1:4], items_path)
    assert _error(args) == f"{items_path}: no usable rows (no item with an id and a non-empty text)"


@pytest.mark.parametrize("suffix", (".csv", ".parquet"))
def test_users_whose_every_item_is_unknown(tmp_path, suffix):
    items_path = _write(ITEMS, tmp_path / "items.csv")
    log = pd.concat([LOG, _log([("u2", "x1", 1), ("u2", "x2", 2), ("u2", "I1", 3)])])
    log_path = _write(log, tmp_path / f"log{suffix}")
    data = load_data(_simple_args(items_path, log_path), max_history=10)
    assert data.test["user_id"] == ["u1"]
    assert data.skipped == {f"log{suffix}: unknown item_id": 3, f"log{suffix}: users with no usable interaction": 1}
    _write(log.iloc[4:], log_path)
    assert _error(_simple_args(items_path, log_path)) == (
        f"{log_path}: no usable rows (none of its item_id values is in the item table: e.g. x1; the item table has "
        "e.g. i1, i2, i3)"
    )


def test_float_item_ids_of_a_parquet_log_match_the_items(tmp_path):
    """A missing id makes a Parquet id column float (1.0); whole numbers are read as "1"."""
    items_path = _write(_items([(1, "Alpha"), (2, "Beta"), (3, "Gamma")]), tmp_path / "items.csv")
    log = _log([("u1", 1.0, 1), ("u1", 2.0, 2), ("u1", np.nan, 3), ("u1", 3.0, 4), ("u1", 1.0, 5)])
    data = load_data(_simple_args(items_path, _write(log, tmp_path / "log.parquet")), max_history=10)
    assert data.test.to_dict() == {"user_id": ["u1"], "history": [[0, 1, 2]], "target": [0]}
    assert data.skipped == {"log.parquet: missing user_id or item_id": 1}


@pytest.mark.parametrize(("min_history", "users"), [(0, ["u1", "u2", "u3"]), (1, ["u1", "u2"]), (3, ["u1"])])
def test_users_with_too_little_history(tmp_path, min_history, users):
    counts = {"u1": 5, "u2": 3, "u3": 2, "u4": 1}
    log = _log([(user, f"i{t % 3 + 1}", t) for user, n in counts.items() for t in range(n)])
    paths = _write(ITEMS, tmp_path / "items.csv"), _write(log, tmp_path / "log.csv")
    data = load_data(_simple_args(*paths, min_history=min_history), max_history=10)
    assert data.test["user_id"] == users
    assert all(len(history) == counts[user] - 2 for user, history in zip(users, data.valid["history"]))
    needed = min_history + 2
    assert data.skipped == {f"log.csv: users with fewer than {needed} interactions": 4 - len(users)}
    assert _error(_simple_args(*paths, min_history=4)) == (
        f"{paths[1]}: no usable rows (no user has the 6 interactions needed; skipped users with fewer than 6 "
        "interactions: 4)"
    )


@pytest.mark.parametrize("suffix", FORMATS)
def test_nan_infinite_and_negative_timestamps_are_skipped(tmp_path, suffix):
    times = [1.0, np.nan, -5.0, np.inf, 2.0, 1e300, -np.inf, 3.0]
    log = _log([("u1", f"i{t % 3 + 1}", time) for t, time in enumerate(times)])
    data = load_data(_simple_args(_write(ITEMS, tmp_path / "items.csv"), _write(log, tmp_path / f"log{suffix}")), 10)
    # kept by time: 1.0 (i1), 2.0 (i2), 3.0 (i2), 1e300 (i3)
    assert data.test.to_dict() == {"user_id": ["u1"], "history": [[0, 1, 1]], "target": [2]}
    assert data.skipped == {  # NaN, inf and -inf (null in .jsonl); -5
        f"log{suffix}: missing or unparseable timestamp": 3,
        f"log{suffix}: negative timestamp": 1,
    }


@pytest.mark.parametrize("suffix", FORMATS)
def test_megabyte_item_text_loads_whole(tmp_path, suffix):
    text = " ".join(f"word{i % 1000}" for i in range(130_000))  # 1 MB
    items = _items([("i1", "Alpha"), ("i2", text), ("i3", "Gamma")])
    start = time.perf_counter()
    data = load_data(_simple_args(_write(items, tmp_path / f"items{suffix}"), _write(LOG, tmp_path / "log.csv")), 10)
    assert time.perf_counter() - start < 10  # linear: well under a second
    assert len(text) > 1_000_000 and data.items["text"][1] == text and data.skipped == {}
    # cut only by tokenize_items (max_item_tokens), as test_data.py's test_tokenize_items checks


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eval_ks: 5\n", "line 1, field 'eval_ks': 5 is not of type list[int]"),
        ("max_steps: 3\nitems: 7\n", "line 2, field 'items': 7 is not of type str"),
        ("learning_rate: fast\n", "line 1, field 'learning_rate': 'fast' is not of type float"),
        ("max_steps:\n", "line 1, field 'max_steps': None is not of type int"),
    ],
    ids=["list", "str", "float", "null"],
)
def test_config_wrong_types(tmp_path, text, message):
    """test_config.py has the unknown key, invalid YAML and the int and bool types; these are the other types."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(InputError) as error:
        parse_args(["--config", str(config)])
    assert str(error.value).startswith(f"{config}, {message}")


def test_config_value_outside_the_choices(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("pooling: max\n")
    with pytest.raises(InputError, match="line 1, field 'pooling'"):
        parse_args(["--config", str(config)])
