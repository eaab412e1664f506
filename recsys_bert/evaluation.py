"""Evaluation: full ranking over the whole catalogue (leave-one-out rows) or impression ranking (MIND).

One loop serves the trained model and the baselines: a scorer maps a batch of users to scores over all items.
Users are split across processes and their results gathered with `gather_for_metrics`, which drops the duplicates
that even batches add, so no user is counted twice. Given the items' statistics, full ranking also keeps every user's
top-10 list in both protocols, for the beyond-accuracy metrics (coverage, popularity, novelty, diversity,
calibration).
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from recsys_bert.collators import EvalCollator
from recsys_bert.metrics import (
    ItemStatistics,
    beyond_accuracy,
    category_distribution,
    impression_metrics,
    ranking_metrics,
    target_ranks,
)
from recsys_bert.modeling import RecsysBertModel, recency_mean

Scorer = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # batch -> (users, items) scores


def eval_loader(
    rows: datasets.Dataset, collator: EvalCollator, batch_size: int, accelerator: Accelerator
) -> DataLoader:
    """Evaluation rows split across processes (prepare once: Accelerate keeps every prepared loader)."""
    return accelerator.prepare_data_loader(DataLoader(rows, batch_size=batch_size, collate_fn=collator))


PROTOCOLS = ("history_kept", "history_excluded")  # the user's history items ranked among the others, or left out
LIST_LENGTH = 10  # K of the beyond-accuracy metrics


def protocol(exclude_history: bool) -> str:
    return PROTOCOLS[bool(exclude_history)]


def evaluate(
    scorer: Scorer,
    loader: DataLoader,
    accelerator: Accelerator,
    ks: list[int],
    description: str = "Evaluating",
    return_ranks: bool = False,
    items: ItemStatistics | None = None,
) -> dict | tuple[dict, dict]:
    """Metrics of `scorer` on the rows of `loader` (from `eval_loader`, with `EvalCollator(full_history=True)`).

    Args:
        scorer: a batch -> `(users, items)` scores over the whole catalogue.
        ks: the cut-offs of the @K metrics (full ranking).
        return_ranks: also return each protocol's per-user target ranks `(users,)` (every process's users, in the
            loader's order: the same users in the same order for every scorer), for paired comparisons.
        items: the items' statistics; full ranking then adds each protocol's `beyond_accuracy` metrics of the
            top-`LIST_LENGTH` lists (calibration against each user's whole history where `items.categories`).

    Returns:
        Full ranking: `{"history_kept": metrics, "history_excluded": metrics}`, both protocols from the same scores
        (excluded: the user's history items, the target aside, left out of the ranking), each with `users` (and
        `beyond_accuracy` given `items`).
        Impression rows (MIND): MIND's impression metrics.
    """
    ranks, labels, scores = {name: [] for name in PROTOCOLS}, [], []
    lists, history_distributions = {name: [] for name in PROTOCOLS}, []  # top-K lists, categories of histories
    for batch in tqdm(loader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        with torch.no_grad():
            batch_scores = scorer(batch).float()  # (users, items)
        # a NaN target would rank first (no score is >= NaN); +inf ties the top; -inf is for excluded items
        broken = torch.isnan(batch_scores) | (batch_scores == torch.inf)
        if broken.any():
            raise FloatingPointError(
                f"{description}: {int(broken.any(dim=1).sum())} of {len(batch_scores)} users have NaN or +inf scores "
                "(a diverged model, or NaN in its weights or inputs)"
            )
        if "candidate_ids" in batch:
            candidate_scores = batch_scores.gather(1, batch["candidate_ids"].clamp(min=0))  # (users, candidates)
            candidate_scores = accelerator.pad_across_processes(candidate_scores, dim=1, pad_index=0)
            batch_labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-1)
            labels.append(accelerator.gather_for_metrics(batch_labels).cpu())  # (all users, candidates)
            scores.append(accelerator.gather_for_metrics(candidate_scores).cpu())
            continue
        targets = batch["target_ids"]  # (users,)
        history = batch["full_history_ids"]  # (users, longest history)
        if items is not None and items.categories is not None:
            distribution = category_distribution(history.cpu().numpy(), items.categories)  # (users, categories)
            distribution = torch.from_numpy(distribution).to(accelerator.device)  # gathered where the ranks are
            history_distributions.append(accelerator.gather_for_metrics(distribution).cpu())
        for name in PROTOCOLS:
            if name == "history_excluded":
                drop = (history >= 0) & (history != targets[:, None])
                rows_index = torch.arange(len(history), device=history.device)[:, None].expand_as(history)
                batch_scores[rows_index[drop], history[drop]] = -torch.inf
            ranks[name].append(accelerator.gather_for_metrics(target_ranks(batch_scores, targets)).cpu())
            if items is not None:
                top = batch_scores.topk(min(LIST_LENGTH, batch_scores.shape[1]), dim=1).indices  # (users, K)
                lists[name].append(accelerator.gather_for_metrics(top).cpu())
    if labels:
        label_rows = [row for part in labels for row in part]
        score_rows = [row for part in scores for row in part]
        keep = [row >= 0 for row in label_rows]
        metrics = impression_metrics(
            [row[k].numpy() for row, k in zip(label_rows, keep)], [row[k].numpy() for row, k in zip(score_rows, keep)]
        )
        return (metrics, {}) if return_ranks else metrics
    ranks = {name: torch.cat(parts) for name, parts in ranks.items()}  # (users,) each
    metrics = {name: {**ranking_metrics(ranks[name], ks), "users": len(ranks[name])} for name in PROTOCOLS}
    if items is not None:
        distribution = torch.cat(history_distributions).numpy() if history_distributions else None
        for name in PROTOCOLS:
            metrics[name]["beyond_accuracy"] = beyond_accuracy(torch.cat(lists[name]).numpy(), items, distribution)
    return (metrics, ranks) if return_ranks else metrics


def model_scorer(model: RecsysBertModel, item_vectors: torch.Tensor, accelerator: Accelerator) -> Scorer:
    """Scores of the recommender: its user vectors against the catalogue's item vectors (in eval mode: the caller
    puts the model back into training mode)."""
    model.eval()
    return lambda batch: model.score(
        user_vectors(model, batch, item_vectors, accelerator), item_vectors, batch["history_ids"]
    )


def user_vectors(
    model: RecsysBertModel, batch: dict[str, torch.Tensor], item_vectors: torch.Tensor, accelerator: Accelerator
) -> torch.Tensor:
    """User vectors `(users, dim)` of an `EvalCollator` batch (`RecsysBertModel.encode_users`), float32.

    Args:
        item_vectors (`(items, dim)`): the vectors `history_ids` index ('attention' user tower).
    """
    history = batch["history_ids"]  # (users, max_history), -1 = padding
    with accelerator.autocast():
        if model.config.user_tower == "text":
            users = model.encode_users(input_ids=batch["user_input_ids"], attention_mask=batch["user_attention_mask"])
        else:
            users = model.encode_users(item_vectors[history.clamp(min=0)], history >= 0)  # (users, dim)
    return users.float()


def popularity_scorer(train_item_counts: np.ndarray, device: torch.device) -> Scorer:
    """Every user gets the items by their number of training interactions."""
    counts = torch.as_tensor(train_item_counts, dtype=torch.float32, device=device)  # (items,)
    return lambda batch: counts.repeat(len(batch["history_ids"]), 1)  # a copy: evaluation writes into it


def mean_history_scorer(item_vectors: torch.Tensor, decay: float = 1.0) -> Scorer:
    """Zero-shot: the user is the recency-weighted mean of its recent history's item vectors (from the untrained
    encoder), the j-th most recent item weighted `decay ** j` (1 = the plain mean)."""

    def scorer(batch):
        history = batch["history_ids"]  # (users, max_history), most recent first
        users = recency_mean(item_vectors[history.clamp(min=0)], history >= 0, decay)  # (users, dim)
        return users @ item_vectors.T  # (users, items)

    return scorer
