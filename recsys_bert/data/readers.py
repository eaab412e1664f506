"""Reading item tables and interaction logs robustly: .csv, .tsv, .jsonl and .parquet files read as text columns.

A few bad rows in a good file are skipped and counted (`skipped`: reason -> count); a file that can't be used at all,
or whose malformed lines outnumber the good ones, raises `InputError` with one line naming the file, the line and
the column. Also the vectorised conversions of those text columns (numbers, times, ids) that the formats share.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from recsys_bert.utils import InputError, one_line

logger = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_JSON_NULL_LINE = re.compile(rb"(?m)^[ \t\r]*null[ \t\r]*$")
_SURROGATES = re.compile("[\ud800-\udfff]")


def read_table(
    path: Path, columns: list[str], skipped: dict[str, int], why: dict[str, str] | None = None
) -> pd.DataFrame:
    """Reads `columns` of a .csv, .tsv, .jsonl or .parquet file as strings ("" where a value is missing)."""
    columns = list(dict.fromkeys(columns))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return read_delimited(path, columns, skipped, "," if suffix == ".csv" else "\t", why=why)
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


def show_names(names, limit: int = 20) -> str:
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
    return InputError(f"{where}, column '{column}': missing{reason} ({holder}: {show_names(present)}){hint}")


def _wrong_delimiter(first_line: str, header: list[str], delimiter: str) -> str:
    """A hint when a one-field header holds another delimiter, e.g. a .csv file written with ';'."""
    found = [name for sep, name in DELIMITER_NAMES.items() if sep != delimiter and sep in first_line]
    if len(header) != 1 or not found:
        return ""
    return (
        f"; the line has no {DELIMITER_NAMES[delimiter]} but a {found[0]}: "
        ".csv files must be comma-separated, .tsv files tab-separated"
    )


def read_delimited(
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
            raise InputError(f"{path}, line 1: not a readable header ({one_line(err)})") from None
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
            f"{path}: not a readable {'CSV' if delimiter == ',' else 'TSV'} file ({one_line(err)})"
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
    count_skipped(
        skipped, f"{path.name}: malformed lines (wrong number of fields, expected {len(header)})", len(malformed)
    )
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
    count_skipped(skipped, f"{path.name}: malformed lines (not a JSON object)", bad)
    return present, {column: pd.Series(value, dtype="str") for column, value in values.items()}


def _first_json_object(path: Path, data: bytes) -> dict:
    """The first record of a JSON Lines file; an error naming its line where it isn't a JSON object."""
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
    return first


def column_names(path: Path) -> list[str]:
    """The columns of a table file in file order: a delimited file's header, the keys of a JSON Lines file's first
    record, a Parquet file's schema."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file")
        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{path}: not a readable Parquet file ({one_line(err)})") from None
    if suffix not in SUPPORTED_EXTENSIONS:
        raise InputError(f"{path}: unknown file type '{path.suffix}' (supported: {', '.join(SUPPORTED_EXTENSIONS)})")
    data = _read_bytes(path)
    if suffix == ".jsonl":
        return list(_first_json_object(path, data))
    try:
        header, _ = _first_record(data[: 1 << 20].decode("utf-8", errors="replace"), "," if suffix == ".csv" else "\t")
    except csv.Error as err:
        raise InputError(f"{path}, line 1: not a readable header ({one_line(err)})") from None
    return header


def _read_jsonl(
    path: Path, columns: list[str], skipped: dict[str, int], why: dict[str, str] | None = None
) -> pd.DataFrame:
    """One JSON object per line. A bad line later in the file is counted; a bad first line, or more bad lines than
    good ones: not JSON Lines."""
    data = _read_bytes(path)
    text = _decode(path, data)
    _first_json_object(path, data)
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
        raise InputError(f"{path}: not a readable Parquet file ({one_line(err)})") from None
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
    if pa.types.is_temporal(kind):  # e.g. "2019-11-12 14:14:46", which parse_timestamps reads as ISO 8601
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


def count_skipped(skipped: dict[str, int], reason: str, count) -> None:
    if count:
        skipped[reason] = skipped.get(reason, 0) + int(count)


def to_number(values) -> np.ndarray:
    """Strings to float64, NaN where a value isn't a number."""
    text = pc.utf8_trim_whitespace(strings(values))
    try:  # fast path: every value is a number
        return text.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return pd.to_numeric(text.to_pandas(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def lookup(keys, values) -> np.ndarray:
    """The position of each of `values` in the unique strings `keys`, -1 where absent."""
    found = pc.index_in(strings(values), value_set=strings(keys))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def is_index(numbers: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(numbers) & (numbers >= 0) & (numbers == np.floor(numbers))


def to_item_codes(values: pd.Series, remap: np.ndarray) -> np.ndarray:
    """File item indices (as text) -> internal indices; -1 where not an index or not a known item."""
    numbers = to_number(values)
    ok = is_index(numbers) & (numbers < len(remap))
    codes = np.full(len(numbers), -1, dtype=np.int64)
    codes[ok] = remap[numbers[ok].astype(np.int64)]
    return codes


def parse_timestamps(values: pd.Series) -> np.ndarray:
    """Numbers (e.g. Unix seconds) as they are, else date-time strings as Unix seconds; NaN where unparseable."""
    text = values.str.strip()
    numbers = to_number(text)
    present = (text != "").to_numpy()
    if not present.any() or np.isfinite(numbers[present]).mean() >= 0.5:
        return numbers
    for date_format in ("ISO8601", "mixed"):
        times = pd.to_datetime(text, errors="coerce", utc=True, format=date_format)
        seconds = ((times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64, na_value=np.nan)
        if np.isfinite(seconds[present]).mean() >= 0.5:
            break
    return seconds


def split_tokens(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Splits each string at whitespace; returns the row of each token and the tokens."""
    lists = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pa.array(values.fillna(""), type=pa.string())))
    rows = pc.list_parent_indices(lists).to_numpy()
    tokens = pc.list_flatten(lists)
    nonempty = pc.not_equal(tokens, "")
    return rows[nonempty.to_numpy(zero_copy_only=False)], tokens.filter(nonempty).to_pandas()


def strings(values) -> pa.Array:
    if isinstance(values, pd.Series):
        return pa.array(values, type=pa.string())
    return pa.array(np.asarray(values, dtype=object), type=pa.string())
