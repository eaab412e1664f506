"""`RecData`: a data set ready for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np


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
