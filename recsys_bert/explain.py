"""Explanations by deletion: which history items drove a recommendation, and by how much.

A history item's attribution to a recommended item is the drop of that item's score (its logit) when the history
item is left out of the user's history: the user vector recomputed from the history without it (either user tower,
the older items moving up as they would), the repeat bias recomputed on that history. Exact, not an approximation:
the score of the shorter history is the score the model gives it. It costs one user-tower pass per distinct item of
the recent history (the `max_history` items the model sees), for all of the user's recommendations at once.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator

from recsys_bert.collators import EvalCollator
from recsys_bert.evaluation import user_vectors
from recsys_bert.modeling import RecsysBertModel


def deletion_rows(rows: list[dict], max_history: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Each user's history without one item, for every distinct item of its recent history.

    Args:
        rows: `{"history": [item index, ...]}` oldest first.

    Returns:
        The shorter histories (`{"history": ...}`), the row each came from `(m,)`, and the item it leaves out `(m,)`.
    """
    variants, owners, removed = [], [], []
    for owner, row in enumerate(rows):
        history = [int(item) for item in row["history"]]
        for item in dict.fromkeys(reversed(history[-max_history:])):  # distinct, most recent first
            variants.append({"history": [other for other in history if other != item]})
            owners.append(owner)
            removed.append(item)
    return variants, np.asarray(owners, dtype=np.int64), np.asarray(removed, dtype=np.int64)


@torch.no_grad()
def explain(
    model: RecsysBertModel,
    rows: list[dict],
    recommended: torch.Tensor,
    logits: torch.Tensor,
    vectors: torch.Tensor,
    collator: EvalCollator,
    accelerator: Accelerator,
    top_n: int,
    batch_size: int = 256,
) -> list[list[list[tuple[int, float, float]]]]:
    """The `top_n` history items that drove each recommendation.

    Args:
        rows: the users' rows (`{"history": [item index, ...]}` oldest first), as ranked.
        recommended (`(users, k)`): the recommended items' indices (-1 = none).
        logits (`(users, k)`): their scores from the whole history.
        vectors (`(items, dim)`): the item vectors `history` and `recommended` index.
        collator: the `EvalCollator` the users were ranked with (it builds the 'text' tower's tokens).

    Returns:
        Per user, per recommended item, up to `top_n` `(history item index, drop, share)`, largest drop first:
        `drop` = the item's logit minus its logit without that history item; `share` = the drop over the sum of the
        positive drops of all the user's history items for that recommendation (0 where none is positive).
    """
    variants, owners, removed = deletion_rows(rows, collator.max_history)
    k = recommended.shape[1]
    drops = torch.empty((len(variants), k), dtype=torch.float32)  # (variants, k)
    for start in range(0, len(variants), batch_size):
        part = variants[start : start + batch_size]
        batch = {key: value.to(vectors.device) for key, value in collator(part).items()}
        users = user_vectors(model, batch, vectors, accelerator)  # (part, dim)
        owner = torch.from_numpy(owners[start : start + len(part)]).to(vectors.device)
        items = recommended[owner].clamp(min=0)  # (part, k)
        shorter = model.score_candidates(users, vectors[items], items, batch["history_ids"]).float()  # (part, k)
        drops[start : start + len(part)] = (logits[owner].float() - shorter).cpu()
    result = []
    for user in range(len(rows)):
        mine = np.flatnonzero(owners == user)
        user_drops = drops[mine]  # (history items, k)
        total = user_drops.clamp(min=0).sum(dim=0)  # (k,)
        order = user_drops.argsort(dim=0, descending=True, stable=True)[:top_n]  # (<= top_n, k)
        per_item = []
        for column in range(k):
            if recommended[user, column] < 0:
                per_item.append([])
                continue
            picks = order[:, column].tolist()
            per_item.append(
                [
                    (
                        int(removed[mine[p]]),
                        float(user_drops[p, column]),
                        float(user_drops[p, column] / total[column]) if total[column] > 0 else 0.0,
                    )
                    for p in picks
                ]
            )
        result.append(per_item)
    return result
