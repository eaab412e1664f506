"""Feedback -> update -> recommend again: does continuing a trained model on new interactions (`train.py
--init_from`) beat the stale model and come near a model retrained from scratch, in a fraction of its time?

Each log is split by global time at the 80% and 90% quantiles of its timestamps into P1 (train), P2 (new feedback)
and P3 (test). Three models, one recipe (the frozen MiniLM and heads of `configs/movielens.yaml`, one epoch):

- stale: trained on P1's targets (`--valid_since P2 --test_since P3`: its valid rows are P2's holdout);
- updated: the stale model continued on P2's targets (`--init_from stale --train_since P2`, a fresh optimizer),
  histories holding P1 too, with the update recipe (learning rate, epochs, replayed share of P1's targets) chosen on
  validation by `--tune`, or half the learning rate and two epochs of P2 without it;
- retrained: from scratch on the targets of P1 and P2.

All three are tested by our own evaluation code on the same rows, P3's (each user's first target at or after the
second cut, the history everything before it), over the same whole catalogue, in both protocols, with the slices of
new users (no interaction before P2) and new items (targets without an interaction before P2), and a paired
bootstrap of the per-user NDCG@10. Also: P2's holdout (each user's first target in P2) and forgetting, the stale and
the updated model on P1's last stretch (each user's first target in [q70%, q80%)), which the stale model trained on.

`--tune` chooses the update recipe before P3 is looked at: P2 is cut again at the 85% quantile into P2a and P2b, each
recipe of `UPDATE_GRID` continues the first seed's stale model on P2a's targets, and the one with the best NDCG@10 on
P2b's holdout (each user's first target in P2b), among the recipes whose training rows on P2 (epochs x (P2's targets
+ the replayed share of P1's), counted from the log before any training) stay within a third of the retrained
model's one epoch over P1 and P2 (the time target), is the recipe of every seed's update on P2. A model retrained on
P1 and P2a is the reference on P2b.

    nice -n 10 python benchmarks/update.py                        # both data sets, seed 42
    python benchmarks/update.py --data beauty --seeds 42 1 2 --max_train_minutes 0 --tune

Writes `benchmarks/update_results.json` and a Markdown section (`--markdown`); a run whose metrics.json exists in
`--runs_dir` is read, not trained again (its wall time is the one recorded then).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "movielens": {
        "flags": ["--data_format", "movielens", "--data_dir", str(ROOT / "data" / "ml-latest-small")],
        "log": (ROOT / "data" / "ml-latest-small" / "ratings.csv", "userId", "movieId"),
    },
    "beauty": {
        "flags": [
            "--items",
            str(SHARED / "amazon-beauty" / "items.csv"),
            "--interactions",
            str(SHARED / "amazon-beauty" / "interactions.csv"),
            "--text_template",
            "{title}",
        ],  # fmt: skip
        "log": (SHARED / "amazon-beauty" / "interactions.csv", "user_id", "item_id"),
    },
}
# configs/movielens.yaml's model and step, the encoder frozen; validation only at the end (no choice on P2 or P3)
RECIPE = ["--finetune_layers", "0", "--projection_dim", "128", "--user_layers", "1", "--max_history", "30",
          "--max_item_tokens", "32", "--per_device_train_batch_size", "256", "--num_negatives", "256",
          "--exclude_history", "--eval_steps", "0", "--run_baselines", "false", "--logging_steps", "50",
          "--num_train_epochs", "1"]  # fmt: skip
LEARNING_RATE = 2e-3
QUANTILES = (0.7, 0.8, 0.9)  # P1's last stretch, P2, P3
TUNE_QUANTILE = 0.85  # --tune: P2 = P2a (update's training) + P2b (validation)
DEFAULT_UPDATE = {"lr_scale": 0.5, "epochs": 2, "replay_fraction": 0.0}
# all are trained on P2a; only those within the time budget on P2 (`within_budget`) can be chosen
UPDATE_GRID = [{"lr_scale": lr, "epochs": epochs, "replay_fraction": replay} for lr in (0.5, 1.0, 2.0)
               for epochs, replay in ((2, 0.0), (3, 0.0), (2, 0.05))]  # fmt: skip
METRICS = ("ndcg@10", "recall@10")
FROZEN_STATES = {}  # the frozen MiniLM's item vectors, computed once per data set
PROTOCOL = "history_excluded"  # what the recipe chooses on (configs/movielens.yaml), both are in the JSON


def cuts(name: str, quantiles: tuple[float, ...] = QUANTILES) -> list[int]:
    path, _, _ = DATASETS[name]["log"]
    times = pd.read_csv(path, usecols=["timestamp"])["timestamp"].to_numpy()
    return [int(t) for t in np.quantile(times, quantiles)]


def training_rows(log: pd.DataFrame, user: str, since: float, until: float) -> int:
    """How many training rows train.py makes of the targets in [since, until): a user's interactions there, but
    their first (no history to predict it from)."""
    log = log.sort_values([user, "timestamp"], kind="stable")
    has_history = log.groupby(user).cumcount().to_numpy() > 0
    times = log["timestamp"].to_numpy()
    return int((has_history & (times >= since) & (times < until)).sum())


def budget_share(name: str, recipe: dict) -> float:
    """An update's training rows on P2 with `recipe` over the retrained model's (one epoch of P1 and P2's targets)."""
    path, user, _ = DATASETS[name]["log"]
    log = pd.read_csv(path, usecols=[user, "timestamp"])
    _, t1, t2 = cuts(name)
    p1, p2 = training_rows(log, user, -np.inf, t1), training_rows(log, user, t1, t2)
    return recipe["epochs"] * (p2 + round(recipe["replay_fraction"] * p1)) / (p1 + p2)


def update_flags(stale: Path, recipe: dict) -> list[str]:
    """train.py's flags of an update of the model in `stale` with `recipe` (a dict of `UPDATE_GRID`)."""
    flags = ["--init_from", str(stale), "--learning_rate", str(LEARNING_RATE * recipe["lr_scale"]),
             "--num_train_epochs", str(recipe["epochs"])]  # fmt: skip
    return flags + (["--replay_fraction", str(recipe["replay_fraction"])] if recipe["replay_fraction"] else [])


def stale_flags(name: str, seed: int) -> list[str]:
    """The stale model's flags: trained on P1's targets, its valid rows P2's holdout."""
    _, t1, t2 = cuts(name)
    return [*DATASETS[name]["flags"], *RECIPE, "--seed", str(seed), "--valid_since", str(t1), "--test_since", str(t2),
            "--learning_rate", str(LEARNING_RATE)]  # fmt: skip


def run_train(folder: Path, flags: list[str], minutes: float) -> dict:
    """One train.py run (or the one already in `folder`); its metrics.json and wall seconds."""
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        command = [
            sys.executable,
            "train.py",
            *flags,
            "--output_dir",
            str(folder),
            "--max_train_minutes",
            str(minutes),
        ]
        print("$", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        wall = time.perf_counter() - start
        (folder / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    metrics = json.loads(metrics_path.read_text())
    metrics["wall_seconds"] = float((folder / "wall_seconds.txt").read_text())
    return metrics


def evaluate_models(folders: dict[str, Path], data_flags: list[str], valid_since: int, test_since: int,
                    split: str) -> tuple[dict, dict, pd.DataFrame]:  # fmt: skip
    """Each model's metrics and per-user NDCG@10 (both protocols) on `split` of the data cut at (valid_since,
    test_since), with our evaluation code; the frozen encoder's states computed once (the models share them)."""
    import torch
    from accelerate import Accelerator

    from recsys_bert.arguments import parse_args
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.collators import EvalCollator
    from recsys_bert.data import load_data, tokenize_items
    from recsys_bert.evaluation import PROTOCOLS, eval_loader, evaluate, model_scorer
    from recsys_bert.metrics import per_user
    from recsys_bert.modeling import load_model

    _, data_args, _ = parse_args([*data_flags, "--valid_since", str(valid_since), "--test_since", str(test_since)])
    models = {name: load_model(folder) for name, folder in folders.items()}
    first, tokenizer = next(iter(models.values()))
    data = load_data(data_args, max_history=first.config.max_history)
    rows = getattr(data, split)
    catalogue = Catalogue.from_items(tokenize_items(data.items, tokenizer, first.config.max_item_tokens),
                                     tokenizer.pad_token_id)  # fmt: skip
    accelerator = Accelerator(cpu=True)
    key = (tuple(data_flags), len(catalogue))  # the same items file at every cut
    if key not in FROZEN_STATES:
        catalogue.compute_frozen_states(first, accelerator)
        FROZEN_STATES[key] = catalogue.frozen_states
    catalogue.frozen_states = FROZEN_STATES[key]
    metrics, values = {}, {}
    for name, (model, _) in models.items():
        assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(),
                                                      first.encoder.state_dict().values()))  # fmt: skip
        vectors = catalogue.item_vectors(model, accelerator)
        loader = eval_loader(rows, EvalCollator(model.config.max_history), 256, accelerator)
        metrics[name], ranks = evaluate(model_scorer(model, vectors, accelerator), loader, accelerator, [10],
                                        name, return_ranks=True)  # fmt: skip
        values[name] = {protocol: per_user(ranks[protocol], "ndcg@10") for protocol in PROTOCOLS}
    item_ids = np.asarray(data.items["item_id"], dtype=object)
    table = pd.DataFrame({"user_id": rows["user_id"], "item_id": item_ids[np.asarray(rows["target"])]})
    return metrics, values, table


def slices(table: pd.DataFrame, name: str, since: int) -> dict[str, np.ndarray]:
    """Boolean masks over the test rows: users and target items without an interaction before `since`."""
    path, user_column, item_column = DATASETS[name]["log"]
    log = pd.read_csv(
        path, usecols=[user_column, item_column, "timestamp"], dtype={user_column: str, item_column: str}
    )
    first_user = log.groupby(user_column)["timestamp"].min()
    first_item = log.groupby(item_column)["timestamp"].min()
    return {
        "all": np.ones(len(table), dtype=bool),
        "new_users": (table["user_id"].map(first_user) >= since).to_numpy(),
        "new_items": (table["item_id"].map(first_item) >= since).to_numpy(),
    }


def tune(name: str, seed: int, runs_dir: Path, minutes: float) -> dict:
    """Each recipe of `UPDATE_GRID` continuing the stale model of `seed` on P2a's targets, tested on P2b's holdout
    beside the stale model and a model retrained on P1 and P2a; the chosen recipe, best NDCG@10 on `PROTOCOL`."""
    _, t1, t2 = cuts(name)
    (middle,) = cuts(name, (TUNE_QUANTILE,))
    data_flags = DATASETS[name]["flags"]
    base = [*data_flags, *RECIPE, "--seed", str(seed), "--valid_since", str(middle), "--test_since", str(t2)]
    folder = runs_dir / f"{name}-s{seed}"
    folders = {"stale": folder / "stale", "retrained": folder / "tune-retrained"}
    runs = {
        "stale": run_train(folders["stale"], stale_flags(name, seed), minutes),
        "retrained": run_train(folders["retrained"], [*base, "--learning_rate", str(LEARNING_RATE)], minutes),
    }
    names = {}
    for recipe in UPDATE_GRID:
        lr, epochs, replay = recipe["lr_scale"], recipe["epochs"], recipe["replay_fraction"]
        run = f"update lr x{lr:g}, {epochs} epochs, replay {replay:g}"
        names[run], folders[run] = recipe, folder / f"tune-lr{lr:g}-e{epochs}-r{replay:g}"
        runs[run] = run_train(folders[run], [*base, *update_flags(folders["stale"], recipe), "--train_since", str(t1)],
                              minutes)  # fmt: skip
    metrics, _, _ = evaluate_models(folders, data_flags, middle, t2, "valid")
    shares = {run: budget_share(name, recipe) for run, recipe in names.items()}
    best = max((run for run in names if shares[run] <= 1 / 3), key=lambda run: metrics[run][PROTOCOL]["ndcg@10"])
    return {
        "seed": seed,
        "p2b_since": middle,
        "p2b_since_date": str(pd.to_datetime(middle, unit="s").date()),
        "runs": {
            run: {
                "ndcg@10": metrics[run][PROTOCOL]["ndcg@10"],
                "recall@10": metrics[run][PROTOCOL]["recall@10"],
                "users": metrics[run][PROTOCOL]["users"],
                "wall_seconds": round(m["wall_seconds"], 1),
                "train_seconds": m["run"]["train_seconds"],
                "train_samples": m["run"]["train_samples"],
            }
            | ({"recipe": names[run], "budget_share": round(shares[run], 3)} if run in names else {})
            for run, m in runs.items()
        },  # fmt: skip
        "p2b_metrics": metrics,
        "chosen": names[best],
    }


def one_seed(name: str, seed: int, runs_dir: Path, minutes: float, recipe: dict) -> tuple[dict, dict]:
    """The three runs of one seed (trained, or read from `runs_dir`), the update with `recipe`, tested; and the
    per-user NDCG@10 of P3 by run and protocol, for the aggregate over seeds."""
    from recsys_bert.evaluation import PROTOCOLS
    from recsys_bert.metrics import paired_bootstrap

    t0, t1, t2 = cuts(name)
    data_flags = DATASETS[name]["flags"]
    base = [*data_flags, *RECIPE, "--seed", str(seed)]
    folder = runs_dir / f"{name}-s{seed}"
    runs = {
        "stale": run_train(folder / "stale", stale_flags(name, seed), minutes),
        "updated": None,
        "retrained": run_train(
            folder / "retrained",
            [*base, "--valid_since", str(t2), "--test_since", str(t2), "--learning_rate", str(LEARNING_RATE)],
            minutes,
        ),  # fmt: skip
    }
    runs["updated"] = run_train(folder / "updated", [*base, *update_flags(folder / "stale", recipe), "--train_since",
                                                     str(t1), "--valid_since", str(t2), "--test_since", str(t2)],
                                minutes)  # fmt: skip
    folders = {run: folder / run for run in runs}
    test, test_values, table = evaluate_models(folders, data_flags, t2, t2, "test")
    masks = slices(table, name, t1)
    p3 = {
        run: {protocol: {part: {"users": int(mask.sum()), "ndcg@10": float(test_values[run][protocol][mask].mean())
                                if mask.any() else None} for part, mask in masks.items()}  # fmt: skip
              | {"recall@10": test[run][protocol]["recall@10"]} for protocol in PROTOCOLS}
        for run in runs
    }  # fmt: skip
    comparisons = {
        f"updated - {other}": {protocol: paired_bootstrap(test_values["updated"][protocol],
                                                          test_values[other][protocol], seed=seed)
                               for protocol in PROTOCOLS}
        for other in ("stale", "retrained")
    }  # fmt: skip
    p2, _, _ = evaluate_models({"stale": folders["stale"], "updated": folders["updated"]}, data_flags, t1, t2, "valid")
    p1, p1_values, _ = evaluate_models({"stale": folders["stale"], "updated": folders["updated"]}, data_flags, t0, t1,
                                       "valid")  # fmt: skip
    result = {
        "runs": {
            run: {
                "wall_seconds": round(m["wall_seconds"], 1),
                "train_seconds": m["run"]["train_seconds"],
                "setup_seconds": m["run"]["setup_seconds"],
                "steps": m["protocol"]["steps"],
                "train_samples": m["run"]["train_samples"],
            }
            for run, m in runs.items()
        },  # fmt: skip
        "p3": p3,
        "p3_metrics": test,
        "comparisons": comparisons,
        "p2_holdout": p2,
        "forgetting": {
            "p1_last_stretch": p1,
            "updated - stale": {
                protocol: paired_bootstrap(p1_values["updated"][protocol], p1_values["stale"][protocol], seed=seed)
                for protocol in PROTOCOLS
            },
        },  # fmt: skip
    }
    return result, test_values


def across_seeds(results: dict[str, dict], values: dict[str, dict]) -> dict:
    """The seeds together: each run's NDCG@10 / Recall@10 mean and std over seeds, the update against the stale and
    the retrained model paired on the per-user NDCG@10 averaged over seeds (the same P3 users in every seed), and the
    time ratios' means; `verdict` as `verdict`'s, on these."""
    from recsys_bert.evaluation import PROTOCOLS
    from recsys_bert.metrics import paired_bootstrap, paired_bootstrap_ratio

    seeds = list(results)
    runs = ("stale", "updated", "retrained")
    mean_values = {run: {protocol: np.mean([values[seed][run][protocol] for seed in seeds], axis=0)
                         for protocol in PROTOCOLS} for run in runs}  # fmt: skip

    def spread(run: str, protocol: str, metric: str) -> dict:
        per_seed = [results[seed]["p3"][run][protocol]["all"]["ndcg@10"] if metric == "ndcg@10"
                    else results[seed]["p3"][run][protocol][metric] for seed in seeds]  # fmt: skip
        return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)), "per_seed": per_seed}

    summary = {
        "seeds": seeds,
        "p3": {run: {protocol: {metric: spread(run, protocol, metric) for metric in METRICS}
                     for protocol in PROTOCOLS} for run in runs},
        "comparisons": {f"updated - {other}": {protocol: paired_bootstrap(mean_values["updated"][protocol],
                                                                         mean_values[other][protocol])
                                               for protocol in PROTOCOLS} for other in ("stale", "retrained")},
        "updated / retrained": {protocol: paired_bootstrap_ratio(mean_values["updated"][protocol],
                                                                 mean_values["retrained"][protocol])
                                for protocol in PROTOCOLS},
        "time_ratios": {kind: float(np.mean([results[seed]["verdict"][kind] for seed in seeds]))
                        for kind in ("wall_time_ratio", "train_time_ratio")},
    }  # fmt: skip
    ratio = summary["updated / retrained"][PROTOCOL]
    summary["verdict"] = {
        "beats_stale": summary["comparisons"]["updated - stale"][PROTOCOL]["low"] > 0,
        "within_5_percent_of_retrained": ratio["ratio"] >= 0.95,
        "ndcg_ratio_to_retrained": round(ratio["ratio"], 3),
        "ndcg_ratio_interval": [round(ratio["low"], 3), round(ratio["high"], 3)],
        **{kind: round(value, 3) for kind, value in summary["time_ratios"].items()},
    }
    return summary


def verdict(result: dict) -> dict:
    """The issue's targets, on the recipe's protocol: the update beats the stale model (interval above 0), comes
    within 5% of the retrained model's NDCG@10, in at most a third of its time (wall and training seconds)."""
    p3, runs = result["p3"], result["runs"]
    updated, retrained = p3["updated"][PROTOCOL]["all"]["ndcg@10"], p3["retrained"][PROTOCOL]["all"]["ndcg@10"]
    return {
        "beats_stale": result["comparisons"]["updated - stale"][PROTOCOL]["low"] > 0,
        "within_5_percent_of_retrained": updated >= 0.95 * retrained,
        "ndcg_ratio_to_retrained": round(updated / retrained, 3) if retrained else None,
        "wall_time_ratio": round(runs["updated"]["wall_seconds"] / runs["retrained"]["wall_seconds"], 3),
        "train_time_ratio": round(runs["updated"]["train_seconds"] / max(runs["retrained"]["train_seconds"], 1e-9), 3),
    }


def markdown(results: dict, command: str) -> str:
    lines = [f"## Update protocol (`benchmarks/update.py`, {results['date']}, {results['machine']})", "",
             f"`{command}`", "",
             "P1 / P2 / P3 cut at the 80% and 90% quantiles of the log's timestamps; test = each user's first target "
             "in P3 (history = everything before it), the whole catalogue ranked, the history excluded (both "
             "protocols in `benchmarks/update_results.json`). Interval: paired bootstrap 95% over the P3 users.",
             ""]  # fmt: skip
    for name, dataset in results["datasets"].items():
        cut_dates = ", ".join(f"{k} {v}" for k, v in dataset["cut_dates"].items())
        lines += [f"### {name} ({cut_dates})", ""]
        if "tuning" in dataset:
            tuning = dataset["tuning"]
            lines += [f"The update recipe chosen on validation (seed {tuning['seed']}): each update continues the "
                      "stale model on P2a's targets, all tested on P2b's holdout (each user's first target since "
                      f"{tuning['p2b_since_date']}). Budget: the recipe's training rows on P2 over the retrained "
                      "model's (at most 1/3 can be chosen).", "",
                      "| model | NDCG@10 | Recall@10 | wall s | train s | training rows | budget on P2 |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            for run, r in tuning["runs"].items():
                chosen = " (chosen)" if r.get("recipe") == tuning["chosen"] else ""
                share = f"{r['budget_share']:.3f}" if "budget_share" in r else ""
                lines.append(
                    f"| {run}{chosen} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | "
                    f"{r['wall_seconds']:.0f} | {r['train_seconds']:.0f} | {r['train_samples']:,} | {share} |"
                )
            lines.append("")
        recipe = dataset["update_recipe"]
        lines += [
            f"Update recipe on P2: learning rate x{recipe['lr_scale']:g}, {recipe['epochs']} epochs, replayed "
            f"share of P1 {recipe['replay_fraction']:g}.",
            "",
        ]
        for seed, result in dataset["seeds"].items():
            p3, runs, comparisons = result["p3"], result["runs"], result["comparisons"]
            lines += [f"Seed {seed}: {p3['stale'][PROTOCOL]['all']['users']} P3 users "
                      f"({p3['stale'][PROTOCOL]['new_users']['users']} new, "
                      f"{p3['stale'][PROTOCOL]['new_items']['users']} with a new item as target).", "",
                      "| model | NDCG@10 | Recall@10 | NDCG@10 new users | NDCG@10 new items | wall s | train s | "
                      "steps | training rows |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for run in ("stale", "updated", "retrained"):
                parts = p3[run][PROTOCOL]

                def cell(part, parts=parts):
                    value = parts[part]["ndcg@10"]
                    return "—" if value is None else f"{value:.4f}"

                r = runs[run]
                lines.append(f"| {run} | {cell('all')} | {parts['recall@10']:.4f} | {cell('new_users')} | "
                             f"{cell('new_items')} | {r['wall_seconds']:.0f} | {r['train_seconds']:.0f} | "
                             f"{r['steps']} | {r['train_samples']:,} |")  # fmt: skip
            lines.append("")
            for key, c in comparisons.items():
                c = c[PROTOCOL]
                lines.append(f"- {key}, NDCG@10: {c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")
            forget = result["forgetting"]
            stale_p1 = forget["p1_last_stretch"]["stale"][PROTOCOL]["ndcg@10"]
            updated_p1 = forget["p1_last_stretch"]["updated"][PROTOCOL]["ndcg@10"]
            f = forget["updated - stale"][PROTOCOL]
            lines.append(f"- forgetting, P1's last stretch ({forget['p1_last_stretch']['stale'][PROTOCOL]['users']} "
                         f"users; the stale model trained on it): stale {stale_p1:.4f}, updated {updated_p1:.4f}, "
                         f"{f['difference']:+.4f} [{f['low']:+.4f}, {f['high']:+.4f}]")  # fmt: skip
            p2 = result["p2_holdout"]
            lines.append(
                f"- P2's holdout ({p2['stale'][PROTOCOL]['users']} users; the update trained on it): stale "
                f"{p2['stale'][PROTOCOL]['ndcg@10']:.4f}, updated {p2['updated'][PROTOCOL]['ndcg@10']:.4f}"
            )
            v = result["verdict"]
            lines += [f"- targets: beats stale {v['beats_stale']}; within 5% of retrained "
                      f"{v['within_5_percent_of_retrained']} (ratio {v['ndcg_ratio_to_retrained']}); time "
                      f"{v['wall_time_ratio']} of the retrained wall time, {v['train_time_ratio']} of its training "
                      "time", ""]  # fmt: skip
        if "across_seeds" in dataset:
            summary = dataset["across_seeds"]
            lines += [f"Seeds {', '.join(summary['seeds'])} together (mean ± std over seeds; intervals on the "
                      "per-user NDCG@10 averaged over seeds):", "", "| model | NDCG@10 | Recall@10 |",
                      "|---|---|---|"]  # fmt: skip
            for run, parts in summary["p3"].items():
                n, r = parts[PROTOCOL]["ndcg@10"], parts[PROTOCOL]["recall@10"]
                lines.append(f"| {run} | {n['mean']:.4f} ± {n['std']:.4f} | {r['mean']:.4f} ± {r['std']:.4f} |")
            lines.append("")
            for key, c in summary["comparisons"].items():
                c = c[PROTOCOL]
                lines.append(f"- {key}, NDCG@10: {c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")
            v = summary["verdict"]
            lines += [f"- updated / retrained, NDCG@10: {v['ndcg_ratio_to_retrained']} {v['ndcg_ratio_interval']}; "
                      f"targets: beats stale {v['beats_stale']}; within 5% of retrained "
                      f"{v['within_5_percent_of_retrained']}; time {v['wall_time_ratio']} of the retrained wall time, "
                      f"{v['train_time_ratio']} of its training time", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def machine() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]  # fmt: skip
    return f"{os.cpu_count()}-core {names[0] if names else platform.processor() or 'CPU'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["movielens", "beauty"], choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--max_train_minutes", type=float, default=6.0, help="Cap of each run's training.")
    parser.add_argument("--runs_dir", default=str(ROOT / "runs" / "update"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "update_results.json"))
    parser.add_argument("--markdown", default="/tmp/work/update-results.md")
    parser.add_argument("--tune", action="store_true", help="Choose the update recipe on P2b first (see above).")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {"date": date.today().isoformat(), "machine": machine(),
               "recipe": RECIPE, "datasets": {}}  # fmt: skip
    for name in args.data:
        t0, t1, t2 = cuts(name)
        dates = {label: str(pd.to_datetime(t, unit="s").date()) for label, t in (("P1 last stretch", t0), ("P2", t1),
                                                                                  ("P3", t2))}  # fmt: skip
        dataset = results["datasets"][name] = {"cuts": [t0, t1, t2], "cut_dates": dates, "seeds": {}}
        values, recipe = {}, DEFAULT_UPDATE
        if args.tune:
            dataset["tuning"] = tune(name, args.seeds[0], Path(args.runs_dir), args.max_train_minutes)
            recipe = dataset["tuning"]["chosen"]
            Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
        dataset["update_recipe"] = recipe
        for seed in args.seeds:
            result, values[str(seed)] = one_seed(name, seed, Path(args.runs_dir), args.max_train_minutes, recipe)
            result["verdict"] = verdict(result)
            dataset["seeds"][str(seed)] = result
            Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
        if len(args.seeds) > 1:
            dataset["across_seeds"] = across_seeds(dataset["seeds"], values)
            Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    command = "nice -n 10 python benchmarks/update.py " + " ".join(sys.argv[1:])
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(markdown(results, command.strip()))
    print(json.dumps({name: {seed: r["verdict"] for seed, r in d["seeds"].items()}
                      | ({"across seeds": d["across_seeds"]["verdict"]} if "across_seeds" in d else {})
                      for name, d in results["datasets"].items()}))  # fmt: skip


if __name__ == "__main__":
    main()
