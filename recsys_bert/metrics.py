"""Ranking metrics, vectorised, and the paired bootstrap that compares two systems on the same users.

Full ranking (one target per user): everything follows from the target's rank among all candidates, with ties
broken against the target (an item scoring the same as the target ranks before it). Impression ranking (MIND):
AUC, MRR, nDCG@5 and nDCG@10 per impression, averaged over impressions, as MIND's official `evaluate.py`
computes them.
"""

from __future__ import annotations

import numpy as np
import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among its scores, ties counted against the target.

    Args:
        scores (`torch.Tensor` of shape `(users, items)`): scores; excluded items hold `-inf`.
        targets (`torch.Tensor` of shape `(users,)`): the target item's column in each row.

    Returns:
        `torch.Tensor` of shape `(users,)`, int64: 1 + the number of other items scoring at least the target's score.
    """
    target_scores = scores.gather(1, targets[:, None])  # (users, 1)
    at_least = (scores >= target_scores).sum(dim=1)  # (users,) counts the target itself
    return at_least.long()


def ranking_metrics(ranks: np.ndarray | torch.Tensor, ks: list[int] | tuple[int, ...] = (5, 10, 20, 50)) -> dict:
    """Means over users of NDCG@K, Recall@K (= HR@K with one target), Precision@K, MRR@K and MRR over all ranks.

    Args:
        ranks: 1-based rank of each user's single target.
        ks: the cut-offs K.
    """
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    if ranks.numel() == 0:
        raise ValueError("no ranks to average")
    metrics = {}
    for k in ks:
        hit = (ranks <= k).double()
        metrics[f"ndcg@{k}"] = (hit / torch.log2(ranks + 1)).mean().item()
        metrics[f"recall@{k}"] = hit.mean().item()
        metrics[f"precision@{k}"] = (hit / k).mean().item()
        metrics[f"mrr@{k}"] = (hit / ranks).mean().item()
    metrics["mrr"] = (1.0 / ranks).mean().item()
    return metrics


def per_user(ranks: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """One full-ranking metric (`ndcg@K`, `recall@K`, `precision@K`, `mrr@K`, `mrr`) per user, from target ranks:
    the values `ranking_metrics` averages."""
    ranks = torch.as_tensor(ranks, dtype=torch.float64)
    metric, _, k = name.partition("@")
    hit = (ranks <= int(k)).double() if k else torch.ones_like(ranks)
    values = {"ndcg": hit / torch.log2(ranks + 1), "recall": hit, "mrr": hit / ranks}
    values["precision"] = hit / int(k) if k else None
    if values.get(metric) is None:
        raise ValueError(f"unknown metric {name!r}")
    return values[metric].numpy()


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """How much better `a` is than `b` on the same users: the mean of the per-user differences `a - b` and its
    percentile bootstrap interval (users resampled with replacement, the same users for both: paired).

    Args:
        a, b (`(users,)`): a metric per user for two systems, user `i` the same user in both.

    Returns:
        `difference` (mean of a - b), `low` and `high` (the interval's bounds), `samples`.
    """
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if differences.ndim != 1 or len(differences) == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists of per-user values")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 100):  # 100 resamples at a time: memory stays at 100 x users
        rows = rng.integers(0, len(differences), (min(100, samples - start), len(differences)))
        means[start : start + len(rows)] = differences[rows].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"difference": float(differences.mean()), "low": float(low), "high": float(high), "samples": samples}


def impression_metrics(labels: list[np.ndarray], scores: list[np.ndarray]) -> dict:
    """MIND's AUC, MRR, nDCG@5 and nDCG@10, each averaged over impressions.

    Impressions without both a click and a non-click have no AUC; they are left out of every average and counted
    under `skipped_impressions`.

    Args:
        labels: per impression, 1 for a clicked candidate and 0 otherwise.
        scores: per impression, the candidates' scores (same lengths as `labels`).
    """
    lengths = np.array([len(x) for x in labels])
    if len(lengths) == 0:
        raise ValueError("no impressions to average")
    width = int(lengths.max())
    valid = np.arange(width)[None, :] < lengths[:, None]  # (impressions, width)
    y = np.zeros(valid.shape)
    s = np.full(valid.shape, -np.inf)
    y[valid] = np.concatenate(labels)
    s[valid] = np.concatenate(scores)

    clicks = y.sum(1)
    usable = (clicks > 0) & (clicks < lengths)
    y, s, valid, clicks, lengths = y[usable], s[usable], valid[usable], clicks[usable], lengths[usable]

    # AUC = Mann-Whitney U with ties counted half, as sklearn's roc_auc_score
    ranks = _average_ranks(s, valid)  # (impressions, width), 1-based among the valid candidates
    non_clicks = lengths - clicks
    auc = ((ranks * y).sum(1) - clicks * (clicks + 1) / 2) / (clicks * non_clicks)

    # MRR and nDCG on the order by descending score (np.argsort(...)[::-1] as MIND's script; padding sorts last)
    order = np.argsort(s, axis=1)[:, ::-1]
    sorted_labels = np.take_along_axis(y, order, axis=1)  # (impressions, width)
    positions = np.arange(1, width + 1)[None, :]
    mrr = (sorted_labels / positions).sum(1) / clicks
    metrics = {"auc": auc.mean(), "mrr": mrr.mean()}
    ideal_labels = -np.sort(-y, axis=1)
    for k in (5, 10):
        discounts = 1.0 / np.log2(positions[:, :k] + 1)
        dcg = ((2 ** sorted_labels[:, :k] - 1) * discounts).sum(1)
        ideal = ((2 ** ideal_labels[:, :k] - 1) * discounts).sum(1)
        metrics[f"ndcg@{k}"] = (dcg / ideal).mean()
    metrics = {key: float(value) for key, value in metrics.items()}
    metrics["impressions"] = int(usable.sum())
    metrics["skipped_impressions"] = int((~usable).sum())
    return metrics


def _average_ranks(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row-wise ascending ranks (1-based, ties get their average rank) of the valid entries; padding ranks last."""
    n, width = scores.shape
    padded = np.where(valid, scores, np.inf)
    order = np.argsort(padded, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(padded, order, 1)
    # start of each run of equal scores
    new_run = np.ones((n, width), dtype=bool)
    new_run[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    run_id = np.cumsum(new_run, axis=1) - 1  # (n, width)
    positions = np.broadcast_to(np.arange(1, width + 1, dtype=np.float64), (n, width))
    flat_run = run_id + (np.arange(n) * width)[:, None]
    run_sum = np.bincount(flat_run.ravel(), weights=positions.ravel(), minlength=n * width)
    run_len = np.bincount(flat_run.ravel(), minlength=n * width)
    average = (run_sum / np.maximum(run_len, 1))[flat_run]
    ranks = np.empty_like(average)
    np.put_along_axis(ranks, order, average, 1)
    return ranks
