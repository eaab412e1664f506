"""Quality on several data sets: recsys-bert variants beside the peers measured on the same splits.

Each data set x variant x seed is one `train.py --config configs/<data>.yaml` run (plus the variant's flags) in
`--runs_dir/<data>/<variant>-s<seed>`; a run whose `metrics.json` exists is read, not trained again. Peers on the
same split, full ranking over the whole catalogue, both protocols (history kept / excluded), ties against the target:
- popularity and the zero-shot recency-weighted mean of the untrained encoder's history vectors (decay chosen on
  valid), by our own code: the baselines every `train.py` run evaluates (`metrics.json`, `test_ranks.json`);
- RecBole's SASRec, from `benchmarks/sasrec.py`'s runs (`runs/peers/sasrec-<data>-s<seed>`), where they exist;
- published figures, as context rows only (never compared).

The best variant is the one with the best mean validation NDCG@10 (test is only reported). Against each peer: the
paired bootstrap 95% interval (over the test users, each system's per-user metric averaged over its seeds) of the
difference and of the ratio of NDCG@10. Written to `benchmarks/results.json` (`quality.<data>`) and drawn in
`benchmarks/quality_<data>.png` (test NDCG@10 against training minutes).

    python benchmarks/sasrec.py --data scientific beauty --seeds 42 1 2      # the peer first
    python benchmarks/quality.py --data scientific beauty --variants frozen --seeds 42 1 2
    python benchmarks/quality.py --quick        # a short run of the whole pipeline on MovieLens, nothing written

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import plots  # noqa: E402

from recsys_bert.metrics import paired_bootstrap, paired_bootstrap_ratio, per_user  # noqa: E402

VARIANTS = {
    # the config as it is: frozen MiniLM (cached item vectors), MLP head, attention user tower, then the text skip
    # (+ beta x the zero-shot cosine, beta chosen on valid after training)
    "frozen": [],
    "noskip": ["--text_skip_weight", "0"],  # the trained head alone
    "top1": ["--finetune_layers", "1"],  # the top encoder layer trains, the lower five are cached
    "all": ["--finetune_layers", "-1"],  # every encoder layer trains
    "text": ["--user_tower", "text", "--finetune_layers", "1"],  # the history's texts through the encoder
    "dropout5": ["--dropout", "0.5"],  # dropout 0.5 in the user tower (SASRec's and RecFormer's), not 0.1
    # all-mpnet-base-v2 frozen (110M, hidden 768): `python benchmarks/fetch_mpnet.py` first
    "mpnet": ["--encoder_name_or_path", ".cache/all-mpnet-base-v2"],
    # MiniLM taught all-mpnet-base-v2's vectors of the data set's item texts: `python benchmarks/distill.py` first
    "distilled": ["--encoder_name_or_path", ".cache/minilm-from-mpnet-{data}"],
    # a random 10% of the items held out of training: test on the users whose target is one (a protocol apart)
    "cold": ["--cold_item_fraction", "0.1"],
    # no config: a user's command, only the data named (`train.py --items --interactions --output_dir`), the
    # shipped defaults for everything else (the text template included)
    "defaults": [],
}
COLD = "cold"
DEFAULTS = "defaults"
DATA_KEYS = ("data_format", "data_dir", "items", "interactions")  # what the defaults run is given of a config
DATASETS = {
    "scientific": "configs/scientific.yaml",
    "beauty": "configs/beauty.yaml",
    "toys": "configs/toys.yaml",
    "movielens": "configs/movielens.yaml",
}
# published on this very split (../shared/data/README.md), RecBole's evaluation, history kept: context, not measured
PUBLISHED = {
    "scientific": {
        "VQ-Rec (WWW 2023)": {"ndcg@10": 0.0643, "recall@10": 0.1211, "ndcg@50": 0.0897, "recall@50": 0.2369},
        "MISSRec, item IDs + pre-training (ACM MM 2023)": {"ndcg@10": 0.0753, "recall@10": 0.1360,
                                                           "ndcg@50": 0.0983, "recall@50": 0.2431},
    },
}  # fmt: skip
METRICS = ("ndcg@10", "recall@10", "ndcg@50", "recall@50", "mrr")
PROTOCOLS = ("history_kept", "history_excluded")
COMPARED = "ndcg@10"
RUN_KEYS = ("machine", "date", "commit", "command")  # what results.json records of the run that wrote an entry
QUICK_FLAGS = ["--max_steps", "20", "--eval_steps", "20", "--max_eval_users", "300", "--max_item_tokens", "32"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", nargs="+", default=["scientific"], choices=list(DATASETS), help="Data sets.")
    parser.add_argument("--variants", nargs="+", default=["frozen"], choices=list(VARIANTS), help="Variants to run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="Training seeds per variant.")
    parser.add_argument("--runs_dir", default="runs/quality", help="Where the runs are (and are written).")
    parser.add_argument("--peers_dir", default="runs/peers", help="Where benchmarks/sasrec.py wrote its runs.")
    parser.add_argument("--machine", default="2-core CPU", help="The machine named in results.json.")
    parser.add_argument(
        "--train_flags",
        nargs=argparse.REMAINDER,
        default=[],
        help="Flags for every train.py run (last on the line), e.g. --max_train_minutes 60.",
    )
    parser.add_argument("--quick", action="store_true", help="MovieLens, 20 steps, 300 users, one seed, temporary.")
    return parser.parse_args()


def train_run(name: str, variant: str, seed: int, folder: Path, extra: list[str]) -> None:
    """Trains one run of data set `name` unless its metrics.json exists."""
    config = DATASETS[name]
    if (folder / "metrics.json").is_file():
        return
    if variant == DEFAULTS:
        settings = yaml.safe_load((ROOT / config).read_text())
        chosen = [f for key in DATA_KEYS if key in settings for f in (f"--{key}", str(settings[key]))]
    else:
        chosen = ["--config", config, *(flag.format(data=name) for flag in VARIANTS[variant])]
    command = [sys.executable, "train.py", *chosen, "--seed", str(seed), "--output_dir", str(folder), *extra]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    (folder / "benchmark.json").write_text(json.dumps({"wall_seconds": round(time.perf_counter() - start, 1)}) + "\n")


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def per_user_mean(rank_lists: list[list[int]]) -> np.ndarray:
    """`(users,)` the compared metric per user, averaged over runs (each a list of target ranks)."""
    return np.mean([per_user(np.asarray(ranks), COMPARED) for ranks in rank_lists], axis=0)


def aligned(users: list[str], ranks: dict[str, list[int]], protocol_index: int) -> list[int]:
    """SASRec's ranks (our user id -> [kept, excluded]) in the order of `users`."""
    missing = [u for u in users if u not in ranks]
    if missing:
        raise SystemExit(f"SASRec's ranks lack {len(missing)} of our test users (e.g. {missing[0]!r})")
    return [ranks[u][protocol_index] for u in users]


def variant_summary(runs: list[tuple[dict, dict]]) -> dict:
    written = [w for w, _ in runs]
    return {
        "runs": len(runs),
        **{p: {m: summarize([w["test"][p][m] for w in written]) for m in METRICS} for p in PROTOCOLS},
        "valid_ndcg@10": summarize([w["valid"][p]["ndcg@10"] for w in written for p in [selected(w)]]),
        "train_minutes": summarize([w["run"]["train_seconds"] / 60 for w in written]),
        "best_steps": [w["protocol"]["best_step"] for w in written],
        "steps": [w["protocol"]["steps"] for w in written],
        "curves": [[(h["seconds"] / 60, h["metrics"][selected(w)]["ndcg@10"]) for h in w["history"]]
                   for w in written],
    }  # fmt: skip


def selected(written: dict) -> str:
    return "history_excluded" if written["protocol"]["history_excluded"] else "history_kept"


def compare(model: np.ndarray, peer: np.ndarray, seed: int = 0) -> dict:
    difference = paired_bootstrap(model, peer, seed=seed)
    ratio = paired_bootstrap_ratio(model, peer, seed=seed)
    return {"metric": COMPARED, "difference": difference, "ratio": ratio}


def data_report(name: str, args: argparse.Namespace, runs_dir: Path, seeds: list[int], extra: list[str]) -> dict:
    config = DATASETS[name]
    variants, ranks = {}, {}
    for variant in args.variants:
        runs = []
        for seed in seeds:
            folder = runs_dir / name / f"{variant}-s{seed}"
            train_run(name, variant, seed, folder, extra)
            written = json.loads((folder / "metrics.json").read_text())
            runs.append((written, json.loads((folder / "test_ranks.json").read_text())))
            print(f"{name} {variant} seed {seed}: " + ", ".join(
                f"{p} NDCG@10 {written['test'][p]['ndcg@10']:.4f}" for p in PROTOCOLS), flush=True)  # fmt: skip
        variants[variant] = {**variant_summary(runs), "seeds": seeds}
        ranks[variant] = [r for _, r in runs]
    cold = cold_report(name, variants.pop(COLD, None), ranks.pop(COLD, None), args)
    if not variants:
        return {"config": config, "seeds": seeds, "cold_items": cold}
    best = max(variants, key=lambda v: variants[v]["valid_ndcg@10"]["mean"])  # chosen on validation
    # the baselines of the first variant asked for (its encoder's zero-shot: the default's for `frozen`), and the best
    # variant's zero-shot where its encoder differs (`zero_shot_mpnet`): the same for every seed
    reference = next(iter(variants))
    first_written = json.loads((runs_dir / name / f"{best}-s{seeds[0]}" / "metrics.json").read_text())
    users = ranks[best][0]["user_id"]
    peers, peer_ranks = {}, {}
    for source in dict.fromkeys([reference, best]):
        written = json.loads((runs_dir / name / f"{source}-s{seeds[0]}" / "metrics.json").read_text())
        for baseline, metrics in written["baselines"].items():
            row = {p: {m: metrics[p][m] for m in METRICS} for p in PROTOCOLS}
            if source != reference and row == peers.get(baseline, {}):
                continue  # popularity: no encoder
            label = baseline if source == reference else f"{baseline}_{source}"
            peers[label] = {**row, **({"decay": metrics["decay"]} if "decay" in metrics else {})}
            peer_ranks[label] = {p: [r] for p, r in ranks[source][0]["baselines"][baseline].items()}
    sasrec_runs = sorted(Path(args.peers_dir).glob(f"sasrec-{name}-s*/summary.json"))
    if sasrec_runs:
        summaries = [json.loads(p.read_text()) for p in sasrec_runs]
        sasrec_ranks = [json.loads((p.parent / "ranks.json").read_text()) for p in sasrec_runs]
        peers["sasrec"] = {
            **{p: {m: summarize([s[p][m] for s in summaries]) for m in METRICS} for p in PROTOCOLS},
            "runs": len(summaries),
            "train_minutes": summarize([s["train_minutes"] for s in summaries]),
            "early_stopped": [s["early_stopped"] for s in summaries],
            "epochs_run": [s["epochs_run"] for s in summaries],
            "recbole_test": [s["recbole_test"] for s in summaries],
        }
        peer_ranks["sasrec"] = {p: [aligned(users, r, i) for r in sasrec_ranks] for i, p in enumerate(PROTOCOLS)}
    for variant in variants:
        if any(variant_ranks["user_id"] != users for variant_ranks in ranks[variant]):
            raise SystemExit(f"{name}: the runs of {variant} and {best} ranked different test users")
        if variant != best:  # the chosen variant against the others, each averaged over its seeds
            peer_ranks[f"recsys-bert {variant}"] = {p: [r[p] for r in ranks[variant]] for p in PROTOCOLS}
    comparisons = {
        peer: {p: compare(per_user_mean([r[p] for r in ranks[best]]), per_user_mean(peer_ranks[peer][p]))
               for p in PROTOCOLS}
        for peer in peer_ranks
    }  # fmt: skip
    return {
        "config": config,
        "users": len(users),
        "items": first_written["protocol"]["items"],
        "seeds": seeds,
        "variants": variants,
        "best": best,
        "peers": peers,
        "published": PUBLISHED.get(name, {}),
        "comparisons": comparisons,
        **({"cold_items": cold} if cold else {}),
    }


def cold_report(name: str, summary: dict | None, runs: list | None, args: argparse.Namespace) -> dict | None:
    """The cold-item column: test NDCG@10 / Recall@10 on the users whose target was held out of training, for
    recsys-bert (the `cold` variant's seeds), its baselines and SASRec trained without those items."""
    if summary is None:
        return None
    written = [json.loads((Path(args.runs_dir) / name / f"{COLD}-s{s}" / "metrics.json").read_text())
               for s in summary["seeds"]]  # fmt: skip
    first = written[0]["test_cold_items"]
    rows = {"recsys-bert": {p: {m: summarize([w["test_cold_items"][p][m] for w in written]) for m in METRICS}
                            for p in PROTOCOLS}}  # fmt: skip
    for baseline, metrics in first.get("baselines", {}).items():
        rows[baseline] = {p: {m: metrics[p][m] for m in METRICS} for p in PROTOCOLS}
    sasrec = [
        json.loads(p.read_text()) for p in sorted(Path(args.peers_dir).glob(f"sasrec-{name}-cold-s*/summary.json"))
    ]
    if sasrec:
        rows["sasrec"] = {p: {m: summarize([s["test_cold_items"][p][m] for s in sasrec]) for m in METRICS}
                          for p in PROTOCOLS}  # fmt: skip
    # paired, on the cold users: recsys-bert (per-user NDCG@10 averaged over seeds) against each baseline
    cold = cold_users(DATASETS[name], runs[0]["user_id"])

    def on_cold(rank_lists: list[list[int]]) -> np.ndarray:
        return per_user_mean([np.asarray(r)[cold] for r in rank_lists])

    comparisons = {
        baseline: {p: compare(on_cold([r[p] for r in runs]), on_cold([runs[0]["baselines"][baseline][p]]))
                   for p in PROTOCOLS}
        for baseline in runs[0]["baselines"]
    }  # fmt: skip
    return {"items": first["items"], "users": first["users"], "seeds": summary["seeds"], "rows": rows,
            "comparisons": comparisons}  # fmt: skip


def cold_users(config: str, users: list[str]) -> np.ndarray:
    """The test users (in the order of `users`, a run's `test_ranks.json`) whose target is one of the items
    `--cold_item_fraction 0.1` holds out (the same for every seed): the split recomputed by our loader."""
    from recsys_bert.arguments import parse_args
    from recsys_bert.data import load_data

    with contextlib.chdir(ROOT):  # the configs' data paths are relative to the checkout, as train.py reads them
        model_args, data_args, _ = parse_args(["--config", config, *VARIANTS[COLD]])
        data = load_data(data_args, model_args.max_history)
    if list(data.test["user_id"]) != users:
        raise SystemExit(f"{config}: the cold runs ranked other test users than the split gives")
    return np.flatnonzero(np.isin(data.test["target"], data.held_out_items))  # (cold users,)


def print_report(name: str, report: dict) -> None:
    cold = report.get("cold_items")
    if cold:
        print(f"\n{name}, cold items: {cold['items']:,} items held out of training, {cold['users']:,} test users with "
              "one as their target (NDCG@10 / Recall@10, history kept | excluded)")  # fmt: skip
        for label, row in cold["rows"].items():
            cells = [row[p][m] for p in PROTOCOLS for m in ("ndcg@10", "recall@10")]
            cells = [f"{c['mean']:.4f} ± {c['std']:.4f}" if isinstance(c, dict) else f"{c:.4f}" for c in cells]
            print(f"| {label} | " + " | ".join(cells) + " |")
        print_comparisons("recsys-bert, cold users", cold["comparisons"])
    if "variants" not in report:
        return
    print(f"\n{name} ({report['users']:,} test users, {report['items']:,} items), test, full ranking")
    print("| method | " + " | ".join(f"{m} kept" for m in METRICS) + " | NDCG@10 excluded | Recall@10 excluded |")
    print("|---" * (len(METRICS) + 3) + "|")

    def cell(value) -> str:
        return f"{value['mean']:.4f} ± {value['std']:.4f}" if isinstance(value, dict) else f"{value:.4f}"

    rows = {f"recsys-bert {v}": r for v, r in report["variants"].items()} | report["peers"]
    for label, row in rows.items():
        kept, excluded = row["history_kept"], row["history_excluded"]
        print(f"| {label} | " + " | ".join(cell(kept[m]) for m in METRICS)
              + f" | {cell(excluded['ndcg@10'])} | {cell(excluded['recall@10'])} |")  # fmt: skip
    for label, row in report["published"].items():
        cells = " | ".join(f"{row[m]:.4f}" if m in row else "" for m in METRICS)
        print(f"| {label} (published) | {cells} | | |")
    print_comparisons(report["best"], report["comparisons"])


def print_comparisons(label: str, comparisons: dict) -> None:
    for peer, protocols in comparisons.items():
        for protocol, c in protocols.items():
            d, r = c["difference"], c["ratio"]
            print(f"- {label} vs {peer}, {protocol}: NDCG@10 {d['difference']:+.4f} [{d['low']:+.4f}, "
                  f"{d['high']:+.4f}], ratio {r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]")  # fmt: skip


def main() -> None:
    args = parse()
    runs_dir = Path(tempfile.mkdtemp(prefix="quality-")) if args.quick else Path(args.runs_dir)
    data = ["movielens"] if args.quick else args.data
    seeds = args.seeds[:1] if args.quick else args.seeds
    extra = [*(QUICK_FLAGS if args.quick else []), *args.train_flags]
    reports = {name: data_report(name, args, runs_dir, seeds, extra) for name in data}
    for name, report in reports.items():
        print_report(name, report)
    if not args.quick:
        results_path = ROOT / "benchmarks" / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        for name, report in reports.items():
            report.update(machine=args.machine, date=date.today().isoformat(), commit=commit.stdout.strip(),
                          command="python " + " ".join(sys.argv))  # fmt: skip
            entries = results.setdefault("quality", {})
            if "variants" in report or "variants" not in entries.get(name, {}):
                entries[name] = report
            else:  # the cold column alone (`--variants cold`): added to the data set's entry, its variants kept
                entries[name]["cold_items"] = {**report["cold_items"], **{k: report[k] for k in RUN_KEYS}}
            if "variants" in report:
                plots.quality_by_data(name, report, ROOT / "benchmarks" / f"quality_{name}.png")
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    summary = {name: {"best": r["best"], "ndcg@10": r["variants"][r["best"]]["history_kept"]["ndcg@10"]["mean"]}
               for name, r in reports.items() if "best" in r}  # fmt: skip
    print(json.dumps({"quick": args.quick, **summary}))


if __name__ == "__main__":
    main()
