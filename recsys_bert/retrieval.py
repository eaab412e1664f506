"""Retrieval: the catalogue's item vectors, cached on disk by model + catalogue content, and the exact top-K over
them in chunks of the catalogue with a running top-K and log-normalizer, so no `users x items` matrix is ever held."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from recsys_bert.catalogue import Catalogue
from recsys_bert.modeling import RecsysBertModel, item_positions
from recsys_bert.utils import atomic_path, one_line

logger = logging.getLogger(__name__)


def fingerprint(model: RecsysBertModel, catalogue: Catalogue, precision: str) -> str:
    """A key of the catalogue's item vectors: the model's config and weights, every item's tokens, the precision."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    digest.update(catalogue.lengths.tobytes())
    for start in range(0, len(catalogue), 1 << 20):  # a block at a time: the tokens may be a memory-mapped file
        digest.update(np.ascontiguousarray(catalogue.input_ids[start : start + (1 << 20)]).tobytes())
    digest.update(precision.encode())
    return digest.hexdigest()[:32]


def catalogue_vectors(
    model: RecsysBertModel,
    catalogue: Catalogue,
    accelerator: Accelerator,
    batch_size: int,
    cache_dir: Path | None,
    cache_key: str | None = None,
) -> tuple[torch.Tensor, bool]:
    """The catalogue's unit item vectors `(items, dim)` on the CPU, and whether they came from the cache.

    Args:
        cache_key: the cache file's name when `fingerprint` can't read the model itself (an int8 copy: its key is
            taken from the model before quantization); default: `fingerprint` of the model at the run's precision.
    """
    path = None
    if cache_dir is not None:
        path = cache_dir / f"{cache_key or fingerprint(model, catalogue, accelerator.mixed_precision)}.safetensors"
        if path.is_file():
            try:
                vectors = load_file(path)["vectors"]
                if vectors.shape[0] == len(catalogue):
                    return vectors, True
            except Exception as err:  # a damaged cache file is recomputed, never fatal
                logger.warning("ignoring the damaged vector cache %s (%s)", path, one_line(err))
    vectors = catalogue.item_vectors(model, accelerator, batch_size).cpu()  # (items, dim)
    if path is not None and accelerator.is_main_process:
        try:
            with atomic_path(path) as tmp:
                save_file({"vectors": vectors.contiguous()}, str(tmp))
        except OSError as err:
            logger.warning("could not write the vector cache %s (%s)", path, err)
    accelerator.wait_for_everyone()
    return vectors, False


def default_vector_cache() -> Path:
    root = os.environ.get("RECSYS_BERT_CACHE")
    return Path(root) / "vectors" if root else Path("~/.cache/recsys_bert/vectors").expanduser()


@torch.no_grad()
def top_k(
    users: torch.Tensor,
    items: torch.Tensor,
    k: int,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    exclude: torch.Tensor | None = None,
    item_chunk_size: int = 100_000,
    ties_against: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` best items per user, scanning the catalogue in chunks (never a whole `users x items` matrix).

    Args:
        users (`(users, dim)`): user vectors.
        items (`(items, dim)`): item vectors.
        score: `score(users, chunk, first_item=start)` -> `(users, chunk)` logits, e.g. `RecsysBertModel.score`
            with the users' `history_ids` bound.
        exclude (`(users, n)`): item indices each user must not get (-1 = padding; indices past `items` are ignored).
        item_chunk_size: items scored at once.
        ties_against (`(users,)`): an item per user (-1 = none) placed after every item with the same score, as
            evaluation ranks a target ("ties broken against the target"), so metrics computed from the lists match.

    Returns:
        logits `(users, k')` best first, their item indices `(users, k')`, and the log of the softmax normalizer over
        the items not excluded `(users,)`; `k' = min(k, items)`, and excluded items only fill rows short of `k'`
        (with logit -inf).
    """
    num_users, num_items = users.shape[0], items.shape[0]
    k = max(1, min(k, num_items))
    best_logits = users.new_full((num_users, 0), -torch.inf)  # (users, <= k)
    best_index = torch.zeros((num_users, 0), dtype=torch.long, device=users.device)
    log_normalizer = users.new_full((num_users,), -torch.inf, dtype=torch.float64)  # (users,), summed over chunks
    for start in range(0, num_items, item_chunk_size):
        logits = score(users, items[start : start + item_chunk_size], first_item=start).float()  # (users, chunk)
        if exclude is not None:
            logits[item_positions(exclude, start, logits.shape[1])] = -torch.inf
        if ties_against is not None:  # one step down to the next float: after its equals, before anything lower
            rows, columns = item_positions(ties_against[:, None], start, logits.shape[1])
            logits[rows, columns] = torch.nextafter(logits[rows, columns], logits.new_tensor(-torch.inf))
        chunk_logits, chunk_index = logits.topk(min(k, logits.shape[1]), dim=1)  # (users, <= k)
        # the chunk's log-sum-exp from topk's row maximum, in place: the logits are not needed any more
        row_max = chunk_logits[:, :1].clamp(min=torch.finfo(logits.dtype).min)  # (users, 1)
        chunk_log_normalizer = row_max[:, 0].double() + logits.sub_(row_max).exp_().sum(dim=1).double().log()
        log_normalizer = torch.logaddexp(log_normalizer, chunk_log_normalizer)
        merged_logits = torch.cat([best_logits, chunk_logits], dim=1)  # (users, <= 2k)
        merged_index = torch.cat([best_index, chunk_index + start], dim=1)
        best_logits, order = merged_logits.topk(min(k, merged_logits.shape[1]), dim=1)  # (users, <= k)
        best_index = merged_index.gather(1, order)
    if ties_against is not None:  # the moved item's own score back
        moved = best_index == ties_against[:, None]
        best_logits[moved] = torch.nextafter(best_logits[moved], best_logits.new_tensor(torch.inf))
    return best_logits, best_index, log_normalizer.float()
