"""Diversifying re-ranking: test NDCG@10 against intra-list diversity and catalogue coverage as lambda goes 0 -> 1.

For each user of the split, the trained model's best `rerank.POOL x 10` items (the ranking recommend.py makes, with
the config's `exclude_history`) are re-ranked by MMR and by the DPP (`recsys_bert.rerank`) for each lambda; the top
10 are scored against the user's target (NDCG@10, Recall@10, a target outside the pool counts 0) and measured as
evaluation measures every list (`recsys_bert.metrics.beyond_accuracy`: diversity on the untrained encoder's vectors,
coverage, tail share, novelty). Lambda 1 is the plain top-10: its NDCG@10 is the model's own test figure.

    python benchmarks/diversity.py --model runs/movielens --config configs/movielens.yaml
    python benchmarks/diversity.py --model runs/scientific --config configs/scientific.yaml

Writes benchmarks/diversity_<data>.json and .png (NDCG@10 against diversity and against coverage).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAMBDAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--split", default="test", choices=["test", "valid"])
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()

    import numpy as np
    import torch
    from accelerate import Accelerator

    from recsys_bert.arguments import DataArguments, RecommendArguments, parse_settings
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.evaluation import user_vectors
    from recsys_bert.metrics import beyond_accuracy
    from recsys_bert.modeling import load_model
    from recsys_bert.recommender import load_catalogue, user_collator
    from recsys_bert.rerank import POOL, rerank
    from recsys_bert.retrieval import catalogue_vectors, default_vector_cache, top_k
    from recsys_bert.trainer import item_statistics, zero_shot_item_vectors

    data_args, settings = parse_settings(["--config", args.config], (DataArguments, RecommendArguments), "")
    accelerator = Accelerator(cpu=True)
    model, tokenizer = load_model(args.model)
    config = model.config
    if config.finetune_layers != 0:
        sys.exit("the diversity ruler is the untrained encoder's vectors: this script reads them from a frozen model")
    items, data, _ = load_catalogue(data_args, tokenizer, config)
    catalogue = Catalogue.from_items(items, tokenizer.pad_token_id)
    vectors, _ = catalogue_vectors(model, catalogue, accelerator, 256, default_vector_cache())
    statistics = item_statistics(data, data_args, zero_shot_item_vectors(model, catalogue, accelerator, 256))
    rows = data.test if args.split == "test" else data.valid
    collator = user_collator(config, settings.exclude_history, catalogue)
    k, temperature = 10, config.score_temperature
    lists = {(m, lam): [] for m in ("mmr", "dpp") for lam in args.lambdas}
    ranks = {key: [] for key in lists}
    start = time.perf_counter()
    for begin in range(0, len(rows), args.batch_size):
        part = rows[begin : begin + args.batch_size]
        batch_rows = [dict(zip(part, values)) for values in zip(*part.values())]
        batch = collator(batch_rows)
        users = user_vectors(model, batch, vectors, accelerator)  # (users, dim)
        exclude, targets = batch.get("full_history_ids"), batch["target_ids"]
        if exclude is not None:
            exclude = exclude.masked_fill(exclude == targets[:, None], -1)
        score = partial(model.score, history_ids=batch["history_ids"])
        logits, index, _ = top_k(users, vectors, POOL * k, score, exclude, ties_against=targets)  # (users, pool)
        for method, lam in lists:
            _, picked = rerank(method, logits, index, vectors, k, lam, temperature)  # (users, k)
            lists[method, lam].append(picked.numpy())
            hit = picked == targets[:, None]  # (users, k)
            ranks[method, lam].append(torch.where(hit.any(1), hit.float().argmax(1) + 1, 10**9).numpy())
    seconds = time.perf_counter() - start
    results = []
    for method, lam in lists:
        picked, rank = np.concatenate(lists[method, lam]), np.concatenate(ranks[method, lam])
        beyond = beyond_accuracy(picked, statistics)
        results.append(
            {
                "method": method,
                "lambda": lam,
                "ndcg@10": float(np.where(rank <= k, 1 / np.log2(rank + 1), 0).mean()),
                "recall@10": float((rank <= k).mean()),
                **beyond,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    name = Path(data_args.data_dir or data_args.interactions).name
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "config": args.config,
        "split": args.split,
        "users": len(rows),
        "exclude_history": settings.exclude_history,
        "pool": POOL * k,
        "seconds": round(seconds, 1),
        "results": results,
    }
    path = ROOT / "benchmarks" / f"diversity_{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    plot(out, path.with_suffix(".png"), name)
    print(json.dumps({"written": str(path)}))


def plot(out: dict, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (("mmr", "o-"), ("dpp", "s--")):
        rows = [r for r in out["results"] if r["method"] == method]
        for ax, key in zip(axes, ("diversity@10", "coverage@10")):
            ax.plot([r[key] for r in rows], [r["ndcg@10"] for r in rows], marker, label=method.upper())
            for r in rows:
                if r["lambda"] in (0.0, 0.5, 0.8, 1.0):
                    ax.annotate(f"λ={r['lambda']:g}", (r[key], r["ndcg@10"]), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)  # fmt: skip
    for ax, label in zip(axes, ("intra-list diversity@10 (untrained encoder's cosines)", "catalogue coverage@10")):
        ax.set_xlabel(label)
        ax.set_ylabel(f"test NDCG@10 ({'history excluded' if out['exclude_history'] else 'history kept'})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{name}: re-ranking the best {out['pool']} items, {out['users']} test users")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
