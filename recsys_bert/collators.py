"""Batches: a training step's samples with every item of the step once (`TrainCollator`), and evaluation or
ranking users with their histories (`EvalCollator`)."""

from __future__ import annotations

import numpy as np
import torch

from recsys_bert.arguments import TrainingArguments
from recsys_bert.catalogue import Catalogue
from recsys_bert.modeling import RecsysBertConfig


class TrainCollator:
    """Training batches in which every item of the step (history, positive, negatives) appears once.

    Samples' histories, positives and negatives become indices into the step's unique items, whose tokens (or cached
    frozen states) the batch carries. Sampled negatives are drawn from a generator seeded by the batch's content, so
    a resumed run draws what an uninterrupted one did.
    """

    def __init__(self, catalogue: Catalogue, config: RecsysBertConfig, args: TrainingArguments):
        self.catalogue = catalogue
        self.config = config
        self.args = args

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        recent = [np.asarray(row["history"][-self.config.max_history :], dtype=np.int64)[::-1] for row in rows]
        targets = np.array([row["target"] for row in rows], dtype=np.int64)  # (batch,)
        lengths = np.array([len(h) for h in recent])
        rng = np.random.default_rng([self.args.seed, len(rows), *targets[:16].tolist(), int(lengths.sum())])
        if "negatives" in rows[0]:  # MIND: npratio of the impression's non-clicked items, -1 where it has too few
            negatives = np.full((len(rows), self.args.npratio), -1, dtype=np.int64)  # (batch, npratio)
            for i, row in enumerate(rows):
                pool = np.asarray(row["negatives"], dtype=np.int64)
                if len(pool):
                    negatives[i] = rng.choice(pool, self.args.npratio, replace=len(pool) < self.args.npratio)
        else:
            negatives = (
                np.arange(len(self.catalogue))  # (items,) a full softmax
                if self.args.num_negatives < 0
                else rng.integers(0, len(self.catalogue), self.args.num_negatives)  # (negatives,) shared
            )
        width = max(int(lengths.max()), 1)
        history = np.zeros((len(rows), width), dtype=np.int64)  # (batch, width)
        history_mask = np.arange(width)[None, :] < lengths[:, None]  # (batch, width)
        for i, h in enumerate(recent):
            history[i, : len(h)] = h
        # the 'text' user tower reads the history's tokens, not its item vectors: those items need no encoding
        history_items = history[history_mask] if self.config.user_tower == "attention" else history[:0, 0]
        unique, inverse = np.unique(
            np.concatenate([history_items, targets, negatives[negatives >= 0]]), return_inverse=True
        )
        n_hist, n_batch = len(history_items), len(rows)
        history_index = np.zeros_like(history)
        if n_hist:
            history_index[history_mask] = inverse[:n_hist]
        negative_index = np.full(negatives.shape, 0, dtype=np.int64)
        negative_index[negatives >= 0] = inverse[n_hist + n_batch :]
        batch = {
            "history_index": torch.from_numpy(history_index),  # (batch, width)
            "history_mask": torch.from_numpy(history_mask),  # (batch, width)
            "positive_index": torch.from_numpy(inverse[n_hist : n_hist + n_batch]),  # (batch,)
            "negative_index": torch.from_numpy(negative_index),  # (negatives,) or (batch, npratio)
            "positive_ids": torch.from_numpy(targets),  # (batch,)
            "negative_ids": torch.from_numpy(negatives),  # (negatives,) or (batch, npratio), -1 = none
            "history_ids": torch.from_numpy(np.where(history_mask, history, -1)),  # (batch, width), -1 = none
            **{f"item_{key}": value for key, value in self.catalogue.features(unique).items()},  # (unique_items, ...)
        }
        if self.config.user_tower == "text":
            batch["user_input_ids"], batch["user_attention_mask"] = self.catalogue.history_text_tokens(
                recent, self.config.max_user_tokens
            )
        return batch


ID_FIELDS = ("positive_ids", "negative_ids", "history_ids")  # a `TrainCollator` batch's fields for the loss only


def _pad(rows: list[np.ndarray], width: int | None = None) -> torch.Tensor:
    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : min(len(r), width)] = torch.as_tensor(np.array(r[:width], copy=True), dtype=torch.long)
    return out


class EvalCollator:
    """Batches of evaluation rows: the recent history (most recent first), the full history, the target(s)."""

    def __init__(
        self,
        max_history: int,
        full_history: bool = False,
        catalogue: Catalogue | None = None,
        max_user_tokens: int = 0,
    ):
        self.max_history = max_history
        self.full_history = full_history  # only to exclude the history from the ranking
        self.catalogue = catalogue  # only for the 'text' user tower
        self.max_user_tokens = max_user_tokens

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        recent = [np.asarray(row["history"][-self.max_history :], dtype=np.int64)[::-1] for row in rows]
        batch = {"history_ids": _pad(recent, self.max_history)}  # (users, max_history), -1 = padding
        if self.full_history:
            batch["full_history_ids"] = _pad([np.asarray(row["history"]) for row in rows])  # (users, longest)
        if "candidates" in rows[0]:
            batch["candidate_ids"] = _pad([np.asarray(row["candidates"]) for row in rows])  # (users, candidates)
            batch["labels"] = _pad([np.asarray(row["labels"]) for row in rows])  # (users, candidates), -1 = padding
        elif "target" in rows[0]:  # (ad-hoc users of recommend.py have none)
            batch["target_ids"] = torch.tensor([row["target"] for row in rows], dtype=torch.long)  # (users,)
        if self.catalogue is not None:
            batch["user_input_ids"], batch["user_attention_mask"] = self.catalogue.history_text_tokens(
                recent, self.max_user_tokens
            )
        return batch
