"""Diversifying re-ranking: lambda 1 is the plain top-K, MMR and the DPP's greedy steps against direct computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys_bert.rerank import dpp, mmr, rerank
from recsys_bert.retrieval import top_k


def _candidates(seed: int = 0, users: int = 5, items: int = 60, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    vectors = F.normalize(torch.randn(items, dim, generator=generator), dim=-1)
    users_ = F.normalize(torch.randn(users, dim, generator=generator), dim=-1)
    return users_, vectors


def _score(users, chunk, first_item=0):
    return users @ chunk.T / 0.05


@pytest.mark.parametrize("method", ["mmr", "dpp"])
def test_lambda_one_is_the_plain_top_k(method):
    users, vectors = _candidates()
    exclude = torch.tensor([[0, 1, -1]] * len(users))
    logits, index, _ = top_k(users, vectors, 30, _score, exclude)
    plain_logits, plain_index, _ = top_k(users, vectors, 6, _score, exclude)
    got_logits, got_index = rerank(method, logits, index, vectors, 6, 1.0, 0.05)
    assert torch.equal(got_index, plain_index) and torch.equal(got_logits, plain_logits)


def test_mmr_by_hand():
    # a and b near-duplicates, both more relevant than c, which points elsewhere
    vectors = F.normalize(torch.tensor([[[1.0, 0.0], [0.99, 0.141], [0.0, 1.0]]]), dim=-1)  # (1, 3, 2)
    relevance = torch.tensor([[0.9, 0.85, 0.5]])
    # lambda .5: a (.45), then b: .425 - .5 * .99 = -.07 against c: .25 - 0 = .25, so c; then b
    assert mmr(relevance, vectors, 3, 0.5).tolist() == [[0, 2, 1]]
    # lambda .9: b's .765 - .1 * .99 = .666 beats c's .45
    assert mmr(relevance, vectors, 3, 0.9).tolist() == [[0, 1, 2]]
    # lambda 0: diversity alone after the first pick
    assert mmr(relevance, vectors, 2, 0.0).tolist() == [[0, 2]]


def test_excluded_candidates_come_last():
    vectors = F.normalize(torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    relevance = torch.tensor([[0.9, -torch.inf, 0.5, 0.4]])
    for choose in (mmr, dpp):
        picks = choose(relevance, vectors, 4, 0.3)[0].tolist()
        assert picks[-1] == 1 and sorted(picks) == [0, 1, 2, 3]


def test_dpp_greedy_steps_maximise_the_log_determinant():
    """Each pick of the incremental-Cholesky greedy is the candidate whose addition gives the largest log det of
    the kernel's submatrix, computed directly."""
    generator = torch.Generator().manual_seed(3)
    vectors = F.normalize(torch.randn(2, 12, 6, generator=generator, dtype=torch.float64), dim=-1)
    relevance = torch.rand(2, 12, generator=generator, dtype=torch.float64)
    lam = 0.6
    alpha = lam / (2 * (1 - lam))
    picks = dpp(relevance, vectors, 5, lam)
    for user in range(2):
        quality = torch.exp(alpha * relevance[user])
        kernel = quality[:, None] * (1 + vectors[user] @ vectors[user].T) / 2 * quality[None, :]
        chosen = []
        for pick in picks[user].tolist():
            gains = {
                i: torch.logdet(kernel[chosen + [i]][:, chosen + [i]]).item() for i in range(12) if i not in chosen
            }
            best = max(gains, key=gains.get)
            ranked = sorted(gains.values(), reverse=True)
            assert ranked[0] - ranked[1] > 1e-6  # no near-tie: the direct argmax is unambiguous
            assert pick == best
            chosen.append(pick)


def test_diversification_trades_relevance_for_spread():
    users, vectors = _candidates(seed=4, users=20, items=200)
    logits, index, _ = top_k(users, vectors, 100, _score)

    def spread(picked):  # mean pairwise cosine distance of each list
        v = vectors[picked]  # (users, k, dim)
        sim = v @ v.transpose(1, 2)
        k = picked.shape[1]
        return (1 - sim).sum(dim=(1, 2)).div(k * (k - 1)).mean().item()

    plain = spread(index[:, :10])
    for method in ("mmr", "dpp"):
        got_logits, got_index = rerank(method, logits, index, vectors, 10, 0.3, 0.05)
        assert spread(got_index) > plain
        assert got_logits.mean() < logits[:, :10].mean()


def test_bad_settings_are_clear_errors():
    users, vectors = _candidates()
    logits, index, _ = top_k(users, vectors, 10, _score)
    with pytest.raises(ValueError, match="between 0 and 1"):
        rerank("mmr", logits, index, vectors, 5, 1.5, 0.05)
    with pytest.raises(ValueError, match="unknown re-ranking"):
        rerank("random", logits, index, vectors, 5, 0.5, 0.05)
