"""The pictures of RESULTS.md and the README, drawn from `benchmarks/results.json` (nothing is measured here).

    python benchmarks/plots.py      # writes benchmarks/quality.png and benchmarks/gpu_throughput.png

`quality.png`: test NDCG@10 on Amazon Scientific against training wall time, the recsys-bert runs on 2 CPU cores and
on one GPU beside the peers measured on the same split. `gpu_throughput.png`: the training step's encoder
sequences/s on one GPU against the ceilings.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
CPU_TARGET, GPU_TARGET = 0.070, 0.081  # issue 4's targets (test NDCG@10, history kept)


def quality(scientific: dict, path: Path) -> None:
    peers = scientific["peers"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, result in scientific.get("variants", {}).items():
        minutes = result.get("train_minutes", {}).get("mean")
        if minutes is None:
            continue
        ndcg = result["kept"]["ndcg@10"]
        ax.errorbar(minutes, ndcg["mean"], yerr=ndcg["std"], fmt="o", capsize=4, color="tab:blue")
        ax.plot(minutes, result["excluded"]["ndcg@10"]["mean"], "o", mfc="none", color="tab:blue")
        ax.annotate(f"{name}, 2 CPU cores ({result['runs']} seeds)", (minutes, ndcg["mean"]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8)  # fmt: skip
    label_y = 1.0
    for run in sorted(scientific.get("gpu_runs", []), key=lambda r: -r["ndcg@10"]):  # labels at least .005 apart
        label_y = min(label_y - 0.005, run["ndcg@10"])
        ax.plot(run["minutes"], run["ndcg@10"], "^", color="tab:orange")
        ax.annotate(f"{run['name']}, {run['steps']} steps, one H200, before the repeat bias",
                    (run["minutes"], run["ndcg@10"]),
                    xytext=(5, label_y - 0.001), fontsize=7, arrowprops={"arrowstyle": "-", "lw": 0.4})  # fmt: skip
    sasrec = next(p for name, p in peers.items() if name.startswith("SASRec"))
    ax.plot([sasrec["minutes"]], [sasrec["ndcg@10"]], "s", color="tab:red")
    ax.plot([sasrec["minutes"]], [sasrec["history_excluded"]["ndcg@10"]], "s", mfc="none", color="tab:red")
    ax.annotate("SASRec (RecBole), 2 CPU cores", (sasrec["minutes"], sasrec["ndcg@10"]), textcoords="offset points",
                xytext=(-60, -14), fontsize=8)  # fmt: skip
    for name, color in (("zero-shot MiniLM, recency-weighted mean", "tab:green"), ("popularity", "tab:gray")):
        ax.axhline(peers[name]["ndcg@10"], ls="--", color=color, label=f"{name} (no training)")
    ax.axhline(CPU_TARGET, ls=":", color="tab:blue", label=f"issue's CPU target {CPU_TARGET:.3f}")
    ax.axhline(GPU_TARGET, ls=":", color="tab:orange", label=f"issue's GPU target {GPU_TARGET:.3f}")
    ax.set_xlabel("training wall time (minutes): circles 2 CPU cores, triangles one H200")
    ax.set_ylabel("test NDCG@10, full ranking\n(filled: history kept; hollow: excluded)", fontsize=9)
    ax.set_title("Amazon Scientific (UniSRec split, 8,442 users, 4,385 items)")
    ax.set_xlim(0, 32)
    ax.set_ylim(0, 0.09)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def quality_by_data(name: str, report: dict, path: Path) -> None:
    """`benchmarks/quality.py`'s report of one data set: test NDCG@10 (filled: history kept, hollow: excluded)
    against training minutes, recsys-bert's variants (mean ± std over seeds, with the validation curve of each seed)
    beside SASRec, and the untrained baselines and published figures as lines."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = iter(["tab:blue", "tab:purple", "tab:cyan", "tab:olive"])
    top = 0.0
    for i, (variant, result) in enumerate(report["variants"].items()):
        color = next(colors)
        minutes, kept = result["train_minutes"]["mean"], result["history_kept"]["ndcg@10"]
        ax.errorbar(minutes, kept["mean"], yerr=kept["std"], fmt="o", capsize=4, color=color)
        ax.plot(minutes, result["history_excluded"]["ndcg@10"]["mean"], "o", mfc="none", color=color)
        for curve in result["curves"]:
            if curve:
                ax.plot(*zip(*curve), "-", lw=0.6, alpha=0.5, color=color)
        ax.annotate(f"recsys-bert {variant} ({result['runs']} seeds; line: valid)", (minutes, kept["mean"]),
                    textcoords="offset points", xytext=(-8, -14 - 11 * i), ha="right", fontsize=8,
                    color=color)  # fmt: skip
        top = max(top, kept["mean"], result["history_excluded"]["ndcg@10"]["mean"])
    sasrec = report["peers"].get("sasrec")
    if sasrec:
        minutes = sasrec["train_minutes"]["mean"]
        ax.plot([minutes], [sasrec["history_kept"]["ndcg@10"]["mean"]], "s", color="tab:red")
        ax.plot([minutes], [sasrec["history_excluded"]["ndcg@10"]["mean"]], "s", mfc="none", color="tab:red")
        fired = sum(sasrec["early_stopped"])
        ax.annotate(f"SASRec (RecBole), {sasrec['runs']} seeds, early stopping fired in {fired}",
                    (minutes, sasrec["history_kept"]["ndcg@10"]["mean"]), textcoords="offset points",
                    xytext=(-8, -14), ha="right", fontsize=8)  # fmt: skip
        top = max(top, sasrec["history_excluded"]["ndcg@10"]["mean"])
    for peer, color in (("zero_shot", "tab:green"), ("popularity", "tab:gray")):
        if peer in report["peers"]:
            value = report["peers"][peer]["history_excluded"]["ndcg@10"]
            ax.axhline(value, ls="--", color=color, label=f"{peer.replace('_', '-')}, history excluded (no training)")
    for label, row in report["published"].items():
        ax.axhline(row["ndcg@10"], ls=":", color="black", lw=0.8, label=f"{label}, published, history kept")
        top = max(top, row["ndcg@10"])
    ax.set_xlabel("training wall time (minutes), 2 CPU cores shared by the runs (RESULTS.md)")
    ax.set_ylabel("test NDCG@10, full ranking\n(filled: history kept; hollow: excluded)", fontsize=9)
    ax.set_title(f"{name}: {report['users']:,} test users, {report['items']:,} items")
    ax.set_xlim(left=0)
    ax.set_ylim(0, top * 1.25 if top else 0.1)
    ax.legend(loc="lower center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gpu_throughput(figures: dict, path: Path) -> None:
    readme, same_run = figures["readme_ceiling_64_tokens"], figures["ceiling_same_run_64_tokens"]
    loop, bench = figures["project_step_train_loop"], figures["project_step_benchmark"]
    bars = [
        ("ceiling, ../shared/device README (64 tokens)", readme["train"], "tab:gray"),
        ("ceiling, same run: bare MiniLM, 512 x 64 tokens", same_run["train"], "tab:gray"),
        (f"train.py's step in its loop ({bench['real_tokens_per_sequence']:.0f} real tokens/item)",
         loop["encoder_sequences_per_s"], "tab:orange"),
        ("train.py's step, gpu_throughput.py (3 warm-up steps)", bench["encoder_sequences_per_s"], "tab:orange"),
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(9, 3.2))
    names, values, colors = zip(*bars)
    ax.barh(range(len(bars)), values, color=colors)
    for row, value in enumerate(values):
        ax.annotate(f"{value:,.0f} ({value / same_run['train']:.0%} of same-run)", (value, row),
                    textcoords="offset points", xytext=(4, -3), fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(bars)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_xlabel("encoder sequences/s in training (fwd + bwd + AdamW, bf16 autocast)", fontsize=9)
    ax.set_title("One H200, all-MiniLM-L6-v2, every layer trained: against the ceilings", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    results = json.loads((HERE / "results.json").read_text())
    quality(results["scientific"], HERE / "quality.png")
    for name, report in results.get("quality", {}).items():
        quality_by_data(name, report, HERE / f"quality_{name}.png")
    if "gpu_throughput" in results:
        gpu_throughput(results["gpu_throughput"], HERE / "gpu_throughput.png")


if __name__ == "__main__":
    main()
