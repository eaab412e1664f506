"""Ranking metrics, vectorised, and the paired bootstrap that compares two systems on the same users.

Full ranking (one target per user): everything follows from the target's rank among all candidates, with ties
broken against the target (an item scoring the same as the target ranks before it). Impression ranking (MIND):
AUC, MRR, nDCG@5 and nDCG@10 per impression, averaged over impressions, as MIND's official `evaluate.py`
computes them.

Beyond accuracy (top-K lists): catalogue coverage, Gini index, average popularity, tail share, novelty, intra-list
diversity and calibration, each following one library's definition (named in its docstring), so that a figure
means what it means there.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    if differences.ndim != 1:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists of per-user values")
    means = _bootstrap_means(differences[:, None], samples, seed)
    low, high = _interval(means[:, 0], confidence)
    return {"difference": float(differences.mean()), "low": low, "high": high, "samples": samples}


def paired_bootstrap_ratio(
    a: np.ndarray, b: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """How many times better `a` is than `b` on the same users: mean(a) / mean(b) and its paired percentile
    bootstrap interval (the resamples of `paired_bootstrap` with the same seed).

    Returns:
        `ratio`, `low` and `high` (the interval's bounds), `samples`.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired_bootstrap_ratio needs two equally long lists of per-user values")
    means = _bootstrap_means(np.stack([a, b], axis=1), samples, seed)  # (samples, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = _interval(means[:, 0] / means[:, 1], confidence, method="nearest")  # a ratio can be inf
        ratio = float(a.mean() / b.mean()) if b.mean() else float("inf")
    return {"ratio": ratio, "low": low, "high": high, "samples": samples}


def _bootstrap_means(columns: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """`(samples, columns)`: each column's mean over users (rows) resampled with replacement, the same users for
    every column."""
    if columns.ndim != 2 or len(columns) == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists of per-user values")
    rng = np.random.default_rng(seed)
    means = np.empty((samples, columns.shape[1]))
    for start in range(0, samples, 100):  # 100 resamples at a time: memory stays at 100 x users
        rows = rng.integers(0, len(columns), (min(100, samples - start), len(columns)))
        means[start : start + len(rows)] = columns[rows].mean(axis=1)
    return means


def _interval(values: np.ndarray, confidence: float, method: str = "linear") -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail], method=method)
    return float(low), float(high)


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


# ---------------------------------------------------------------- beyond accuracy: top-K lists
# `lists` is `(users, K)`, int: each user's recommended item indices, best first.


def catalogue_coverage(lists: np.ndarray, num_items: int) -> float:
    """Distinct recommended items / all items: RecBole 1.2.1's `ItemCoverage` (= rectools' `CatalogCoverage` with
    `normalize=True`)."""
    return len(np.unique(lists)) / num_items


def gini_index(lists: np.ndarray, num_items: int) -> float:
    """Gini index of how often each item is recommended, over all items (never recommended ones count 0): 0 when
    every item is recommended equally often, towards 1 when a few items take every list. RecBole 1.2.1's
    `GiniIndex`: sum over items sorted by count, ascending, of (2i - n - 1) count_i / (n * all counts)."""
    counts = np.sort(np.bincount(lists.ravel(), minlength=num_items))  # (items,) ascending
    position = np.arange(1, num_items + 1)
    return float(((2 * position - num_items - 1) * counts).sum() / (num_items * counts.sum()))


def average_popularity(lists: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean over users of the mean training interaction count of their recommended items: RecBole 1.2.1's
    `AveragePopularity` (= rectools' `AvgRecPopularity`)."""
    return float(item_counts[lists].mean(axis=1).mean())


def tail_items(item_counts: np.ndarray, share: float = 0.8) -> np.ndarray:
    """`(items,)` bool: the `share` least popular items, by training count, of all items (never seen in training:
    count 0). As RecBole 1.2.1's `TailPercentage` (`tail_ratio` = `share`): items sorted by (count, item index)
    and the first max(int(share * items), 1) taken, so ties at the cut go to the items of lower index; RecBole's
    counter leaves out the items without a training interaction, here they count 0 and belong to the tail."""
    order = np.lexsort((np.arange(len(item_counts)), item_counts))  # by count, then by index
    tail = np.zeros(len(item_counts), dtype=bool)
    tail[order[: max(int(len(item_counts) * share), 1)]] = True
    return tail


def tail_share(lists: np.ndarray, item_counts: np.ndarray, share: float = 0.8) -> float:
    """Mean over users of the share of their recommendations from the tail (`tail_items`): RecBole 1.2.1's
    `TailPercentage`."""
    return float(tail_items(item_counts, share)[lists].mean(axis=1).mean())


def novelty(lists: np.ndarray, item_users: np.ndarray, num_users: int) -> float:
    """Mean over users of the mean -log2(users(i) / users) of their recommended items, users(i) = the training
    users who interacted with item i, users = every user with a training interaction: rectools'
    `MeanInvUserFreq` (items without a training user count as one user, as there)."""
    users = np.maximum(item_users[lists], 1)  # (users, K)
    return float((-np.log2(users / num_users)).mean(axis=1).mean())


def intra_list_diversity(lists: np.ndarray, item_vectors: np.ndarray, chunk: int = 1024) -> float:
    """Mean over users of the mean over pairs of their recommended items of 1 - cosine(item vectors): microsoft
    recommenders' `diversity` with `item_sim_measure="item_feature_vector"` (= rectools' `IntraListDiversity`
    with cosine distance). 0 for lists of one item."""
    k = lists.shape[1]
    if k < 2:
        return 0.0
    unit = item_vectors / np.linalg.norm(item_vectors, axis=1, keepdims=True)
    upper = np.triu(np.ones((k, k), dtype=bool), 1)  # each pair once
    values = []
    for start in range(0, len(lists), chunk):  # chunk x K x dim at a time
        vectors = unit[lists[start : start + chunk]]  # (users, K, dim)
        cosine = vectors @ vectors.transpose(0, 2, 1)  # (users, K, K)
        values.append((1 - cosine[:, upper]).mean(axis=1))
    return float(np.concatenate(values).mean())


def category_distribution(item_lists: np.ndarray, item_categories: np.ndarray) -> np.ndarray:
    """Each row's category distribution: the mean of p(category | item) over its items (Steck 2018, uniform
    weights), `(rows, categories)`; items without a category are left out, a row without any is all zeros.

    Args:
        item_lists (`(rows, length)`, int): item indices, -1 = padding.
        item_categories (`(items, categories)`): p(category | item), each row summing to 1 (or 0: no category).
    """
    rows, columns = np.nonzero(item_lists >= 0)
    items = item_lists[rows, columns]
    totals = np.stack(
        [np.bincount(rows, weights=item_categories[items, c], minlength=len(item_lists))
         for c in range(item_categories.shape[1])], axis=1,
    )  # fmt: skip
    mass = totals.sum(axis=1, keepdims=True)  # (rows, 1): how many items had a category
    return np.divide(totals, mass, out=np.zeros_like(totals), where=mass > 0)


def calibration(
    lists: np.ndarray, item_categories: np.ndarray, history_distribution: np.ndarray, alpha: float = 0.01
) -> float | None:
    """Miscalibration of Steck 2018 ("Calibrated recommendations", eq. 2-3): mean over users of KL(p || q~) in
    nats, p the categories of the user's history, q those of its list, q~ = (1 - alpha) q + alpha p; 0 when the
    list has the history's category mix. Users whose history or list has no categorised item are left out; None
    when no user is left.

    Args:
        item_categories (`(items, categories)`): p(category | item), see `category_distribution`.
        history_distribution (`(users, categories)`): p, `category_distribution` of each user's history.
    """
    p, q = history_distribution, category_distribution(lists, item_categories)
    kept = (p.sum(axis=1) > 0) & (q.sum(axis=1) > 0)
    if not kept.any():
        return None
    p, q = p[kept], q[kept]
    smoothed = (1 - alpha) * q + alpha * p  # > 0 wherever p > 0
    ratio = np.divide(p, smoothed, out=np.ones_like(p), where=p > 0)  # categories with p = 0 add 0
    return float((p * np.log(ratio)).sum(axis=1).mean())


@dataclass
class ItemStatistics:
    """What the beyond-accuracy metrics measure top-K lists against (NumPy, on the CPU).

    Args:
        counts (`(items,)`): training interactions per item (popularity, tail).
        users (`(items,)`): distinct training users per item (novelty).
        num_users: users with a training interaction.
        vectors (`(items, dim)`): the item vectors of diversity, the same for every system compared (recsys-bert:
            the zero-shot encoder's).
        categories (`(items, categories)`, optional): p(category | item) for calibration; None: not computed.
    """

    counts: np.ndarray
    users: np.ndarray
    num_users: int
    vectors: np.ndarray
    categories: np.ndarray | None = None


def beyond_accuracy(lists: np.ndarray, items: ItemStatistics, history_distribution: np.ndarray | None = None) -> dict:
    """Every beyond-accuracy metric of the top-K lists `(users, K)`, keys `name@K`; `calibration@K` where
    `items.categories` and the histories' `history_distribution` (`category_distribution`) are given and some
    user has categories in both."""
    k, num_items = lists.shape[1], len(items.counts)
    metrics = {
        f"coverage@{k}": catalogue_coverage(lists, num_items),
        f"gini@{k}": gini_index(lists, num_items),
        f"average_popularity@{k}": average_popularity(lists, items.counts),
        f"tail_share@{k}": tail_share(lists, items.counts),
        f"novelty@{k}": novelty(lists, items.users, items.num_users),
        f"diversity@{k}": intra_list_diversity(lists, items.vectors),
    }
    if items.categories is not None and history_distribution is not None:
        value = calibration(lists, items.categories, history_distribution)
        if value is not None:
            metrics[f"calibration@{k}"] = value
    return metrics
