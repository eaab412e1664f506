"""Softmax cross-entropy over the positive and its negatives.

Negatives are either shared by the whole step (the other samples' positives, gathered across processes with their
gradient as sentence-transformers' `MultipleNegativesRankingLoss` does, plus sampled items) or per sample (MIND's
non-clicked impressions). A candidate that is the same item as a sample's positive is masked out, never counted as a
negative. A candidate already in the sample's history gets the model's learned repeat bias, as `RecsysBertModel.score`
gives it at ranking time.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad

from recsys_bert.collators import ID_FIELDS
from recsys_bert.modeling import RecsysBertModel


def _gather(tensor: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, int]:
    """All processes' `tensor` concatenated along dim 0, and this process's offset in it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    if with_grad:
        with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated")
            parts = all_gather_with_grad(tensor.contiguous())
    else:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts), dist.get_rank() * tensor.shape[0]


def shared_negatives_loss(
    user_vectors: torch.Tensor,
    positive_vectors: torch.Tensor,
    positive_ids: torch.Tensor,
    negative_vectors: torch.Tensor,
    negative_ids: torch.Tensor,
    temperature: float,
    in_batch: bool = True,
    item_log_frequency: torch.Tensor | None = None,
    history_ids: torch.Tensor | None = None,
    repeat_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each user's positive against the step's shared candidates.

    In-batch candidates are drawn by popularity (they are other samples' positives), so without correction the loss
    teaches the model to rank popular items down. With `item_log_frequency`, each candidate's logit is corrected by
    the log of its expected count among the step's candidates (the logQ correction of sampled softmax, Yi et al.
    2019), which for the mixture of B in-batch and N uniform negatives (Yang et al. 2020) is log(B·p_j + N/|I|),
    whichever pool the candidate came from.

    Args:
        user_vectors (`(batch, dim)`), positive_vectors (`(batch, dim)`), positive_ids (`(batch,)` item ids).
        negative_vectors (`(negatives, dim)`), negative_ids (`(negatives,)`): uniformly sampled items, shared.
        in_batch: also score every process's positives as candidates for every user.
        item_log_frequency (`(items,)`): log of each item's share of the training targets; -inf for an item held
            out of training, which is never drawn (the uniform pool is the other items).
        history_ids (`(batch, length)`, -1 = padding), repeat_bias (`(1,)`): each sample's history and the score
            offset, in cosine units, of candidates in it (`RecsysBertOutput.repeat_bias`).
    """
    batch = user_vectors.shape[0]
    if in_batch:
        candidates, offset = _gather(positive_vectors, with_grad=True)  # (world * batch, dim)
        candidate_ids, _ = _gather(positive_ids, with_grad=False)  # (world * batch,)
        positive_logits = user_vectors @ candidates.T  # (batch, world * batch)
        labels = torch.arange(batch, device=user_vectors.device) + offset  # (batch,)
        candidate_ids = candidate_ids.expand(batch, -1)  # (batch, world * batch)
    else:
        positive_logits = (user_vectors * positive_vectors).sum(-1, keepdim=True)  # (batch, 1)
        labels = torch.zeros(batch, dtype=torch.long, device=user_vectors.device)
        candidate_ids = positive_ids[:, None]  # (batch, 1)
    negative_logits = user_vectors @ negative_vectors.T / temperature  # (batch, negatives)
    positive_logits = positive_logits / temperature
    if in_batch and item_log_frequency is not None:  # each candidate's expected count in the mixture of two pools
        in_batch_count, sampled_count = candidate_ids.shape[1], negative_ids.shape[0]
        uniform = sampled_count / torch.isfinite(item_log_frequency).sum()  # held-out items (-inf) are never drawn

        def log_expected_count(ids: torch.Tensor) -> torch.Tensor:
            return torch.log(in_batch_count * item_log_frequency[ids].exp() + uniform)

        positive_logits = positive_logits - log_expected_count(candidate_ids)
        negative_logits = negative_logits - log_expected_count(negative_ids)
    logits = torch.cat([positive_logits, negative_logits], dim=1)  # (batch, candidates)
    all_ids = torch.cat([candidate_ids, negative_ids.expand(batch, -1)], dim=1)  # (batch, candidates)
    logits = _with_repeat_bias(logits, all_ids, history_ids, repeat_bias, temperature)
    return _masked_cross_entropy(logits, all_ids, positive_ids, labels)


def per_sample_negatives_loss(
    user_vectors: torch.Tensor,
    positive_vectors: torch.Tensor,
    positive_ids: torch.Tensor,
    negative_vectors: torch.Tensor,
    negative_ids: torch.Tensor,
    temperature: float,
    history_ids: torch.Tensor | None = None,
    repeat_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each user's positive against its own negatives (e.g. non-clicked impressions).

    Args:
        negative_vectors (`(batch, negatives, dim)`), negative_ids (`(batch, negatives)`, -1 = padding).
        history_ids, repeat_bias: as in `shared_negatives_loss`.
    """
    candidates = torch.cat([positive_vectors[:, None], negative_vectors], dim=1)  # (batch, 1 + negatives, dim)
    logits = torch.einsum("bd,bnd->bn", user_vectors, candidates) / temperature  # (batch, 1 + negatives)
    all_ids = torch.cat([positive_ids[:, None], negative_ids], dim=1)  # (batch, 1 + negatives)
    labels = torch.zeros_like(positive_ids)
    logits = _with_repeat_bias(logits, all_ids, history_ids, repeat_bias, temperature)
    return _masked_cross_entropy(logits, all_ids, positive_ids, labels)


def _with_repeat_bias(
    logits: torch.Tensor,
    candidate_ids: torch.Tensor,
    history_ids: torch.Tensor | None,
    repeat_bias: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """`logits` `(batch, candidates)` plus `repeat_bias / temperature` where the candidate is in the row's history."""
    if history_ids is None or repeat_bias is None:
        return logits
    # (row, item) pairs as one key each, so that memory follows the step's candidates, not the catalogue's size
    base = int(max(candidate_ids.max(), history_ids.max())) + 1
    rows = torch.arange(len(logits), device=logits.device)[:, None] * base  # (batch, 1)
    history_keys = (rows + history_ids)[history_ids >= 0]  # (history items,)
    repeated = torch.isin(rows + candidate_ids, history_keys) & (candidate_ids >= 0)  # (batch, candidates)
    return logits + repeated * (repeat_bias / temperature)


def _masked_cross_entropy(
    logits: torch.Tensor, candidate_ids: torch.Tensor, positive_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy where candidates equal to the row's positive (other than the label) and padding (-1) are out."""
    is_label = torch.zeros_like(logits, dtype=torch.bool)
    is_label[torch.arange(len(labels), device=logits.device), labels] = True
    masked = ((candidate_ids == positive_ids[:, None]) | (candidate_ids < 0)) & ~is_label  # (batch, candidates)
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits.float(), labels)


def step_loss(
    model: RecsysBertModel,
    batch: dict[str, torch.Tensor],
    temperature: float,
    item_log_frequency: torch.Tensor | None = None,
    in_batch: bool = True,
    impressions: bool = False,
) -> torch.Tensor:
    """The loss of one `TrainCollator` batch: the model's vectors against the step's candidates, with the repeat
    bias on candidates from each sample's history.

    Args:
        item_log_frequency, in_batch: as in `shared_negatives_loss`.
        impressions: each sample has its own negatives (MIND), scored by `per_sample_negatives_loss`.
    """
    output = model(**{key: value for key, value in batch.items() if key not in ID_FIELDS})
    vectors = (output.user_vectors, output.positive_vectors, batch["positive_ids"], output.negative_vectors)
    repeats = {"history_ids": batch["history_ids"], "repeat_bias": output.repeat_bias}
    if impressions:
        return per_sample_negatives_loss(*vectors, batch["negative_ids"], temperature, **repeats)
    return shared_negatives_loss(
        *vectors, batch["negative_ids"], temperature, in_batch, item_log_frequency=item_log_frequency, **repeats
    )
