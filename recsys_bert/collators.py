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

    In three parts, so that the random part is the same on every process: `__call__` (in the loader's workers) takes
    the samples' ids; `negatives` draws the step's negatives from a generator seeded by (seed, epoch, micro-step),
    which every process shares, so N processes with batch B draw what one process with batch N·B draws (and a
    resumed run what an uninterrupted one drew); `step_inputs` turns histories, positives and negatives into indices
    of the step's unique items, whose tokens (and cached frozen states) the batch carries.

    Items held out of training (`held_out_items`, from `cold_item_fraction`) are never drawn as negatives either: a
    model that saw them only as negatives would learn to rank them down, which is not what a new item meets.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        config: RecsysBertConfig,
        args: TrainingArguments,
        held_out_items: np.ndarray | None = None,
    ):
        self.catalogue = catalogue
        self.config = config
        self.args = args
        self.pool = np.arange(len(catalogue))  # (items,) what negatives are drawn from: all but the held-out ones
        if held_out_items is not None:
            self.pool = np.setdiff1d(self.pool, held_out_items)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """`history_ids` `(batch, width)` most recent first (-1 = none), `positive_ids` `(batch,)`; MIND: the
        impressions' non-clicked items `impression_negatives` `(batch, most)`; the 'text' tower: the history's
        tokens."""
        recent = [np.asarray(row["history"][-self.config.max_history :], dtype=np.int64)[::-1] for row in rows]
        batch = {
            "history_ids": _pad(recent),  # (batch, width)
            "positive_ids": torch.tensor([row["target"] for row in rows], dtype=torch.long),  # (batch,)
        }
        if "negatives" in rows[0]:
            batch["impression_negatives"] = _pad([np.asarray(row["negatives"], dtype=np.int64) for row in rows])
        if self.config.user_tower == "text":
            batch["user_input_ids"], batch["user_attention_mask"] = self.catalogue.history_text_tokens(
                recent, self.config.max_user_tokens
            )
        return batch

    def negatives(self, batch: dict[str, torch.Tensor], epoch: int, micro_step: int, first_row: int = 0) -> np.ndarray:
        """The step's negatives: `num_negatives` items uniformly (shared by the step's samples), every item
        (`num_negatives` -1), or, for MIND, `npratio` of each impression's non-clicked items (-1 where it has none),
        drawn per sample from its place `first_row + i` in the step's batch over all processes. Held-out items are
        never among them."""
        seed = (self.args.seed, epoch, micro_step)
        if "impression_negatives" not in batch:
            if self.args.num_negatives < 0:
                return self.pool  # (items,) a full softmax
            return self.pool[np.random.default_rng(seed).integers(0, len(self.pool), self.args.num_negatives)]
        pools = batch["impression_negatives"].numpy()  # (batch, most), -1 = padding
        negatives = np.full((len(pools), self.args.npratio), -1, dtype=np.int64)  # (batch, npratio)
        for i, pool in enumerate(pools):
            pool = pool[pool >= 0]
            if len(pool):
                rng = np.random.default_rng((*seed, first_row + i))
                negatives[i] = rng.choice(pool, self.args.npratio, replace=len(pool) < self.args.npratio)
        return negatives

    def step_inputs(self, batch: dict[str, torch.Tensor], negatives: np.ndarray) -> dict[str, torch.Tensor]:
        """The model's inputs (`RecsysBertModel.forward`) and the ids the loss needs (`ID_FIELDS`)."""
        history = batch["history_ids"].numpy()  # (batch, width)
        history_mask = history >= 0
        targets = batch["positive_ids"].numpy()  # (batch,)
        # the 'text' user tower reads the history's tokens, not its item vectors: those items need no encoding
        history_items = history[history_mask] if self.config.user_tower == "attention" else history[:0, 0]
        unique, inverse = np.unique(
            np.concatenate([history_items, targets, negatives[negatives >= 0]]), return_inverse=True
        )
        n_hist, n_batch = len(history_items), len(targets)
        history_index = np.zeros_like(history)
        if n_hist:  # (the 'text' tower has none)
            history_index[history_mask] = inverse[:n_hist]
        negative_index = np.zeros(negatives.shape, dtype=np.int64)
        negative_index[negatives >= 0] = inverse[n_hist + n_batch :]
        inputs = {
            "history_index": torch.from_numpy(history_index),  # (batch, width)
            "history_mask": torch.from_numpy(history_mask),  # (batch, width)
            "positive_index": torch.from_numpy(inverse[n_hist : n_hist + n_batch]),  # (batch,)
            "negative_index": torch.from_numpy(negative_index),  # (negatives,) or (batch, npratio)
            "positive_ids": batch["positive_ids"],  # (batch,)
            "negative_ids": torch.from_numpy(negatives),  # (negatives,) or (batch, npratio), -1 = none
            "history_ids": batch["history_ids"],  # (batch, width), -1 = none
            **{f"item_{key}": value for key, value in self.catalogue.features(unique).items()},  # (unique_items, ...)
        }
        for key in ("user_input_ids", "user_attention_mask"):
            if key in batch:
                inputs[key] = batch[key]
        return inputs

    def collate_step(self, rows: list[dict], epoch: int = 0, micro_step: int = 0) -> dict[str, torch.Tensor]:
        """The three parts at once, for one process (benchmarks, tests)."""
        batch = self(rows)
        return self.step_inputs(batch, self.negatives(batch, epoch, micro_step))


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
        full_history: bool = True,
        catalogue: Catalogue | None = None,
        max_user_tokens: int = 0,
    ):
        self.max_history = max_history
        self.full_history = full_history  # to exclude the history from the ranking
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
