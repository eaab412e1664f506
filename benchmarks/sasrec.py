"""The SASRec peer: RecBole 1.2.1's SASRec trained on exactly our splits, scored by our metric code.

For each data set (its config under `configs/`), our own loader reads the data; from its rows this script writes
RecBole's input: for 'atomic' data the benchmark files (train / valid / test rows, keyed by our user ids and item
indices), for the rest one `.inter` file with every user's time-ordered sequence (the position as its timestamp),
which RecBole splits itself by leave-one-out in time order (`LS: valid_and_test`, `order: TO`, no filtering). RecBole
needs numpy<2, so it runs in its own venv (`.venv-recbole`, built here on first use). Each seed trains until early
stopping (patience 10 on valid NDCG@10) fires or `--max_minutes` is spent (recorded either way), then
`sasrec_recbole.py` scores the best checkpoint with `recsys_bert.metrics` in both protocols, checks each user's test
target against ours and RecBole's own history-kept numbers against ours.

    python benchmarks/sasrec.py --data scientific beauty toys --seeds 42 1 2
    python benchmarks/sasrec.py --data scientific --quick    # 2 epochs, nothing written to results.json
    python benchmarks/sasrec.py --data beauty --cold_item_fraction 0.1   # 10% of the items held out of training

Per run: `runs/peers/sasrec-<data>-s<seed>/{summary,ranks}.json` (ranks: our user id -> [rank with the history
kept, rank with it excluded], for `quality.py`'s paired intervals). `benchmarks/results.json` gets
`sasrec.<data>` (mean ± std over the seeds). The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VENV = ROOT / ".venv-recbole"
# RecBole 1.2.1 predates numpy 2 (np.float_ and friends) and pandas 2.3; setuptools<81 keeps pkg_resources
RECBOLE_REQUIREMENTS = ["recbole==1.2.1", "numpy<2", "scipy<1.14", "pandas<2.3", "setuptools<81"]
DATASETS = {
    "scientific": "configs/scientific.yaml",
    "beauty": "configs/beauty.yaml",
    "toys": "configs/toys.yaml",
    "movielens": "configs/movielens.yaml",
}
REPORTED = ("ndcg@10", "recall@10", "ndcg@50", "recall@50", "mrr")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", nargs="+", default=["scientific"], choices=list(DATASETS), help="Data sets.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="Training seeds.")
    parser.add_argument("--max_minutes", type=float, default=120, help="Training time cap per run.")
    parser.add_argument("--runs_dir", default="runs/peers", help="Where the runs are (and are written).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default).")
    parser.add_argument(
        "--cold_item_fraction",
        type=float,
        default=0.0,
        help="Hold out the items train.py's --cold_item_fraction holds out (runs named -cold).",
    )
    parser.add_argument("--quick", action="store_true", help="2 epochs of one seed in --runs_dir/quick; no results.")
    return parser.parse_args()


def ensure_venv() -> Path:
    """RecBole's own venv, built once: torch first and pinned (an unpinned one pulls a CUDA build), then RecBole."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed-recbole-1.2.1"
    if stamp.exists():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *RECBOLE_REQUIREMENTS], check=True)
    stamp.touch()
    return python


def write_recbole_data(name: str, folder: Path, cold_item_fraction: float = 0.0) -> tuple[str, dict, int, int, list]:
    """RecBole's input for one data set, from our loader's rows; returns (mode, test users, items, train rows,
    held-out items). Items held out of training (`cold_item_fraction`) need our own training rows: the benchmark
    files then, whatever the format."""
    from recsys_bert.arguments import parse_args
    from recsys_bert.data import load_data

    flags = ["--cold_item_fraction", str(cold_item_fraction)] if cold_item_fraction else []
    model_args, data_args, _ = parse_args(["--config", DATASETS[name], *flags])
    data = load_data(data_args, model_args.max_history)
    folder.mkdir(parents=True, exist_ok=True)
    test = data.test.to_dict()
    test_users = {u: [h, t] for u, h, t in zip(test["user_id"], test["history"], test["target"])}
    held_out = [] if data.held_out_items is None else data.held_out_items.tolist()
    if data_args.data_format == "atomic" or held_out:
        mode = "benchmark"
        for split in ("train", "valid", "test"):
            rows = getattr(data, split).to_dict()
            lines = ["user_id:token\titem_id_list:token_seq\titem_id:token"]
            # our training rows are cut to max_history as the files are; valid/test keep the full history, of
            # which SASRec reads the last 50 (MAX_ITEM_LIST_LENGTH)
            lines += [f"{u}\t{' '.join(map(str, h))}\t{t}" for u, h, t in zip(rows["user_id"], rows["history"],
                                                                            rows["target"])]  # fmt: skip
            (folder / f"{name}.{split}.inter").write_text("\n".join(lines) + "\n")
    else:
        mode = "inter"
        lines = ["user_id:token\titem_id:token\ttimestamp:float"]
        for user, (history, target) in test_users.items():
            lines += [f"{user}\t{item}\t{position}" for position, item in enumerate([*history, target])]
        (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return mode, test_users, len(data.items), len(data.train), held_out


def run_seed(python: Path, name: str, seed: int, args: argparse.Namespace) -> dict:
    cold = "-cold" if args.cold_item_fraction else ""
    folder = Path(args.runs_dir).resolve() / ("quick" if args.quick else f"sasrec-{name}{cold}-s{seed}")
    summary_path = folder / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    data_root = Path(args.runs_dir).resolve() / f"data{cold}"
    mode, test_users, num_items, train_rows, held_out = write_recbole_data(name, data_root / name,
                                                                           args.cold_item_fraction)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    users_path = folder / "test_users.json"
    users_path.write_text(json.dumps(test_users))
    (folder / "held_out_items.json").write_text(json.dumps(held_out))
    command = [str(python), str(ROOT / "benchmarks" / "sasrec_recbole.py"), "--data_path", str(data_root),
               "--dataset", name, "--mode", mode, "--test_users", str(users_path), "--num_items", str(num_items),
               "--seed", str(seed), "--max_minutes", str(args.max_minutes), "--output", str(summary_path),
               "--ranks", str(folder / "ranks.json"), "--checkpoint_dir", str(folder / "saved"),
               "--held_out_items", str(folder / "held_out_items.json"),
               *(["--epochs", "2"] if args.quick else [])]  # fmt: skip
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=folder, check=True, env=env)
    summary = json.loads(summary_path.read_text())
    users_path.unlink()
    if summary["train_rows"] != train_rows:
        raise SystemExit(f"{name}: RecBole trains on {summary['train_rows']} rows, we on {train_rows}")
    return summary


def check_recbole_agrees(name: str, summary: dict) -> float:
    """RecBole's own history-kept test figures against ours from the same checkpoint: the largest difference."""
    ours, theirs = summary["history_kept"], summary["recbole_test"]
    return max(abs(ours[m] - theirs[m]) for m in ("ndcg@10", "recall@10", "ndcg@50", "recall@50"))


def main() -> None:
    args = parse()
    python = ensure_venv()
    seeds = args.seeds[:1] if args.quick else args.seeds
    report = {}
    for name in args.data:
        runs = [run_seed(python, name, seed, args) for seed in seeds]
        gaps = [check_recbole_agrees(name, run) for run in runs]
        row = {"seeds": seeds}
        for protocol in ("history_kept", "history_excluded"):
            row[protocol] = {
                m: {"mean": statistics.fmean(r[protocol][m] for r in runs),
                    "std": statistics.stdev(r[protocol][m] for r in runs) if len(runs) > 1 else 0.0}
                for m in REPORTED
            }  # fmt: skip
        row.update(
            train_minutes=[r["train_minutes"] for r in runs],
            epochs_run=[r["epochs_run"] for r in runs],
            early_stopped=[r["early_stopped"] for r in runs],
            best_valid_ndcg10=[r["best_valid_ndcg@10"] for r in runs],
            recbole_vs_ours_max_difference=max(gaps),
            settings=runs[0]["settings"],
        )
        report[name] = row
        kept, excluded = row["history_kept"], row["history_excluded"]
        print(f"{name}: SASRec NDCG@10 kept {kept['ndcg@10']['mean']:.4f} ± {kept['ndcg@10']['std']:.4f}, "
              f"excluded {excluded['ndcg@10']['mean']:.4f} ± {excluded['ndcg@10']['std']:.4f}; early stopping "
              f"fired {row['early_stopped']}, {row['train_minutes']} min; RecBole vs ours {max(gaps):.1e}",
              flush=True)  # fmt: skip
    if not args.quick:
        results_path = ROOT / "benchmarks" / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        for name, row in report.items():
            row.update(date=date.today().isoformat(), commit=commit.stdout.strip(),
                       command="python " + " ".join(sys.argv))  # fmt: skip
            results.setdefault("sasrec", {})[name] = row
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
