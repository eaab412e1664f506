"""A trained model's score plus beta x the zero-shot score, added after training: does the untrained encoder still
know something the trained model lost?

For a saved run trained without the text skip, the skip is switched on afterwards (`text_skip_weight` = beta,
`text_skip_decay` = the zero-shot decay `metrics.json` chose on valid): every user is scored by the trained model
(its logits, the repeat bias included) plus beta times the zero-shot recommender's cosine (user = the recency-weighted
mean of the history's untrained item vectors) over the score temperature, in one dot product. Each beta is evaluated
on valid and test in both protocols; the beta with the best valid NDCG@10 (history kept) is the one to report.
`train.py` does the same at the end of every run (`--text_skip_weight -1`, its own grid); this script shows a
wider grid and test figures for a run trained with `--text_skip_weight 0`.

    python benchmarks/blend.py --model runs/quality/scientific/noskip-s42 --config configs/scientific.yaml

Nothing is trained; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from accelerate import Accelerator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_bert.arguments import parse_args  # noqa: E402
from recsys_bert.catalogue import Catalogue  # noqa: E402
from recsys_bert.collators import EvalCollator  # noqa: E402
from recsys_bert.data import load_data, tokenize_items  # noqa: E402
from recsys_bert.data.cache import cache_root  # noqa: E402
from recsys_bert.evaluation import eval_loader, evaluate, model_scorer  # noqa: E402
from recsys_bert.modeling import load_model  # noqa: E402

BETAS = (0.0, 0.25, 0.5, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A train.py output folder (with metrics.json).")
    parser.add_argument("--config", required=True, help="The config it was trained with (its data).")
    parser.add_argument("--betas", type=float, nargs="+", default=list(BETAS), help="Weights of the zero-shot score.")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    decay = json.loads((Path(args.model) / "metrics.json").read_text())["baselines"]["zero_shot"].get("decay", 1.0)
    _, data_args, _ = parse_args(["--config", args.config])
    data = load_data(data_args, model.config.max_history)
    catalogue = Catalogue.from_items(tokenize_items(data.items, tokenizer, model.config.max_item_tokens),
                                     tokenizer.pad_token_id)  # fmt: skip
    accelerator = Accelerator(cpu=True)
    if model.config.text_skip_weight:
        raise SystemExit(f"{args.model} was trained with the text skip; blend a model trained without it")
    catalogue.compute_frozen_states(model, accelerator, 256, cache_dir=cache_root() / "frozen-states")
    model.config.text_skip_decay = decay
    collator = EvalCollator(model.config.max_history, full_history=True)
    loaders = {split: eval_loader(getattr(data, split), collator, 256, accelerator) for split in ("valid", "test")}
    found = {}
    for beta in args.betas:
        model.config.text_skip_weight = beta
        scorer = model_scorer(model, catalogue.item_vectors(model, accelerator), accelerator)
        found[beta] = {
            split: {name: {m: metrics[m] for m in ("ndcg@10", "recall@10", "mrr")} for name, metrics in
                    evaluate(scorer, loader, accelerator, [10], f"beta {beta} {split}").items()}
            for split, loader in loaders.items()
        }  # fmt: skip
        valid, test = found[beta]["valid"], found[beta]["test"]
        print(f"beta {beta}: valid NDCG@10 {valid['history_kept']['ndcg@10']:.4f} kept / "
              f"{valid['history_excluded']['ndcg@10']:.4f} excluded; test {test['history_kept']['ndcg@10']:.4f} / "
              f"{test['history_excluded']['ndcg@10']:.4f}, Recall@10 {test['history_kept']['recall@10']:.4f}",
              flush=True)  # fmt: skip
    best = max(found, key=lambda b: found[b]["valid"]["history_kept"]["ndcg@10"])
    print(json.dumps({"model": args.model, "decay": decay, "chosen_beta": best, "betas": found}))


if __name__ == "__main__":
    main()
