"""The serving API: recommendations for histories, explanations by deletion (equal to recomputed scores, for both
user towers), free-text items, catalogue search."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from recsys_bert.data import tokenize_items
from recsys_bert.evaluation import user_vectors
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel
from recsys_bert.recommender import Recommender, user_collator


@pytest.fixture(autouse=True)
def _fresh_state(fresh_accelerate_state):
    """Each Recommender starts its own Accelerator."""


@pytest.fixture(scope="module")
def movies(generic_files):
    import datasets

    table = pd.read_csv(generic_files[0]).head(80)
    return datasets.Dataset.from_dict(
        {"item_id": table.item_id.astype(str).tolist(), "text": (table.title + ". " + table.genres).tolist()}
    )


def _recommender(tiny, movies, user_tower: str, repeat_bias: float = 0.1) -> Recommender:
    torch.manual_seed(0)
    config = RecsysBertConfig(encoder_name_or_path=tiny, user_tower=user_tower, max_history=6, max_item_tokens=16)
    model = RecsysBertModel.from_encoder(config).eval()
    with torch.no_grad():
        model.repeat_bias.fill_(repeat_bias)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    return Recommender(model, tokenizer, tokenize_items(movies, tokenizer, 16), vector_cache=None)


def _logits_of(recommender: Recommender, history: list[int]) -> torch.Tensor:
    """The model's logits over the catalogue for one history of item indices, computed from scratch."""
    collator = user_collator(recommender.model.config, False, recommender.catalogue)
    batch = collator([{"history": history}])
    users = user_vectors(recommender.model, batch, recommender.vectors, recommender.accelerator)
    return recommender.model.score(users, recommender.vectors, batch["history_ids"])[0]


@pytest.mark.parametrize("user_tower", ["attention", "text"])
def test_explanations_are_the_drops_of_recomputed_scores(tiny, movies, user_tower):
    recommender = _recommender(tiny, movies, user_tower)
    ids = recommender.item_ids
    # 9 items, more than max_history (6): leaving a recent one out brings an older one into view
    histories = [[ids[i] for i in (3, 8, 15, 4, 23, 42, 16, 5, 9)], [ids[i] for i in (1, 2, 1)]]
    results = recommender.recommend(histories, top_k=5, explain=10)
    for history, recommendations in zip(histories, results):
        index = [recommender.index_of[item] for item in history]
        full = _logits_of(recommender, index)
        distinct_recent = list(dict.fromkeys(reversed(index[-6:])))
        for entry in recommendations:
            item = recommender.index_of[entry["item_id"]]
            assert entry["score"] == pytest.approx(float(full[item]), abs=1e-4)
            assert len(entry["because"]) == len(distinct_recent)
            for reason in entry["because"]:
                removed = recommender.index_of[reason["item_id"]]
                shorter = _logits_of(recommender, [h for h in index if h != removed])
                assert reason["drop"] == pytest.approx(float(full[item] - shorter[item]), abs=1e-4)
            drops = [reason["drop"] for reason in entry["because"]]
            assert drops == sorted(drops, reverse=True)
            positive = sum(d for d in drops if d > 0)
            shares = [reason["share"] for reason in entry["because"]]
            assert sum(s for s in shares if s > 0) == pytest.approx(1.0 if positive > 0 else 0.0, abs=1e-5)


def test_removing_the_top_attributed_item_lowers_the_score_more_than_a_random_one(tiny, movies):
    recommender = _recommender(tiny, movies, "attention")
    rng = np.random.default_rng(0)
    histories = [list(rng.choice(recommender.item_ids, size=5, replace=False)) for _ in range(12)]
    results = recommender.recommend(histories, top_k=3, exclude_history=True, explain=5)
    top, random = [], []
    for recommendations in results:
        for entry in recommendations:
            drops = [reason["drop"] for reason in entry["because"]]
            top.append(drops[0])
            random.append(drops[rng.integers(len(drops))])
    assert np.mean(top) > np.mean(random)


def test_recommendations_with_free_text_and_history_exclusion(tiny, movies):
    recommender = _recommender(tiny, movies, "attention")
    first, second = recommender.item_ids[:2]
    history = [first, recommender.texts[1], "A film nobody has seen (2031). Drama"]
    [with_history] = recommender.recommend([history], top_k=len(recommender))
    [excluded] = recommender.recommend([history], top_k=len(recommender), exclude_history=True)
    assert len(with_history) == len(recommender) and len(excluded) == len(recommender) - 2
    assert {first, second} <= {e["item_id"] for e in with_history}
    assert not {first, second} & {e["item_id"] for e in excluded}
    assert sum(e["probability"] for e in with_history) == pytest.approx(1.0, abs=1e-4)
    assert sum(e["probability"] for e in excluded) == pytest.approx(1.0, abs=1e-4)
    [because] = recommender.recommend([history], top_k=1, explain=3)
    assert {r["item_id"] for r in because[0]["because"]} == {first, second, "A film nobody has seen (2031). Drama"}


def test_search_finds_titles_by_words(tiny, movies):
    recommender = _recommender(tiny, movies, "attention")
    text = recommender.texts[5]
    word = text.split()[0]
    hits = recommender.search(word.upper())
    assert hits and all(word.lower() in found.lower() for _, found in hits)
    assert recommender.search("zzzz nothing") == [] and recommender.search("  ") == []
    title = text.split(" (")[0]  # texts that start with the query come before those that only contain its words
    first = recommender.search(title)[0][1].lower()
    assert first.startswith(title.lower())


def test_the_readmes_recommender_example_runs(generic_files, tiny, tmp_path, capsys):
    """The README's `Recommender` block, on a tiny model trained for a step (its run folder's config.yaml names the
    catalogue): it prints three recommendations with their reasons, and the search."""
    import re

    from recsys_bert.arguments import parse_args
    from recsys_bert.trainer import train
    from tests.conftest import REPO_ROOT, reset_accelerate_state, tiny_train_args

    train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path, "--max_steps", "1", "--exclude_history")))
    reset_accelerate_state()
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(from recsys_bert import Recommender\n.*?)```", readme, re.S).group(1)
    exec(block.replace('"runs/movielens"', repr(str(tmp_path))), {})  # noqa: S102
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "Toy Story" in lines[-1]
