"""Faithfulness of the explanations by deletion: does leaving out the top-attributed history item lower a
recommendation's score more than leaving out a random one?

For each user of the split (at most `--max_users`, the first ones), the model's top 10 (the config's
`exclude_history`) are explained over every item of the recent history (`recsys_bert.explain`); for each
recommendation, the drop of its logit without the top-attributed item is compared with the drop without a random
history item (seeded), and, to see whether the explanation changes what is shown, with how often the item leaves the
user's top 10 when that history item is left out (the whole catalogue re-ranked for the shorter history).

    python benchmarks/explain.py --model runs/movielens --config configs/movielens.yaml
    python benchmarks/explain.py --model runs/scientific --config configs/scientific.yaml

Writes benchmarks/explain_<data>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--split", default="test", choices=["test", "valid"])
    parser.add_argument("--max_users", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    from accelerate import Accelerator

    from recsys_bert.arguments import DataArguments, RecommendArguments, parse_settings
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.evaluation import user_vectors
    from recsys_bert.explain import explain
    from recsys_bert.modeling import load_model
    from recsys_bert.recommender import load_catalogue, rank, user_collator
    from recsys_bert.retrieval import catalogue_vectors, default_vector_cache

    data_args, settings = parse_settings(["--config", args.config], (DataArguments, RecommendArguments), "")
    accelerator = Accelerator(cpu=True)
    model, tokenizer = load_model(args.model)
    config = model.config
    items, data, _ = load_catalogue(data_args, tokenizer, config)
    catalogue = Catalogue.from_items(items, tokenizer.pad_token_id)
    vectors, _ = catalogue_vectors(model, catalogue, accelerator, 256, default_vector_cache())
    rows = data.test if args.split == "test" else data.valid
    rows = rows.select(range(min(args.max_users, len(rows))))
    collator = user_collator(config, settings.exclude_history, catalogue)
    rng = np.random.default_rng(args.seed)
    k = 10
    drops = {"top": [], "random": []}
    left = {"top": [], "random": []}
    shares = []
    start = time.perf_counter()
    for begin in range(0, len(rows), args.batch_size):
        part = rows[begin : begin + args.batch_size]
        batch_rows = [{"history": h} for h in part["history"]]
        batch = collator(batch_rows)
        users = user_vectors(model, batch, vectors, accelerator)  # (users, dim)
        logits, index, _ = rank(model, batch, users, vectors, k)  # (users, k)
        reasons = explain(model, batch_rows, index, logits, vectors, collator, accelerator, config.max_history)
        variants, owners, columns, kinds = [], [], [], []
        for user, (row, per_item) in enumerate(zip(batch_rows, reasons)):
            for column, because in enumerate(per_item):
                if not because:
                    continue
                random_pick = because[rng.integers(len(because))]
                for kind, (removed, drop, _) in (("top", because[0]), ("random", random_pick)):
                    drops[kind].append(drop)
                    variants.append({"history": [h for h in row["history"] if h != removed]})
                    owners.append(user)
                    columns.append(column)
                    kinds.append(kind)
                shares.append(because[0][2])
        # does the item leave the top 10 of the shorter history? (the whole catalogue re-ranked)
        for start_variant in range(0, len(variants), args.batch_size):
            chunk = slice(start_variant, start_variant + args.batch_size)
            shorter = collator(variants[chunk])
            if "full_history_ids" in shorter:  # the original history stays excluded: the lists are comparable
                shorter["full_history_ids"] = batch["full_history_ids"][owners[chunk]]
            variant_users = user_vectors(model, shorter, vectors, accelerator)
            _, variant_index, _ = rank(model, shorter, variant_users, vectors, k)  # (variants, k)
            items_shown = index[owners[chunk], columns[chunk]]  # (variants,)
            still = (variant_index == items_shown[:, None]).any(dim=1)
            for kind, kept in zip(kinds[chunk], still.tolist()):
                left[kind].append(not kept)
    seconds = time.perf_counter() - start
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "config": args.config,
        "split": args.split,
        "users": len(rows),
        "recommendations": len(drops["top"]),
        "exclude_history": settings.exclude_history,
        "mean_drop_top": float(np.mean(drops["top"])),
        "mean_drop_random": float(np.mean(drops["random"])),
        "left_top10_top": float(np.mean(left["top"])),
        "left_top10_random": float(np.mean(left["random"])),
        "mean_share_top": float(np.mean(shares)),
        "mean_recent_history": float(np.mean([min(len(r["history"]), config.max_history) for r in rows])),
        "seconds": round(seconds, 1),
    }
    name = Path(data_args.data_dir or data_args.interactions).name
    (ROOT / "benchmarks" / f"explain_{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
