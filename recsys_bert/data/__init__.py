"""Data loading: item tables and interaction logs become `RecData`, four memory-mapped `datasets.Dataset` tables.

- `readers`: robust reading of .csv/.tsv/.jsonl/.parquet files (bad rows skipped and counted, one-line errors).
- `formats`: the generic two-file format, MovieLens, RecBole/UniSRec atomic files and MIND.
- `splits`: leave-one-out by time, and the evaluation-user limit.
- `cache`: parsed data saved as Arrow files and memory-mapped on the next load.
"""

from __future__ import annotations

from recsys_bert.data.formats import default_template, load_items
from recsys_bert.data.loading import format_skipped, load_data, tokenize_items, tokenize_texts
from recsys_bert.data.recdata import RecData

__all__ = [
    "RecData",
    "default_template",
    "format_skipped",
    "load_data",
    "load_items",
    "tokenize_items",
    "tokenize_texts",
]
