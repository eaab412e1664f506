"""Beyond accuracy: each metric against hand-computed values on tiny lists, against RecBole's formulas and rectools'
implementation on random lists, in evaluation's loop (both protocols), and in a real run's metrics.json and card."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard

from recsys_bert.metrics import (
    ItemStatistics,
    average_popularity,
    beyond_accuracy,
    calibration,
    catalogue_coverage,
    category_distribution,
    gini_index,
    intra_list_diversity,
    novelty,
    tail_items,
    tail_share,
)
from tests.conftest import REPO_ROOT

# three users' top-2 lists over five items; item i's training interactions and training users
LISTS = np.array([[0, 1], [0, 2], [0, 1]])
COUNTS = np.array([10, 4, 1, 0, 5])
USERS = np.array([4, 2, 1, 0, 2])  # of 4 training users


def test_coverage_gini_popularity_and_tail_by_hand():
    assert catalogue_coverage(LISTS, 5) == pytest.approx(3 / 5)  # items 0, 1, 2
    # recommended 3, 2, 1, 0, 0 times: sorted 0 0 1 2 3, weights 2i - n - 1 = -4 -2 0 2 4, over n * 6
    assert gini_index(LISTS, 5) == pytest.approx((0 * 1 + 2 * 2 + 4 * 3) / (5 * 6))
    assert gini_index(np.array([[0, 1], [2, 3], [4, 0], [1, 2], [3, 4]]), 5) == pytest.approx(0.0)  # all equal
    assert gini_index(np.array([[0], [0], [0]]), 4) == pytest.approx(3 / 4)  # one item: (n - 1) / n
    assert average_popularity(LISTS, COUNTS) == pytest.approx(((10 + 4) / 2 + (10 + 1) / 2 + (10 + 4) / 2) / 3)
    # 80% of 5 items = 4: by count 3 (0), 2 (1), 1 (4), 4 (5) are the tail, item 0 (10) the head
    assert tail_items(COUNTS).tolist() == [False, True, True, True, True]
    assert tail_share(LISTS, COUNTS) == pytest.approx(0.5)


def test_ties_at_the_tail_cut_go_to_the_lower_item_index():
    assert tail_items(np.array([1, 1, 1, 1, 1])).tolist() == [True, True, True, True, False]
    assert tail_items(np.array([2, 1, 2, 1, 2])).tolist() == [True, True, True, True, False]
    assert tail_items(np.array([3, 7]), share=0.1).tolist() == [True, False]  # at least one item


def test_novelty_by_hand_and_cold_items_as_one_user():
    # -log2(users / 4): item 0 -> 0, item 1 -> 1, item 2 -> 2, item 3 (no training user: as one) -> 2
    assert novelty(LISTS, USERS, 4) == pytest.approx(((0 + 1) / 2 + (0 + 2) / 2 + (0 + 1) / 2) / 3)
    assert novelty(np.array([[3, 1]]), USERS, 4) == pytest.approx((2 + 1) / 2)


def test_intra_list_diversity_by_hand():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-3.0, 0.0]])  # not unit: cosine normalises
    # pairs (0, 1): 1 - 0; (0, 2) and (1, 2): 1 - 1/sqrt(2)
    assert intra_list_diversity(np.array([[0, 1, 2]]), vectors) == pytest.approx((3 - 2 / math.sqrt(2)) / 3)
    # opposite vectors: 2; the same item twice would be 0; mean over users
    assert intra_list_diversity(np.array([[0, 3], [1, 1]]), vectors) == pytest.approx((2 + 0) / 2)
    assert intra_list_diversity(np.array([[0], [1]]), vectors) == 0.0
    rng = np.random.default_rng(0)
    lists, many = rng.integers(0, 4, (2500, 3)), rng.normal(size=(4, 2))
    assert intra_list_diversity(lists, many, chunk=1000) == pytest.approx(intra_list_diversity(lists, many))


CATEGORIES = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 0.0]])  # item 3: no category


def test_category_distribution_and_calibration_by_hand():
    history = np.array([[0, 1, -1], [3, -1, -1], [2, 3, -1]])  # -1 = padding; item 3 has no category
    p = category_distribution(history, CATEGORIES)
    np.testing.assert_allclose(p, [[0.75, 0.25], [0.0, 0.0], [0.0, 1.0]])
    # user 0's list [2, 1] has q = (.25, .75); q~ = .99 q + .01 p
    q_smooth = 0.99 * np.array([0.25, 0.75]) + 0.01 * np.array([0.75, 0.25])
    kl = 0.75 * math.log(0.75 / q_smooth[0]) + 0.25 * math.log(0.25 / q_smooth[1])
    lists = np.array([[2, 1], [0, 1], [2, 2]])
    # user 1 has no categorised history: left out; user 2's list has its history's mix: 0
    assert calibration(lists, CATEGORIES, p) == pytest.approx((kl + 0.0) / 2)
    assert calibration(lists[:1], CATEGORIES, p[:1], alpha=0.0) == pytest.approx(
        0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.75)
    )
    assert calibration(np.array([[3, 3]]), CATEGORIES, p[:1]) is None  # no categorised item in the list


def test_beyond_accuracy_collects_every_metric_at_k():
    vectors = np.eye(5)
    items = ItemStatistics(COUNTS, USERS, 4, vectors, CATEGORIES[[0, 1, 2, 3, 3]])
    p = category_distribution(np.array([[0], [1], [2]]), items.categories)
    metrics = beyond_accuracy(LISTS, items, p)
    assert list(metrics) == ["coverage@2", "gini@2", "average_popularity@2", "tail_share@2", "novelty@2",
                             "diversity@2", "calibration@2"]  # fmt: skip
    assert metrics["coverage@2"] == catalogue_coverage(LISTS, 5) and metrics["diversity@2"] == pytest.approx(1.0)
    no_categories = ItemStatistics(COUNTS, USERS, 4, vectors)
    assert "calibration@2" not in beyond_accuracy(LISTS, no_categories, None)


# ---------------------------------------------------------------- against the libraries


def _random_case(seed=0, users=20, items=60, k=5, dim=6):
    """Top-k lists, training (user, item) interactions (repeats, three items never seen), item vectors: the lists
    of /tmp/work/rectools_check.py, whose rectools 0.19.0 values `RECTOOLS_VALUES` are."""
    rng = np.random.default_rng(seed)
    lists = np.stack([rng.choice(items, k, replace=False) for _ in range(users)])
    train_users = rng.integers(0, 25, 300)
    train_items = np.minimum(rng.geometric(0.12, 300) - 1, items - 4)
    vectors = rng.normal(size=(items, dim))
    return lists, train_users, train_items, vectors


# rectools 0.19.0 (CatalogCoverage(normalize=True), AvgRecPopularity, MeanInvUserFreq, IntraListDiversity with a
# cosine PairwiseDistanceCalculator) on `_random_case()`, computed in a separate venv: rectools pins attrs<24
RECTOOLS_VALUES = {"coverage": 0.8333333333333334, "average_popularity": 3.3, "novelty": 3.757611946959635,
                   "diversity": 1.0212705072266148}  # fmt: skip


def _ours(lists, train_users, train_items, vectors) -> dict:
    num_items = len(vectors)
    counts = np.bincount(train_items, minlength=num_items)
    pairs = np.unique(train_users.astype(np.int64) * num_items + train_items)
    users = np.bincount(pairs % num_items, minlength=num_items)
    return {
        "coverage": catalogue_coverage(lists, num_items),
        "average_popularity": average_popularity(lists, counts),
        "novelty": novelty(lists, users, len(np.unique(train_users))),
        "diversity": intra_list_diversity(lists, vectors),
    }


def test_the_same_values_as_rectools_on_random_lists():
    assert _ours(*_random_case()) == pytest.approx(RECTOOLS_VALUES, abs=1e-12)


def test_the_same_values_as_rectools_itself():
    rectools = pytest.importorskip("rectools")
    from rectools.metrics import AvgRecPopularity, CatalogCoverage, IntraListDiversity, MeanInvUserFreq
    from rectools.metrics.distances import PairwiseDistanceCalculator

    class Cosine(PairwiseDistanceCalculator):
        def __init__(self, vectors):
            self.unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

        def _get_distances_for_item_pairs(self, items_0, items_1):
            return 1 - (self.unit[np.asarray(items_0)] * self.unit[np.asarray(items_1)]).sum(1)

    for seed in range(3):
        lists, train_users, train_items, vectors = _random_case(seed)
        k = lists.shape[1]
        columns = rectools.Columns
        reco = pd.DataFrame({columns.User: np.repeat(np.arange(len(lists)), k), columns.Item: lists.ravel(),
                             columns.Rank: np.tile(np.arange(1, k + 1), len(lists))})  # fmt: skip
        interactions = pd.DataFrame({columns.User: train_users, columns.Item: train_items})
        theirs = {
            "coverage": CatalogCoverage(k=k, normalize=True).calc(reco, np.arange(len(vectors))),
            "average_popularity": AvgRecPopularity(k=k).calc(reco, interactions),
            "novelty": MeanInvUserFreq(k=k).calc(reco, interactions),
            "diversity": IntraListDiversity(k=k, distance_calculator=Cosine(vectors)).calc(reco),
        }
        assert _ours(lists, train_users, train_items, vectors) == pytest.approx(theirs, abs=1e-12)


def _recbole_gini(lists, num_items):
    """RecBole 1.2.1's GiniIndex.get_gini (recbole/evaluator/metrics.py): only the recommended items' counts,
    sorted, placed at the top positions n - m + 1 .. n of all n items."""
    counts = np.sort(np.unique(lists, return_counts=True)[1])
    position = np.arange(num_items - len(counts) + 1, num_items + 1)
    return np.sum((2 * position - num_items - 1) * counts) / lists.size / num_items


def _recbole_tail(lists, item_counts, tail_ratio):
    """RecBole 1.2.1's TailPercentage.get_tail + metric_info at K (recbole/evaluator/metrics.py): items sorted by
    (count, id), the first max(int(n * tail_ratio), 1) are the tail; the mean per user of tail items in the list."""
    ranked = sorted(enumerate(item_counts), key=lambda pair: (pair[1], pair[0]))
    tail = {item for item, _ in ranked[: max(int(len(ranked) * tail_ratio), 1)]}
    return np.mean([np.mean([item in tail for item in row]) for row in lists])


def _recbole_average_popularity(lists, item_counts):
    """RecBole 1.2.1's AveragePopularity at K: per user the mean training count of the list, then the mean."""
    return np.mean([np.mean([item_counts[item] for item in row]) for row in lists])


@pytest.mark.parametrize("seed", range(5))
def test_recboles_formulas_on_random_lists(seed):
    rng = np.random.default_rng(seed)
    lists, counts = rng.integers(0, 50, (30, 10)), rng.integers(0, 6, 50)  # many ties in the counts
    assert gini_index(lists, 50) == pytest.approx(_recbole_gini(lists, 50), abs=1e-12)
    assert tail_share(lists, counts) == pytest.approx(_recbole_tail(lists, counts, 0.8), abs=1e-12)
    assert average_popularity(lists, counts) == pytest.approx(_recbole_average_popularity(lists, counts), abs=1e-12)


# ---------------------------------------------------------------- in evaluation and in a real run


def test_evaluation_keeps_both_protocols_top_lists(fresh_accelerate_state):
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from recsys_bert.collators import EvalCollator
    from recsys_bert.evaluation import evaluate

    rows = [{"history": [11], "target": 2}, {"history": [0, 5], "target": 3}]
    loader = DataLoader(rows, batch_size=1, collate_fn=EvalCollator(max_history=5))  # two batches
    scores = torch.arange(12, dtype=torch.float32)  # (items,): item i scores i, the same for both users
    counts = np.arange(12)
    vectors = np.eye(12)
    categories = np.zeros((12, 2))
    categories[:6, 0] = categories[6:, 1] = 1.0  # items 0-5 category 0, 6-11 category 1
    items = ItemStatistics(counts, np.ones(12, dtype=np.int64), 2, vectors, categories)
    metrics = evaluate(lambda batch: scores.repeat(len(batch["target_ids"]), 1), loader, Accelerator(cpu=True), [5],
                       items=items)  # fmt: skip
    kept, excluded = metrics["history_kept"]["beyond_accuracy"], metrics["history_excluded"]["beyond_accuracy"]
    # kept: both users get items 11..2; excluded: user 0 loses item 11 (11 is its history) -> 10..1, user 1 loses 5
    assert kept["coverage@10"] == pytest.approx(10 / 12) and excluded["coverage@10"] == pytest.approx(11 / 12)
    assert kept["average_popularity@10"] == pytest.approx(6.5)
    assert excluded["average_popularity@10"] == pytest.approx((5.5 + (sum(range(1, 12)) - 5) / 10) / 2)
    # user 0's history is category 1 only, user 1's category 0 only; kept lists: 6 of category 1, 4 of category 0
    q_smooth = 0.99 * 0.6 + 0.01  # user 0: p = (0, 1), q~(1) = .99 * .6 + .01
    q_smooth_1 = 0.99 * 0.4 + 0.01  # user 1: p = (1, 0), q~(0) = .99 * .4 + .01
    assert kept["calibration@10"] == pytest.approx((-math.log(q_smooth) - math.log(q_smooth_1)) / 2)
    assert metrics["history_kept"]["ndcg@5"] == 0.0  # the accuracy metrics are unchanged beside them
    assert evaluate(lambda batch: scores.repeat(len(batch["target_ids"]), 1), loader, Accelerator(cpu=True),
                    [5])["history_kept"].get("beyond_accuracy") is None  # fmt: skip


BEYOND_KEYS = {"coverage@10", "gini@10", "average_popularity@10", "tail_share@10", "novelty@10", "diversity@10",
               "calibration@10"}  # fmt: skip


def test_a_movielens_run_writes_them_for_the_model_and_the_baselines_and_the_card_shows_them(
    tiny, tmp_path, fresh_accelerate_state
):
    from recsys_bert.arguments import parse_args
    from recsys_bert.trainer import train

    argv = ["--data_format", "movielens", "--data_dir", str(REPO_ROOT / "data" / "ml-latest-small"),
            "--encoder_name_or_path", tiny, "--output_dir", str(tmp_path), "--finetune_layers", "0",
            "--per_device_train_batch_size", "32", "--num_negatives", "32", "--max_history", "20",
            "--max_item_tokens", "16", "--max_steps", "2", "--seed", "3"]  # fmt: skip
    train(*parse_args(argv))
    written = json.loads((tmp_path / "metrics.json").read_text())
    systems = {"test": written["test"], "valid": written["valid"], **written["baselines"]}
    assert set(written["baselines"]) == {"popularity", "zero_shot"}
    for name, by_protocol in systems.items():
        for protocol in ("history_kept", "history_excluded"):
            beyond = by_protocol[protocol]["beyond_accuracy"]
            assert set(beyond) == BEYOND_KEYS, (name, protocol)
            assert 0 < beyond["coverage@10"] <= 1 and 0 <= beyond["tail_share@10"] <= 1 and beyond["novelty@10"] > 0
            assert {"ndcg@10", "recall@10", "mrr"} <= set(by_protocol[protocol])  # accuracy keys where they were
    # popularity recommends (nearly) the same ten items to everyone: the least coverage, the most popular items
    popularity = written["baselines"]["popularity"]["history_kept"]["beyond_accuracy"]
    zero_shot = written["baselines"]["zero_shot"]["history_kept"]["beyond_accuracy"]
    assert popularity["coverage@10"] < zero_shot["coverage@10"]
    assert popularity["average_popularity@10"] > zero_shot["average_popularity@10"]
    assert popularity["tail_share@10"] == 0.0  # the ten most interacted movies are all in the head

    card = ModelCard.load(tmp_path / "README.md").text
    table = card.split("### Beyond accuracy")[1]
    assert "| model | history | coverage@10 | Gini@10 |" in table and "miscalibration@10" in table
    shown = f"{written['test']['history_excluded']['beyond_accuracy']['coverage@10']:.4f}"
    assert f"| recsys-bert (this model) | excluded | {shown} |" in table
    assert "| popularity | kept |" in table and "| zero_shot | excluded |" in table
