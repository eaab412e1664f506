"""Ranking throughput: top-K over large catalogues with `recsys_bert.inference.top_k` vs one full score matrix.

Random unit vectors stand in for a model's users and items (`--dim` 128 = the movielens config's projection, 384 =
MiniLM without a head). For each catalogue size:

- `top_k`: users in batches of `--user_batch_size`, each batch scanned over the catalogue in chunks of
  `--item_chunk_size` (recommend.py's defaults: 256 and 100,000) with a running top-K and softmax normalizer;
- `naive`: the full `users x items` logit matrix of all the users at once, then `torch.topk` (no normalizer: less
  work than `top_k`), run only where that matrix fits in `--naive_max_gib`.

Repeats alternate the two so that background load hits both alike; figures are medians. Peak memory is the process's
peak resident set (VmHWM, reset before each run through /proc/self/clear_refs; `resource.getrusage` where that is
not possible), reported as the growth over what was resident before the run (the catalogue and the users).

    python benchmarks/rank_throughput.py           # 10k, 100k, 1M items, 512 users
    python benchmarks/rank_throughput.py --quick   # 10k and 100k items, 256 users

The last line of stdout is one JSON object; `users_per_s` holds top_k's users/s by catalogue size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from recsys_bert.retrieval import top_k  # noqa: E402

MIB = 2**20


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Catalogue sizes.")
    parser.add_argument("--dim", type=int, default=128, help="Vector width (128: movielens config, 384: MiniLM).")
    parser.add_argument("--users", type=int, default=512, help="Users ranked per run.")
    parser.add_argument("--k", type=int, default=100, help="Items returned per user.")
    parser.add_argument("--user_batch_size", type=int, default=256, help="Users per top_k call (recommend.py's "
                        "--batch_size).")  # fmt: skip
    parser.add_argument("--item_chunk_size", type=int, default=100_000, help="Items scored at once by top_k "
                        "(recommend.py's --item_chunk_size).")  # fmt: skip
    parser.add_argument("--naive_max_gib", type=float, default=2.5, help="Run the naive baseline only where its "
                        "users x items float32 matrix is at most this many GiB.")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.05, help="Logits = dot / temperature (the model's).")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating rounds of the two methods per size.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random vectors.")
    parser.add_argument("--profile", action="store_true", help="Print torch.profiler's top operators of one top_k "
                        "batch over the largest catalogue.")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="10k and 100k items, 256 users, 2 rounds (a few "
                        "seconds to a minute on 2 cores).")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.users, args.repeats = [s for s in args.sizes if s <= 100_000] or args.sizes[:1], 256, 2
    return args


class PeakMemory:
    """The process's peak resident set since `reset`, in bytes (VmHWM; ru_maxrss, never reset, as the fallback)."""

    def __init__(self):
        try:
            self.reset()
            self.resettable = True
        except OSError:
            self.resettable = False

    def reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def current(self) -> int:
        return self._status("VmRSS:") or 0

    def peak(self) -> int:
        return self._status("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def unit_vectors(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    vectors = torch.randn((n, dim), generator=generator)  # (n, dim)
    return vectors / vectors.norm(dim=1, keepdim=True)


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    memory = PeakMemory()
    generator = torch.Generator().manual_seed(args.seed)
    users = unit_vectors(args.users, args.dim, generator)  # (users, dim)

    def score(u: torch.Tensor, i: torch.Tensor, first_item: int = 0) -> torch.Tensor:  # RecsysBertModel.score
        return (u / args.temperature) @ i.T  # (users, chunk); random users have no history to boost

    def chunked(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [top_k(users[s : s + args.user_batch_size], items, args.k, score, None, args.item_chunk_size)
                for s in range(0, len(users), args.user_batch_size)]  # fmt: skip
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])  # (users, k)

    @torch.no_grad()
    def naive(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return score(users, items).topk(args.k, dim=1)  # (users, items) -> (users, k)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.users} users, dim {args.dim}, top "
          f"{args.k}, user batch {args.user_batch_size}, item chunk {args.item_chunk_size:,}; peak memory by "
          f"{'VmHWM reset per run' if memory.resettable else 'ru_maxrss (not resettable: a running maximum)'}; "
          f"load {load_start:.1f}")  # fmt: skip
    rows = []
    for size in args.sizes:
        items = unit_vectors(size, args.dim, generator)  # (items, dim)
        matrix_bytes = args.users * size * 4
        methods = {"top_k": chunked}
        if matrix_bytes <= args.naive_max_gib * 2**30:
            methods["naive"] = naive
        seconds = {m: [] for m in methods}
        extra = {m: [] for m in methods}
        peak = {m: [] for m in methods}
        outputs = {}
        for repeat in range(args.repeats + 1):  # round 0 warms up
            for method in list(methods)[:: 1 if repeat % 2 else -1]:
                before = memory.current()
                if memory.resettable:
                    memory.reset()
                start = time.perf_counter()
                outputs[method] = methods[method](items)
                elapsed = time.perf_counter() - start
                if repeat:
                    seconds[method].append(elapsed)
                    peak[method].append(memory.peak())
                    extra[method].append(max(0, peak[method][-1] - before))
        agree, overlap = None, None
        if "naive" in outputs:  # both valid top-Ks: the same logits, rank by rank (near-ties may swap items)
            (chunk_logits, chunk_index), (naive_logits, naive_index) = outputs["top_k"], outputs["naive"]
            agree = torch.allclose(chunk_logits, naive_logits, rtol=1e-5, atol=1e-4)
            shared = (chunk_index[:, :, None] == naive_index[:, None, :]).any(-1)  # (users, k)
            overlap = round(shared.float().mean().item(), 5)
        row = {
            "items": size,
            "items_mib": round(size * args.dim * 4 / MIB, 1),
            "full_matrix_mib": round(matrix_bytes / MIB, 1),
            "top_k_batch_chunk_mib": round(
                min(args.user_batch_size, args.users) * min(args.item_chunk_size, size) * 4 / MIB, 1
            ),  # fmt: skip
            "naive": "run"
            if "naive" in methods
            else f"skipped: matrix {matrix_bytes / 2**30:.1f} GiB > --naive_max_gib {args.naive_max_gib}",
            "top_k_naive_agree": agree,
            "top_k_naive_index_overlap": overlap,
        }
        for method in methods:
            row[f"{method}_users_per_s"] = round(args.users / statistics.median(seconds[method]), 1)
            row[f"{method}_peak_rss_mib"] = round(max(peak[method]) / MIB, 1)
            row[f"{method}_extra_mib"] = round(max(extra[method]) / MIB, 1)
        if "naive" in methods:
            row["ratio_vs_naive"] = round(row["top_k_users_per_s"] / row["naive_users_per_s"], 3)
        rows.append(row)
        print(f"{size:>9,} items: top_k {row['top_k_users_per_s']:8.1f} users/s, +{row['top_k_extra_mib']:.0f} MiB; "
              + (f"naive {row['naive_users_per_s']:8.1f} users/s, +{row['naive_extra_mib']:.0f} MiB (same logits: "
                 f"{agree}, same items: {overlap:.2%})" if "naive" in methods else row["naive"]))  # fmt: skip
        if args.profile and size == max(args.sizes):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                top_k(users[: args.user_batch_size], items, args.k, score, None, args.item_chunk_size)
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
        del items, outputs

    print()
    print("| items | top_k users/s | top_k peak RSS growth (MiB) | naive users/s | naive peak RSS growth (MiB) | "
          "ratio | full users x items matrix (MiB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        naive_cells = (f"{r['naive_users_per_s']:.1f} | {r['naive_extra_mib']:.0f} | {r['ratio_vs_naive']:.2f}"
                       if "naive_users_per_s" in r else "skipped | – | –")  # fmt: skip
        print(
            f"| {r['items']:,} | {r['top_k_users_per_s']:.1f} | {r['top_k_extra_mib']:.0f} | {naive_cells} | "
            f"{r['full_matrix_mib']:,.0f} |"
        )
    result = {
        "benchmark": "rank_throughput",
        "users_per_s": {str(r["items"]): r["top_k_users_per_s"] for r in rows},
        "naive_users_per_s": {str(r["items"]): r.get("naive_users_per_s") for r in rows},
        "ratio_vs_naive": {str(r["items"]): r.get("ratio_vs_naive") for r in rows},
        "peak_rss_growth_mib": {str(r["items"]): r["top_k_extra_mib"] for r in rows},
        "sizes": rows,
        "config": {
            "users": args.users,
            "dim": args.dim,
            "k": args.k,
            "user_batch_size": args.user_batch_size,
            "item_chunk_size": args.item_chunk_size,
            "naive_max_gib": args.naive_max_gib,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "peak_memory": "VmHWM reset per run" if memory.resettable else "ru_maxrss",
            "quick": args.quick,
            "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
