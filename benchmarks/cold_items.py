"""Items held out of training (`--cold_item_fraction`): is what the trained model loses on them a matter of score
calibration between cold and warm items, which a cold-item offset or a larger text skip for cold items would mend?

For a saved `--cold_item_fraction` run, every valid and test user is scored over the whole catalogue in two parts, the
trained head (its logits, the repeat bias included) and the text skip (the untrained cosine over the score
temperature), once. The items held out of training then get their own skip weight `beta_cold` (the warm items keep
the run's chosen beta) or a score offset `delta` (logits), and NDCG@10 (history kept) is reported on all users, on the
users whose target is a cold item, and on the rest. Where the best `delta` / `beta_cold` on valid for all users is
not 0 / beta, a calibration step would pay; where it is, the cold items' deficit is the head's, not an offset.

    python benchmarks/cold_items.py --model runs/quality/beauty/cold-s42

Nothing is trained; the last line of stdout is one JSON object. Memory: two float32 `(users, items)` matrices per split
(2.2 GB for Beauty's 22,332 users x 12,086 items).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_bert.arguments import parse_args  # noqa: E402
from recsys_bert.catalogue import Catalogue  # noqa: E402
from recsys_bert.collators import EvalCollator  # noqa: E402
from recsys_bert.data import load_data, tokenize_items  # noqa: E402
from recsys_bert.data.cache import cache_root  # noqa: E402
from recsys_bert.evaluation import eval_loader, model_scorer  # noqa: E402
from recsys_bert.metrics import ranking_metrics, target_ranks  # noqa: E402
from recsys_bert.modeling import load_model  # noqa: E402

DELTAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
BETA_COLD = (0.3, 0.35, 0.4, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A train.py --cold_item_fraction output folder.")
    parser.add_argument("--deltas", type=float, nargs="+", default=list(DELTAS), help="Cold-item score offsets.")
    parser.add_argument("--beta_cold", type=float, nargs="+", default=list(BETA_COLD), help="Cold-item skip weights.")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    beta = model.config.text_skip_weight
    if not beta:
        raise SystemExit(f"{args.model} has no text skip (text_skip_weight 0)")
    _, data_args, _ = parse_args(["--config", str(Path(args.model) / "config.yaml")])  # the run's own settings
    data = load_data(data_args, model.config.max_history)
    if data.held_out_items is None:
        raise SystemExit(f"{args.model} was trained with every item (no --cold_item_fraction)")
    catalogue = Catalogue.from_items(tokenize_items(data.items, tokenizer, model.config.max_item_tokens),
                                     tokenizer.pad_token_id)  # fmt: skip
    accelerator = Accelerator(cpu=True)
    catalogue.compute_frozen_states(model, accelerator, 256, cache_dir=cache_root() / "frozen-states")
    model.config.text_skip_weight = 1.0
    full = catalogue.item_vectors(model, accelerator)  # (items, dim + hidden): head part, then the skip part at 1
    head = full[:, : full.shape[1] - model.encoder.config.hidden_size]  # (items, dim)
    cold_item = torch.zeros(len(catalogue), dtype=torch.bool)
    cold_item[torch.as_tensor(data.held_out_items)] = True
    collator = EvalCollator(model.config.max_history, full_history=True)
    found = {}
    for split in ("valid", "test"):
        rows = getattr(data, split)
        parts = []  # per batch: head logits, skip logits at weight 1, targets
        for batch in eval_loader(rows, collator, 256, accelerator):
            with torch.no_grad():
                model.config.text_skip_weight = 0.0
                trained = model_scorer(model, head, accelerator)(batch)  # (users, items)
                model.config.text_skip_weight = 1.0
                skip = model_scorer(model, full, accelerator)(batch) - trained  # (users, items)
            parts.append((trained, skip, batch["target_ids"]))
        cold_users = np.isin(np.asarray(rows["target"]), data.held_out_items)  # (users,)
        found[split] = {
            "delta": {str(d): ndcg(parts, cold_item, cold_users, beta, beta, d) for d in args.deltas},
            "beta_cold": {str(b): ndcg(parts, cold_item, cold_users, beta, b, 0.0) for b in args.beta_cold},
        }
        for kind, grid in found[split].items():
            for value, metrics in grid.items():
                print(f"{split} {kind} {value}: NDCG@10 all {metrics['all']:.4f}, cold {metrics['cold']:.4f}, "
                      f"warm {metrics['warm']:.4f}", flush=True)  # fmt: skip
    best = max(found["valid"]["delta"], key=lambda d: found["valid"]["delta"][d]["all"])
    print(json.dumps({"model": args.model, "beta": beta, "best_delta_on_valid": float(best), "grids": found}))


def ndcg(parts: list, cold_item: torch.Tensor, cold_users: np.ndarray, beta: float, beta_cold: float, delta: float):
    """NDCG@10 (history kept) on all users, the cold-target ones and the rest, with the cold items' skip weighted
    `beta_cold` (the others `beta`) and their scores offset by `delta`."""
    weight = torch.where(cold_item, beta_cold, beta)  # (items,)
    offset = cold_item.float() * delta  # (items,)
    ranks = torch.cat([target_ranks(t + s * weight + offset, y) for t, s, y in parts]).numpy()  # (users,)
    groups = {"all": slice(None), "cold": cold_users, "warm": ~cold_users}
    return {name: round(ranking_metrics(ranks[users], [10])["ndcg@10"], 4) for name, users in groups.items()}


if __name__ == "__main__":
    main()
