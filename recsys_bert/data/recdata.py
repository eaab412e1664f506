"""`RecData`: a data set ready for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow.compute as pc


@dataclass
class RecData:
    """A data set ready for training and evaluation; row i of `items` is internal item index i.

    Args:
        items: `item_id` (string) and `text` (string) of every item.
        train: `user_id`, `history` (list<int32>, oldest -> newest, the last `max_history`), `target` (int32),
            `timestamp` (float64, the target's Unix seconds; not in atomic files); MIND also has `negatives`
            (list<int32>, the impression's non-clicked items).
        valid: leave-one-out or by time: `user_id`, `history` (the full history before the target), `target`. MIND:
            impressions with `impression_id`, `user_id`, `history` (full), `candidates` (list<int32>) and `labels`
            (list<int8>, 1 = click).
        test: like `valid`.
        train_item_counts: (num_items,) int64, how often each item was interacted with in training (every training
            target and the history before each user's first one: `splits.training_item_counts`).
        skipped: reason -> count of skipped rows or ids.
        name: short data set name for logs and the model card.
        held_out_items: the items held out of training (`cold_item_fraction`), sorted; None when none are.
    """

    items: datasets.Dataset
    train: datasets.Dataset
    valid: datasets.Dataset
    test: datasets.Dataset
    train_item_counts: np.ndarray
    skipped: dict[str, int]
    name: str
    held_out_items: np.ndarray | None = None

    @property
    def is_impressions(self) -> bool:
        """True when valid/test are impressions (candidates + labels) rather than one target per user (MIND)."""
        return "candidates" in self.valid.column_names

    def item_counts_before(self, split: str) -> np.ndarray:
        """How often each item was interacted with before `split`'s targets: in training, and for "test" in the
        valid split too (its targets, or MIND's valid clicks). `(num_items,)` int64."""
        if split == "valid":
            return self.train_item_counts
        valid = self.valid.data.table
        if self.is_impressions:
            clicked = pc.equal(pc.list_flatten(valid.column("labels")), 1)
            items = pc.list_flatten(valid.column("candidates")).filter(clicked).to_numpy()
        else:
            items = valid.column("target").to_numpy()
        return self.train_item_counts + np.bincount(items.astype(np.int64), minlength=len(self.train_item_counts))
