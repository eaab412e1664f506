"""Quality on Amazon Scientific: recsys-bert variants beside the peers measured on the same split.

Each variant x seed is one `train.py --config configs/scientific.yaml` run (plus the variant's flags) in
`--runs_dir/<variant>-s<seed>`; a run whose `metrics.json` exists is read, not trained again. For each run: test
NDCG@10, Recall@10 and MRR with the history kept in the ranking (the peers' protocol) and with the history excluded
(both from `metrics.json`), validation NDCG@10 of the best step, and the training wall time. Reported as mean ± std
over the seeds, beside the peers of `../shared/data/README.md`; the best variant is the one with the best mean
validation NDCG@10 (test is only reported). Written to `benchmarks/results.json` and drawn in
`benchmarks/quality.png` (NDCG@10 against training minutes).

    python benchmarks/quality.py --variants frozen --seeds 42 1 2
    python benchmarks/quality.py --quick        # a short run of the whole pipeline (CI-sized), nothing written

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import plots  # noqa: E402

VARIANTS = {
    "frozen": [],  # configs/scientific.yaml: frozen MiniLM (cached item vectors), MLP head, attention user tower
    "top1": ["--finetune_layers", "1"],  # the top encoder layer trains, the lower five are cached
    "all": ["--finetune_layers", "-1"],  # every encoder layer trains
    "text": ["--user_tower", "text", "--finetune_layers", "1"],  # the history's texts through the encoder
}
# measured on this very split (../shared/data/README.md); test, full ranking, history kept (and excluded)
PEERS = {
    "popularity": {
        "ndcg@10": 0.0171, "recall@10": 0.0309, "mrr": 0.0174,
        "history_excluded": {"ndcg@10": 0.0180, "recall@10": 0.0316},
    },
    "zero-shot MiniLM, recency-weighted mean": {
        "ndcg@10": 0.0518, "recall@10": 0.1013, "mrr": 0.0418,
        "history_excluded": {"ndcg@10": 0.0746, "recall@10": 0.1121},
    },
    "SASRec (RecBole, 25 min, 2 CPU cores)": {
        "ndcg@10": 0.0561, "recall@10": 0.0980, "mrr": 0.0497, "minutes": 25,
        "history_excluded": {"ndcg@10": 0.0740, "recall@10": 0.1053},
    },
}  # fmt: skip
METRICS = ("ndcg@10", "recall@10", "mrr")
QUICK_FLAGS = ["--max_steps", "20", "--eval_steps", "20", "--max_eval_users", "300", "--run_baselines", "false",
               "--max_item_tokens", "32"]  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["frozen"], choices=list(VARIANTS), help="Variants to run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="Training seeds per variant.")
    parser.add_argument("--config", default="configs/scientific.yaml", help="The training config of every run.")
    parser.add_argument("--runs_dir", default="runs/quality", help="Where the runs are (and are written).")
    parser.add_argument("--machine", default="2-core CPU", help="The machine named in results.json.")
    parser.add_argument("--device_kind", default="cpu", choices=["cpu", "gpu"], help="results.json's section.")
    parser.add_argument("--quick", action="store_true", help="20 steps, 300 users, one seed, in a temporary folder.")
    return parser.parse_args()


def train_run(config: str, variant: str, seed: int, folder: Path, extra: list[str]) -> float | None:
    """Trains one run unless its metrics.json exists; returns the training wall seconds (None if read)."""
    if (folder / "metrics.json").is_file():
        return None
    command = [sys.executable, "train.py", "--config", config, *VARIANTS[variant], "--seed", str(seed),
               "--output_dir", str(folder), *extra]  # fmt: skip
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - start
    (folder / "benchmark.json").write_text(json.dumps({"wall_seconds": round(seconds, 1)}) + "\n")
    return seconds


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    args = parse()
    runs_dir = Path(tempfile.mkdtemp(prefix="quality-")) if args.quick else Path(args.runs_dir)
    seeds = args.seeds[:1] if args.quick else args.seeds
    extra = QUICK_FLAGS if args.quick else []
    variants = {}
    for variant in args.variants:
        kept = {metric: [] for metric in METRICS}
        excluded = {metric: [] for metric in ("ndcg@10", "recall@10")}
        valid = []
        minutes = []
        for seed in seeds:
            folder = runs_dir / f"{variant}-s{seed}"
            train_run(args.config, variant, seed, folder, extra)
            written = json.loads((folder / "metrics.json").read_text())
            test = written["test"]  # both protocols, from one set of scores
            valid.append(written["valid"]["history_kept"]["ndcg@10"])
            for metric in METRICS:
                kept[metric].append(test["history_kept"][metric])
            for metric in excluded:
                excluded[metric].append(test["history_excluded"][metric])
            timing = folder / "benchmark.json"
            if timing.is_file():
                minutes.append(json.loads(timing.read_text())["wall_seconds"] / 60)
            print(f"{variant} seed {seed}: kept {({m: round(v[-1], 4) for m, v in kept.items()})}, excluded "
                  f"{({m: round(v[-1], 4) for m, v in excluded.items()})}", flush=True)  # fmt: skip
        variants[variant] = {
            "runs": len(seeds),
            "seeds": seeds,
            "kept": {metric: summarize(values) for metric, values in kept.items()},
            "excluded": {metric: summarize(values) for metric, values in excluded.items()},
            "valid_ndcg@10": summarize(valid),
            **({"train_minutes": summarize(minutes)} if minutes else {}),
        }
    print("\n| variant | seeds | NDCG@10 | Recall@10 | MRR | NDCG@10, history excluded | train minutes |")
    print("|---|---|---|---|---|---|---|")
    for name, result in variants.items():
        cells = [f"{result['kept'][m]['mean']:.4f} ± {result['kept'][m]['std']:.4f}" for m in METRICS]
        excluded = result["excluded"]["ndcg@10"]
        train_minutes = result.get("train_minutes", {}).get("mean")
        print(f"| {name} | {result['runs']} | {' | '.join(cells)} | {excluded['mean']:.4f} ± {excluded['std']:.4f} | "
              f"{'' if train_minutes is None else f'{train_minutes:.1f}'} |")  # fmt: skip
    for name, peer in PEERS.items():
        excluded = peer["history_excluded"]["ndcg@10"]
        print(f"| {name} | | {peer['ndcg@10']:.4f} | {peer['recall@10']:.4f} | {peer['mrr']:.4f} | {excluded:.4f} | |")
    best = max(variants.values(), key=lambda r: r["valid_ndcg@10"]["mean"])  # chosen on validation
    figures = {metric: round(best["kept"][metric]["mean"], 4) for metric in METRICS}
    summary = {"variants": variants, "best": figures, "quick": args.quick}
    if not args.quick:
        results_path = ROOT / "benchmarks" / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        results.setdefault("scientific", {})[args.device_kind] = {
            **figures,
            "std": {metric: round(best["kept"][metric]["std"], 4) for metric in METRICS},
            "history_excluded": {m: round(best["excluded"][m]["mean"], 4) for m in best["excluded"]},
            "variant": next(name for name, r in variants.items() if r is best),
            "seeds": best["seeds"],
            "protocol": "test split, full ranking over 4,385 items, history kept, ties against the target",
            "machine": args.machine,
            "date": date.today().isoformat(),
            "commit": commit.stdout.strip(),
            "command": "python " + " ".join(sys.argv),
        }
        results["scientific"]["peers"] = PEERS
        results["scientific"].setdefault("variants" if args.device_kind == "cpu" else "gpu_variants", {}).update(
            variants
        )
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        plots.quality(results["scientific"], ROOT / "benchmarks" / "quality.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
