"""Diversifying re-ranking of each user's best candidates: maximal marginal relevance or a determinantal point process.

Both take the candidates' relevance in cosine units (the logit times `score_temperature`: dot(user, item) plus the
repeat bias, on the scale of the similarity of two items) and the candidates' unit item vectors, and pick `k`
of them greedily, batched over users. `diversity_lambda` weighs relevance against diversity: 1 is the plain top-K,
0 diversity alone (after the first, most relevant item).
"""

from __future__ import annotations

import math

import torch

POOL = 10  # re-rank the best POOL x k candidates of each user
METHODS = ("mmr", "dpp")


@torch.no_grad()
def mmr(relevance: torch.Tensor, vectors: torch.Tensor, k: int, diversity_lambda: float) -> torch.Tensor:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): each step takes the candidate maximising
    `lambda * relevance - (1 - lambda) * max cosine to the items already taken`.

    Args:
        relevance (`(users, n)`): the candidates' relevance, -inf for a candidate that must come last (excluded).
        vectors (`(users, n, dim)`): their unit vectors.

    Returns:
        The positions of the `min(k, n)` picks in `relevance`'s columns `(users, k)`, in the order taken.
    """
    users, n = relevance.shape
    valid = torch.isfinite(relevance)  # (users, n)
    similarity = vectors @ vectors.transpose(1, 2)  # (users, n, n)
    closest = relevance.new_zeros(users, n)  # (users, n) max cosine to the picks so far (0 before the first)
    taken = torch.zeros_like(valid)
    picks = []
    for _ in range(min(k, n)):
        gain = diversity_lambda * relevance.masked_fill(~valid, 0) - (1 - diversity_lambda) * closest
        # excluded candidates only after every valid one, by relevance; a taken one never again
        gain = torch.where(valid, gain, -1e30 + relevance.nan_to_num(neginf=-1e30)).masked_fill(taken, -torch.inf)
        pick = gain.argmax(dim=1)  # (users,), the first of equal gains: the more relevant (candidates come sorted)
        picks.append(pick)
        taken[torch.arange(users), pick] = True
        picked = similarity[torch.arange(users), pick]  # (users, n)
        closest = picked if len(picks) == 1 else torch.maximum(closest, picked)
    return torch.stack(picks, dim=1)


@torch.no_grad()
def dpp(relevance: torch.Tensor, vectors: torch.Tensor, k: int, diversity_lambda: float) -> torch.Tensor:
    """Greedy MAP inference of a determinantal point process (Chen, Zhang & Zhou 2018, "Fast greedy MAP inference
    for determinantal point process to improve recommendation diversity", Algorithm 1), kernel
    `L_ij = q_i S_ij q_j` with similarity `S = (1 + cosine) / 2` and quality `q_i = exp(alpha * relevance_i)`,
    `alpha = lambda / (2 (1 - lambda))` (their trade-off θ = lambda). Each step adds the candidate that most raises
    `log det L_Y`, by incremental Cholesky; once no candidate adds volume, the rest follow by relevance.

    Args and returns as `mmr`. `diversity_lambda` 1 is the plain top-K.
    """
    users, n = relevance.shape
    k = min(k, n)
    if diversity_lambda >= 1:
        return relevance.argsort(dim=1, descending=True, stable=True)[:, :k]
    valid = torch.isfinite(relevance)  # (users, n)
    alpha = diversity_lambda / (2 * (1 - diversity_lambda))
    top = relevance.masked_fill(~valid, -torch.inf).amax(dim=1, keepdim=True).clamp(min=-1e30)  # (users, 1)
    # q scaled by the user's best: the same for every set of one size, so the greedy choices don't change
    quality = torch.exp(alpha * (relevance.double() - top.double())).masked_fill(~valid, 0)  # (users, n)
    similarity = (1 + vectors.double() @ vectors.double().transpose(1, 2)) / 2  # (users, n, n)
    kernel = quality[:, :, None] * similarity * quality[:, None, :]  # (users, n, n)
    gains = kernel.diagonal(dim1=1, dim2=2).clone()  # (users, n) d_i^2, the volume each candidate would add
    own = gains.clone()  # what is left of a candidate dependent on the picks is rounding, relative to its own norm
    factors = kernel.new_zeros(users, k, n)  # (users, k, n) rows of the incremental Cholesky factor
    rows = torch.arange(users)
    taken = torch.zeros_like(valid)
    fallback = relevance.double().nan_to_num(neginf=-1e300)  # (users, n)
    picks = []
    for step in range(k):
        key = torch.where(gains > 1e-9 * own, gains.clamp(min=1e-300).log(), -1e200 + fallback)
        pick = key.masked_fill(taken, -math.inf).argmax(dim=1)  # (users,)
        picks.append(pick)
        taken[rows, pick] = True
        if step == k - 1:
            break
        # Algorithm 1: e_i = (L_ji - <c_j, c_i>) / d_j; c_i gets e_i; d_i^2 -= e_i^2
        depth = gains[rows, pick].clamp(min=1e-300).sqrt()  # (users,)
        dot = (factors[:, :step, :] * factors[rows, :step, pick][:, :, None]).sum(dim=1)  # (users, n)
        update = (kernel[rows, pick] - dot) / depth[:, None]  # (users, n)
        factors[:, step, :] = update
        gains = gains - update**2
    return torch.stack(picks, dim=1)


def rerank(
    method: str,
    logits: torch.Tensor,
    index: torch.Tensor,
    vectors: torch.Tensor,
    k: int,
    diversity_lambda: float,
    score_temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`k` of each user's candidates (from `retrieval.top_k`, best first), re-ranked by `method`.

    Args:
        logits (`(users, n)`), index (`(users, n)`): the candidates' logits and catalogue indices.
        vectors (`(items, dim)`): the catalogue's item vectors (normalised here: with the text skip they are two
            parts of norm 1 and √β, and the similarity of two items is the cosine of the whole vectors).

    Returns:
        The picks' logits and indices `(users, k)`, in the re-ranked order.
    """
    if method not in METHODS:
        raise ValueError(f"unknown re-ranking '{method}' (use {', '.join(METHODS)})")
    if not 0 <= diversity_lambda <= 1:
        raise ValueError(f"diversity_lambda {diversity_lambda}: must be between 0 and 1")
    relevance = logits.float() * score_temperature  # (users, n), cosine units
    choose = mmr if method == "mmr" else dpp
    candidates = torch.nn.functional.normalize(vectors[index].float(), dim=-1)  # (users, n, dim)
    order = choose(relevance, candidates, k, diversity_lambda)  # (users, k)
    return logits.gather(1, order), index.gather(1, order)
