"""The faiss index (recsys_bert.index): exhaustive settings give exactly the exact ranking, the file cache, recall."""

from __future__ import annotations

import logging
from functools import partial

import faiss
import pytest
import torch

from recsys_bert.index import (
    EF_SEARCH,
    K_FACTOR,
    NPROBE_REFINED,
    build_index,
    index_params,
    index_path,
    index_top_k,
    load_or_build,
)
from recsys_bert.metrics import ranking_metrics, target_ranks
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel
from recsys_bert.retrieval import top_k


@pytest.fixture(scope="module")
def model(tiny) -> RecsysBertModel:
    return RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, score_temperature=0.1)).eval()


def unit(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


def clustered(num_items: int, num_users: int, dim: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Items and users around 40 shared centres, as text vectors cluster by topic."""
    centres = unit(40, dim, generator=generator)
    items = unit(num_items, dim, generator=generator) * 0.6 + centres[torch.randint(0, 40, (num_items,))]
    users = unit(num_users, dim, generator=generator) * 0.6 + centres[torch.randint(0, 40, (num_users,))]
    return torch.nn.functional.normalize(items, dim=-1), torch.nn.functional.normalize(users, dim=-1)


@pytest.mark.parametrize(
    "params",
    [
        {"factory": "Flat"},
        {"factory": "IVF4,Flat", "nprobe": 4},
        {"factory": "IVF4,PQ8x4fs", "nprobe": 4, "k_factor": 20},  # 4-bit codes, every item asked, re-scored exactly
    ],
)
@pytest.mark.parametrize("bias", [-0.3, 0.5])
def test_exhaustive_index_gives_the_exact_ranking(model, params, bias):
    generator = torch.Generator().manual_seed(0)
    dim = model.config.encoder["hidden_size"]
    users, items = unit(9, dim, generator=generator), unit(200, dim, generator=generator)
    exclude = torch.randint(0, 200, (9, 6), generator=generator)
    exclude[0] = -1  # a user with nothing to exclude
    history = torch.randint(-1, 200, (9, 12), generator=generator)  # the repeat term's items, -1 = padding
    history[1, :2] = 17  # an item twice in a history gets the bias once
    history[2, 0] = 250  # a new text's index (past the catalogue): never ranked
    with torch.no_grad():
        model.repeat_bias.fill_(bias)
    score = partial(model.score, history_ids=history)
    index = build_index(items, params)

    expected_logits, expected_index, _ = top_k(users, items, 10, score, exclude)
    logits, found, _ = index_top_k(index, users, items, 10, model, history, exclude)
    assert torch.equal(found, expected_index)
    torch.testing.assert_close(logits, expected_logits)
    # every item a candidate: the normalizer is the catalogue's too
    expected_logits, expected_index, expected_normalizer = top_k(users, items, 30, score, exclude)
    logits, found, log_normalizer = index_top_k(index, users, items, 30, model, history, exclude, candidates=200)
    assert torch.equal(found, expected_index)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(log_normalizer, expected_normalizer)


def test_float16_items_are_rescored_as_their_float32_values(model):
    """A float16 catalogue (recommend.py's past 8 GiB, or a GPU's) is re-scored by a gather, not faiss's float32
    routine: the same scores as the exact path over the same values, and copies still tie."""
    generator = torch.Generator().manual_seed(8)
    dim = model.config.encoder["hidden_size"]
    users, items = unit(9, dim, generator=generator), unit(300, dim, generator=generator).half()
    history = torch.randint(-1, 300, (9, 7), generator=generator)
    with torch.no_grad():
        model.repeat_bias.fill_(0.4)
    index = build_index(items, {"factory": "IVF4,PQ8x4fs", "nprobe": 4, "k_factor": 50})  # every item asked
    expected_logits, _, _ = top_k(users, items.float(), 20, partial(model.score, history_ids=history))
    logits, found, _ = index_top_k(index, users, items, 20, model, history)
    torch.testing.assert_close(logits, expected_logits)  # sorted values: a swap at a near-tie changes nothing
    copies = torch.cat([items, items[:1]])  # item 300 = item 0
    logits, found, _ = index_top_k(build_index(copies, {"factory": "Flat"}), users, copies, 301, model)
    first, copy = (found == 0).nonzero()[:, 1], (found == 300).nonzero()[:, 1]
    assert torch.equal(logits.gather(1, first[:, None]), logits.gather(1, copy[:, None]))


def test_ties_are_broken_against_the_target_as_exact_ranking_breaks_them(model):
    generator = torch.Generator().manual_seed(1)
    dim = model.config.encoder["hidden_size"]
    users, items = unit(9, dim, generator=generator), unit(53, dim, generator=generator)
    copies = torch.cat([items, items[[5]]])  # item 53 = item 5
    with torch.no_grad():
        model.repeat_bias.zero_()
    index = build_index(copies, {"factory": "Flat"})
    for target in (5, 53):
        targets = torch.full((9,), target)
        expected_logits, expected_index, _ = top_k(users, copies, 54, model.score, None, 7, targets)
        logits, found, _ = index_top_k(index, users, copies, 54, model, ties_against=targets)
        assert torch.equal(found, expected_index)
        torch.testing.assert_close(logits, expected_logits)
        position = (found == target).nonzero()[:, 1]
        assert (found.gather(1, position[:, None] - 1).squeeze(1) == 58 - target).all()  # after its copy


def test_ndcg_from_an_exhaustive_index_equals_the_exact_one(model):
    generator = torch.Generator().manual_seed(2)
    dim = model.config.encoder["hidden_size"]
    items, users = clustered(600, 300, dim, generator)
    history = torch.randint(0, 600, (300, 5), generator=generator)
    with torch.no_grad():
        model.repeat_bias.fill_(-0.2)
        scores = model.score(users, items, history_ids=history)  # (users, items)
    targets = torch.multinomial(scores.softmax(dim=1), 1, generator=generator)[:, 0]  # (users,)
    exclude = history.masked_fill(history == targets[:, None], -1)  # the history excluded, the target never
    rows = torch.arange(300)[:, None].expand_as(exclude)
    scores[rows[exclude >= 0], exclude[exclude >= 0]] = -torch.inf
    exact = ranking_metrics(target_ranks(scores, targets), ks=(10,))["ndcg@10"]

    index = build_index(items, {"factory": "IVF8,Flat", "nprobe": 8})
    _, found, _ = index_top_k(index, users, items, 10, model, history, exclude, ties_against=targets)
    hit = found == targets[:, None]  # (users, 10)
    ranks = torch.where(hit.any(dim=1), hit.float().argmax(dim=1) + 1, 11)  # 11: past the list, no gain at 10
    assert ranking_metrics(ranks, ks=(10,))["ndcg@10"] == pytest.approx(exact, abs=1e-3)
    assert exact > 0.01  # the check means something: targets are found


@pytest.mark.parametrize("params", [{"factory": "HNSW16", "ef_search": 64}, {"factory": "IVF40,Flat", "nprobe": 8}])
def test_approximate_index_has_high_recall_on_clustered_vectors(model, params):
    generator = torch.Generator().manual_seed(3)
    dim = model.config.encoder["hidden_size"]
    items, users = clustered(4000, 100, dim, generator)
    with torch.no_grad():
        model.repeat_bias.zero_()
    _, expected, _ = top_k(users, items, 10, model.score)
    _, found, _ = index_top_k(build_index(items, params), users, items, 10, model)
    recall = (found[:, :, None] == expected[:, None, :]).any(dim=2).float().mean().item()
    assert recall > 0.9


def test_index_file_cache_round_trips_and_ignores_search_params(tmp_path):
    generator = torch.Generator().manual_seed(4)
    items, users = clustered(500, 20, 16, generator)
    params = {"factory": "IVF8,Flat", "nprobe": 2}
    index, from_disk = load_or_build(items, tmp_path, "vectors-key", params)
    assert not from_disk and index_path(tmp_path, "vectors-key", params).is_file()
    assert [path.name for path in tmp_path.iterdir()] == [index_path(tmp_path, "vectors-key", params).name]

    again, from_disk = load_or_build(items, tmp_path, "vectors-key", {**params, "nprobe": 8})  # the same file
    assert from_disk and faiss.extract_index_ivf(again.faiss_index).nprobe == 8
    fresh = build_index(items, {**params, "nprobe": 8})
    assert (again.faiss_index.search(users.numpy(), 5)[1] == fresh.faiss_index.search(users.numpy(), 5)[1]).all()
    name = index_path(tmp_path, "vectors-key", params)
    assert index_path(tmp_path, "vectors-key", {"factory": "IVF16,Flat"}) != name  # build-time params do count
    assert index_path(tmp_path, "other-key", params) != name


def test_pq_candidates_are_rescored_exactly_and_k_factor_is_a_search_param(model, tmp_path):
    generator = torch.Generator().manual_seed(6)
    dim = model.config.encoder["hidden_size"]
    items, users = clustered(2000, 30, dim, generator)
    with torch.no_grad():
        model.repeat_bias.zero_()
    params = {"factory": "IVF16,PQ16x4fs", "nprobe": 4, "k_factor": 1}
    index, _ = load_or_build(items, tmp_path, "key", params)
    again, from_disk = load_or_build(items, tmp_path, "key", {**params, "k_factor": 8, "nprobe": 16})
    assert from_disk and again.k_factor == 8 and faiss.extract_index_ivf(again.faiss_index).nprobe == 16
    scores = model.score(users, items)  # (users, items)
    expected = scores.topk(20, dim=1).indices
    recall = {}
    for name, candidate in (("k_factor 1", index), ("k_factor 8", again)):
        logits, found, _ = index_top_k(candidate, users, items, 20, model)
        torch.testing.assert_close(logits, scores.gather(1, found))  # the model's scores, not the codes' estimates
        recall[name] = (found[:, :, None] == expected[:, None, :]).any(2).float().mean().item()
    assert recall["k_factor 8"] > recall["k_factor 1"] and recall["k_factor 8"] > 0.95


def test_a_refined_index_takes_k_factor_itself(model, tmp_path):
    generator = torch.Generator().manual_seed(6)
    dim = model.config.encoder["hidden_size"]
    items, users = clustered(2000, 30, dim, generator)
    with torch.no_grad():
        model.repeat_bias.zero_()
    index, _ = load_or_build(items, tmp_path, "key", {"factory": "IVF16,PQ16x4fs,RFlat", "nprobe": 16, "k_factor": 8})
    assert faiss.downcast_index(index.faiss_index).k_factor == 8 and index.k_factor == 1  # re-ranked once by faiss
    scores = model.score(users, items)  # (users, items)
    logits, found, _ = index_top_k(index, users, items, 20, model)
    torch.testing.assert_close(logits, scores.gather(1, found))
    expected = scores.topk(20, dim=1).indices
    assert (found[:, :, None] == expected[:, None, :]).any(2).float().mean().item() > 0.95


def test_hnsw_ef_construction_is_a_build_time_param(tmp_path):
    generator = torch.Generator().manual_seed(7)
    items, _ = clustered(300, 1, 16, generator)
    params = {"factory": "HNSW8", "ef_search": 16, "ef_construction": 64}
    index, _ = load_or_build(items, tmp_path, "key", params)
    assert faiss.downcast_index(index.faiss_index).hnsw.efConstruction == 64
    assert index_path(tmp_path, "key", params) != index_path(tmp_path, "key", {**params, "ef_construction": 40})
    with pytest.raises(ValueError, match="ef_construction"):
        build_index(items, {"factory": "IVF4,Flat", "ef_construction": 64})


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other vectors"])
def test_damaged_index_file_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    generator = torch.Generator().manual_seed(5)
    items, _ = clustered(300, 1, 16, generator)
    params = {"factory": "HNSW8", "ef_search": 16}
    path = index_path(tmp_path, "key", params)
    if damage == "other vectors":  # a file of the same name over a different catalogue
        load_or_build(items[:100], tmp_path, "key", params)
    else:
        load_or_build(items, tmp_path, "key", params)
        data = path.read_bytes()
        path.write_bytes(b"not an index" * 10 if damage == "garbage" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="recsys_bert.index"):
        index, from_disk = load_or_build(items, tmp_path, "key", params)
    assert not from_disk and index.ntotal == 300
    assert "rebuilding" in caplog.text and str(path) in caplog.text
    assert load_or_build(items, tmp_path, "key", params)[1]  # the rebuilt index was written back


def test_index_params_follow_the_catalogue_size():
    assert index_params(5_000, 384) == {"factory": "Flat"}
    refined = {"factory": "IVF4096,PQ192x4fs", "nprobe": NPROBE_REFINED, "k_factor": K_FACTOR}
    assert index_params(1_000_000, 384) == refined  # 4 sqrt(N) lists
    assert index_params(100_000, 384) == {**refined, "factory": "IVF1024,PQ192x4fs", "nprobe": 64}  # a share
    assert index_params(1_000_000, 385) == {"factory": "HNSW32", "ef_search": EF_SEARCH}  # no 2-dim sub-vectors
    assert index_params(10_000_000, 384) == refined  # codes only: 1 GB beside the 15 GB of float32 vectors
    vectors = torch.nn.functional.normalize(torch.randn(300, 16), dim=-1)
    params = {**index_params(5_000, 16), "nprobe": 4, "ef_search": 8, "k_factor": 4}
    assert build_index(vectors, params).ntotal == 300  # search params of other kinds of index are ignored
