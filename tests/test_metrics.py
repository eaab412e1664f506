from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_bert.metrics import impression_metrics, ranking_metrics, target_ranks


def test_target_ranks_breaks_ties_against_the_target():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.5], [1.0, 0.0, 0.0, 0.0], [0.2, -math.inf, 0.9, 0.2]])
    targets = torch.tensor([1, 0, 0])
    # row 0: target 0.5 ties with item 3 -> rank 2; row 1: best -> 1; row 2: 0.9 above, 0.2 tie -> 3
    assert target_ranks(scores, targets).tolist() == [2, 1, 3]


def test_ranking_metrics_against_hand_computed_values():
    ranks = [1, 3, 12]
    m = ranking_metrics(ranks, ks=[1, 5, 10])
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # 1/log2(1+1) = 1, 1/log2(3+1) = 0.5
    assert m["precision@5"] == pytest.approx((2 / 5) / 3)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)


def _mind_reference(labels, scores):
    """MIND's official evaluate.py, with sklearn's roc_auc_score written out (pairwise, ties half)."""

    def dcg(y_true, y_score, k):
        order = np.argsort(y_score)[::-1]
        y_true = np.take(y_true, order[:k])
        return np.sum((2**y_true - 1) / np.log2(np.arange(len(y_true)) + 2))

    def auc(y, s):
        pos, neg = s[y == 1], s[y == 0]
        diff = pos[:, None] - neg[None, :]
        return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size

    out = {"auc": [], "mrr": [], "ndcg@5": [], "ndcg@10": []}
    for y, s in zip(labels, scores):
        order = np.argsort(s)[::-1]
        yt = np.take(y, order)
        out["auc"].append(auc(y, s))
        out["mrr"].append(np.sum(yt / (np.arange(len(yt)) + 1)) / np.sum(yt))
        for k in (5, 10):
            out[f"ndcg@{k}"].append(dcg(y, s, k) / dcg(y, y, k))
    return {key: float(np.mean(v)) for key, v in out.items()}


def test_impression_metrics_hand_computed():
    labels = [np.array([1, 0, 0]), np.array([0, 1, 0, 1])]
    scores = [np.array([0.9, 0.1, 0.5]), np.array([0.8, 0.7, 0.1, 0.2])]
    m = impression_metrics(labels, scores)
    # impression 1: click ranked first -> auc 1, mrr 1, ndcg 1.
    # impression 2: order 0.8(0) 0.7(1) 0.2(1) 0.1(0): auc = pairs (0.7>0.1, 0.7<0.8, 0.2>0.1, 0.2<0.8) = 2/4;
    # mrr = (1/2 + 1/3) / 2; dcg = 1/log2(3) + 1/log2(4), ideal = 1 + 1/log2(3)
    assert m["auc"] == pytest.approx((1 + 0.5) / 2)
    assert m["mrr"] == pytest.approx((1 + (1 / 2 + 1 / 3) / 2) / 2)
    ndcg2 = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert m["ndcg@5"] == pytest.approx((1 + ndcg2) / 2)
    assert m["impressions"] == 2


def test_impression_metrics_match_mind_script_on_random_impressions():
    rng = np.random.default_rng(0)
    labels, scores = [], []
    for _ in range(300):
        n = int(rng.integers(2, 40))
        y = (rng.random(n) < 0.2).astype(int)
        y[rng.integers(n)] = 1
        y[rng.integers(n)] = 0 if y.sum() > 1 else y[rng.integers(n)]
        if y.sum() in (0, n):
            continue
        labels.append(y)
        scores.append(np.round(rng.normal(size=n), 1))  # rounding makes ties
    ours = impression_metrics(labels, scores)
    reference = _mind_reference(labels, scores)
    assert ours["auc"] == pytest.approx(reference["auc"], abs=1e-12)
    # MRR and nDCG depend on the order of tied scores, which argsort does not fix; without ties they agree exactly
    untied = [s + rng.normal(size=len(s)) * 1e-6 for s in scores]
    ours, reference = impression_metrics(labels, untied), _mind_reference(labels, untied)
    for key in ("auc", "mrr", "ndcg@5", "ndcg@10"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-12)


def test_impressions_without_a_click_are_skipped_and_counted():
    m = impression_metrics([np.array([0, 0]), np.array([1, 0])], [np.array([0.1, 0.2]), np.array([0.3, 0.2])])
    assert m["impressions"] == 1 and m["skipped_impressions"] == 1 and m["auc"] == 1.0


def test_evaluation_reports_both_protocols_and_refuses_nan_scores():
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from recsys_bert.collators import EvalCollator
    from recsys_bert.evaluation import evaluate

    rows = [{"history": [5], "target": 2}, {"history": [0], "target": 3}]
    loader = DataLoader(rows, batch_size=2, collate_fn=EvalCollator(max_history=5))
    scores = torch.arange(8, dtype=torch.float32).repeat(2, 1)  # (users, items): item i scores i
    metrics = evaluate(lambda batch: scores.clone(), loader, Accelerator(cpu=True), [5])
    # kept: user 0's target 2 has items 3..7 above it (rank 6), user 1's target 3 items 4..7 (rank 5); excluded:
    # user 0's history item 5 leaves the ranking (rank 5), user 1's item 0 scores below its target anyway
    assert metrics["history_kept"]["ndcg@5"] == pytest.approx((0 + 1 / math.log2(6)) / 2)
    assert metrics["history_excluded"]["ndcg@5"] == pytest.approx(1 / math.log2(6))
    assert metrics["history_kept"]["users"] == metrics["history_excluded"]["users"] == 2
    broken = scores.clone()
    broken[1, 3] = torch.nan  # user 1's target: without the check, rank 0 (better than first)
    with pytest.raises(FloatingPointError, match="Evaluating: 1 of 2 users have NaN"):
        evaluate(lambda batch: broken.clone(), loader, Accelerator(cpu=True), [5])


def test_paired_bootstrap_interval():
    from recsys_bert.metrics import paired_bootstrap, per_user

    rng = np.random.default_rng(0)
    a = rng.random(500)
    same = paired_bootstrap(a, a)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    shifted = paired_bootstrap(a + 0.1, a)  # the same shift for every user: no spread at all
    assert shifted["difference"] == pytest.approx(0.1) and shifted["low"] == pytest.approx(0.1)
    assert shifted["high"] == pytest.approx(0.1)
    # two users, differences 1 and 0: a resample's mean is 0, 0.5 or 1 (1/4, 1/2, 1/4): the 95% interval is [0, 1]
    two = paired_bootstrap(np.array([1.0, 0.0]), np.zeros(2))
    assert (two["difference"], two["low"], two["high"]) == (0.5, 0.0, 1.0)
    # normal differences: the interval is about mean +- 1.96 standard errors
    differences = rng.normal(0.05, 0.2, 2000)
    interval = paired_bootstrap(differences, np.zeros(2000), samples=4000)
    half_width = 1.96 * 0.2 / math.sqrt(2000)
    assert interval["high"] - interval["low"] == pytest.approx(2 * half_width, rel=0.1)
    assert interval["low"] < differences.mean() < interval["high"]
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(0), np.zeros(0))
    # the ratio of the means: a system twice as good on every user is 2x, with no spread
    from recsys_bert.metrics import paired_bootstrap_ratio

    doubled = paired_bootstrap_ratio(2 * a, a)
    assert doubled["ratio"] == pytest.approx(2.0) and doubled["low"] == pytest.approx(2.0)
    assert doubled["high"] == pytest.approx(2.0)
    # users (a, b) = (1, 1) and (1, 0): resamples give 1/1, 2/1 or 2/0 (1/4, 1/2, 1/4): the interval is [1, inf]
    pair = paired_bootstrap_ratio(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    assert (pair["ratio"], pair["low"], pair["high"]) == (2.0, 1.0, np.inf)
    # per-user values average to ranking_metrics' figures
    ranks = np.array([1, 3, 12, 2])
    for name in ("ndcg@10", "recall@10", "precision@10", "mrr@10", "mrr"):
        assert per_user(ranks, name).mean() == pytest.approx(ranking_metrics(ranks, [10])[name])


def test_zero_shot_recency_weighted_mean():
    """The j-th most recent history item weighs decay**j; decay 1 is the plain mean; padding weighs nothing."""
    from recsys_bert.evaluation import mean_history_scorer

    vectors = torch.eye(3)  # (items, dim): item i's vector is the i-th unit vector
    batch = {"history_ids": torch.tensor([[0, 1, -1], [2, -1, -1]])}  # most recent first
    scores = mean_history_scorer(vectors, decay=0.5)(batch)  # (users, items)
    assert torch.allclose(scores[0], torch.tensor([1.0, 0.5, 0.0]) / 1.5)
    assert torch.allclose(scores[1], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(mean_history_scorer(vectors)(batch)[0], torch.tensor([0.5, 0.5, 0.0]))
    assert torch.allclose(mean_history_scorer(vectors, decay=0.0)(batch)[0], torch.tensor([1.0, 0.0, 0.0]))  # last
