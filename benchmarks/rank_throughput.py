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

`--index`: the faiss index of `recsys_bert.index` against the exact `top_k`, measured in the same run, on catalogues
of `--index_sizes` items of width `--dim` (384 = MiniLM):

- data `random`: random unit users and items; `movielens`: the zero-shot MiniLM vectors of ml-latest-small's 9,742
  movies ("title. genres"), tiled to the size, each copy with Gaussian noise of norm `--noise` (cosine about .9 to
  its movie) and renormalized; users = the 610 MovieLens users' mean history vectors (the zero-shot user);
- per index (`--factories`, default `index.ivf_params`' IVF for the size and HNSW32 up to `--hnsw_max_items`) and
  search setting (`--nprobe` x `--k_factor` for PQ codes, `--ef_search`): recall@100 against the exact top-100,
  users/s of `index_top_k` (batches of `--user_batch_size`, re-scoring included) and the speed-up over `top_k`,
  build seconds, the index file's bytes, and the section's peak RSS; `--index_cache` keeps the built indexes;
- above 8 GiB of float32 the items are held as float16 (what `top_k` scans and `index_top_k` re-scores from; the
  index holds 4-bit codes only), so 10M x 384 stays under about 10 GB;
- the crossover: users/s of both paths over `--crossover_sizes` items (`index.ivf_params`' IVF and settings).

    python benchmarks/rank_throughput.py --index --dim 384   # adds a run to benchmarks/index_results.json
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
    parser.add_argument("--index", action="store_true", help="Benchmark the faiss index instead (see above).")
    parser.add_argument("--index_sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="--index: "
                        "catalogue sizes.")  # fmt: skip
    parser.add_argument("--index_data", nargs="+", default=["movielens", "random"], choices=["movielens", "random"],
                        help="--index: the vectors (see above).")  # fmt: skip
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="--index: IVF settings.")
    parser.add_argument("--ef_search", type=int, nargs="+", default=[64, 128, 256, 512], help="--index: HNSW "
                        "settings.")  # fmt: skip
    parser.add_argument("--hnsw_max_items", type=int, default=1_000_000, help="--index: build HNSW only up to this "
                        "many items (its build is the slow one: about 5 min for 1M on 2 cores).")  # fmt: skip
    parser.add_argument("--factories", nargs="+", default=None, help="--index: faiss factory strings to measure "
                        "(default: `index.ivf_params`' IVF for the size and HNSW32); IVF ones sweep --nprobe, "
                        "HNSW ones --ef_search, PQ ones --k_factor as well.")  # fmt: skip
    parser.add_argument("--k_factor", type=int, nargs="+", default=[4, 8, 12], help="--index: candidates asked of a "
                        "PQ index = k_factor x 100, all re-scored exactly from the items.")  # fmt: skip
    parser.add_argument("--index_cache", type=Path, default=None, help="--index: keep the built indexes in this "
                        "folder (`index.load_or_build`, keyed by the data, size, noise and seed) for later sweeps; "
                        "build_s is then the first build's.")  # fmt: skip
    parser.add_argument("--ef_construction", type=int, default=None, help="--index: HNSW efConstruction (default: "
                        "faiss's 40).")  # fmt: skip
    parser.add_argument("--crossover_sizes", type=int, nargs="*", default=[20_000, 50_000, 100_000, 200_000],
                        help="--index: sizes of the exact-vs-index crossover (movielens vectors).")  # fmt: skip
    parser.add_argument("--noise", type=float, default=0.5, help="--index: norm of each tiled copy's noise.")
    parser.add_argument("--index_output", type=Path, default=ROOT / "benchmarks" / "index_results.json",
                        help="--index: the JSON result file.")  # fmt: skip
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
    if args.index:
        return index_main(args)
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


# ---------------------------------------------------------------- --index


def movielens_vectors(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot MiniLM unit vectors of ml-latest-small's movies `(movies, dim)` and of its users `(users, dim)`
    (the mean of their rated movies' vectors), as the zero-shot baseline computes them."""
    import pandas as pd
    from transformers import AutoTokenizer

    from recsys_bert.encoders import default_encoder_path

    movies = pd.read_csv(ROOT / "data" / "ml-latest-small" / "movies.csv")
    texts = (movies.title + ". " + movies.genres.str.replace("|", ", ")).tolist()
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = torch.empty((len(texts), model.config.encoder["hidden_size"]))
    with torch.no_grad():
        for start in range(0, len(texts), 256):
            rows = order[start : start + 256]
            tokens = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=32,
                               return_tensors="pt")  # fmt: skip
            pooled = model.encode_texts(tokens["attention_mask"], input_ids=tokens["input_ids"])  # (batch, dim)
            vectors[rows] = torch.nn.functional.normalize(pooled, dim=-1)
    ratings = pd.read_csv(ROOT / "data" / "ml-latest-small" / "ratings.csv")
    row_of = {movie: i for i, movie in enumerate(movies.movieId)}
    users = torch.stack([vectors[[row_of[m] for m in group.movieId]].mean(dim=0)
                         for _, group in ratings.groupby("userId")])  # fmt: skip
    return vectors, torch.nn.functional.normalize(users, dim=-1)


def catalogue(data: str, size: int, dim: int, base: torch.Tensor | None, noise: float, seed: int) -> torch.Tensor:
    """`(size, dim)` unit items, made in blocks (float16 where float32 would pass 8 GiB)."""
    dtype = torch.float16 if size * dim * 4 > 8 * 2**30 else torch.float32
    items = torch.empty((size, dim), dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, size, 1 << 20):
        n = min(1 << 20, size - start)
        block = torch.randn((n, dim), generator=generator)  # (n, dim)
        if data == "movielens":  # each movie in turn, with noise of norm about `noise`
            block = base[torch.arange(start, start + n) % len(base)] + block * (noise / dim**0.5)
        items[start : start + n] = torch.nn.functional.normalize(block, dim=-1).to(dtype)
    return items


def search_settings(factory: str, args: argparse.Namespace) -> list[dict]:
    """The search-time settings swept for `factory`: HNSW's ef_search, or IVF's nprobe (x k_factor for PQ codes)."""
    if factory.startswith("HNSW"):
        return [{"ef_search": value} for value in args.ef_search]
    k_factors = args.k_factor if ",PQ" in factory else [1]
    return [{"nprobe": n, "k_factor": f} for n in args.nprobe for f in k_factors]


def index_main(args: argparse.Namespace) -> None:
    import faiss

    from recsys_bert.index import build_index, index_top_k, ivf_params, load_or_build, set_search_params
    from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel

    load_start = os.getloadavg()[0]
    memory = PeakMemory()
    model = RecsysBertModel.from_encoder(RecsysBertConfig(score_temperature=args.temperature)).eval()
    base, ml_users = (
        movielens_vectors(model) if "movielens" in args.index_data or args.crossover_sizes else (None,) * 2
    )
    print(f"torch {torch.__version__}, faiss {faiss.__version__}, {torch.get_num_threads()} threads; dim {args.dim}, "
          f"top {args.k}, user batch {args.user_batch_size}; load {load_start:.1f}", flush=True)  # fmt: skip
    generator = torch.Generator().manual_seed(args.seed)
    random_users = unit_vectors(args.users, args.dim, generator)  # (users, dim)

    def users_of(data: str) -> torch.Tensor:
        return ml_users[: args.users] if data == "movielens" else random_users

    def exact(users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, float]:
        def score(u: torch.Tensor, chunk: torch.Tensor, first_item: int = 0) -> torch.Tensor:
            return model.score(u, chunk.float(), first_item=first_item)  # (users, chunk); no history

        start = time.perf_counter()
        batches = range(0, len(users), args.user_batch_size)
        index = torch.cat([top_k(users[s : s + args.user_batch_size], items, args.k, score, None,
                                 args.item_chunk_size)[1] for s in batches])  # fmt: skip
        return index, len(users) / (time.perf_counter() - start)  # (users, k), users/s

    def approximate(index, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        found = torch.cat([index_top_k(index, users[s : s + args.user_batch_size], items, args.k, model)[1]
                           for s in range(0, len(users), args.user_batch_size)])  # fmt: skip
        return found, len(users) / (time.perf_counter() - start)

    def recall(found: torch.Tensor, expected: torch.Tensor) -> float:
        return round((found[:, :, None] == expected[:, None, :]).any(dim=2).float().mean().item(), 4)

    def file_bytes(index) -> int:
        path = Path(f"/tmp/rank_throughput.{os.getpid()}.faiss")
        try:
            faiss.write_index(index.faiss_index, str(path))
            return path.stat().st_size
        finally:
            path.unlink(missing_ok=True)

    sections = []
    for size in args.index_sizes:
        for data in args.index_data:
            if memory.resettable:
                memory.reset()
            items = catalogue(data, size, args.dim, base, args.noise, args.seed + size)
            users = users_of(data)
            exact(users[: args.user_batch_size], items)  # warm-up
            expected, exact_speeds = None, []
            for _ in range(2):
                expected, speed = exact(users, items)
                exact_speeds.append(speed)
            exact_speed = statistics.median(exact_speeds)
            section = {"items": size, "data": data, "storage": str(items.dtype).removeprefix("torch."),
                       "users": len(users), "exact_users_per_s": round(exact_speed, 1), "indexes": []}  # fmt: skip
            print(
                f"{size:>11,} {data} items ({section['storage']}): exact top_k {exact_speed:.1f} users/s", flush=True
            )
            default = [ivf_params(size, args.dim)["factory"]] + ["HNSW32"] * (size <= args.hnsw_max_items)
            factories = args.factories or default
            for factory in factories:
                params = {"factory": factory}
                if "HNSW" in factory and args.ef_construction:
                    params["ef_construction"] = args.ef_construction
                before = memory.current()
                start = time.perf_counter()
                key = f"{data}-{size}-{args.dim}-noise{args.noise}-seed{args.seed}"
                index, from_disk = load_or_build(items, args.index_cache, key, params)
                seconds = round(time.perf_counter() - start, 1)
                if args.index_cache is not None:  # the build's time, kept from the first run
                    timing = args.index_cache / f"{key}.{factory}.{params.get('ef_construction')}.build_s"
                    if from_disk:
                        seconds = json.loads(timing.read_text()) if timing.is_file() else None
                    else:
                        timing.write_text(json.dumps(seconds))
                built = {**params, "build_s": seconds, "from_cache": from_disk,
                         "resident_growth_mib": round((memory.current() - before) / MIB, 1),
                         "file_mib": round(file_bytes(index) / MIB, 1), "settings": []}  # fmt: skip
                print(f"  {factory}: built in {built['build_s']} s, file {built['file_mib']:,.0f} MiB", flush=True)
                for setting in search_settings(factory, args):
                    set_search_params(index, setting)
                    approximate(index, users[: args.user_batch_size], items)  # warm-up
                    runs = [approximate(index, users, items) for _ in range(2)]
                    speed = statistics.median(r[1] for r in runs)
                    row = {**setting, "recall@100": recall(runs[0][0], expected), "users_per_s": round(speed, 1),
                           "speedup": round(speed / exact_speed, 1)}  # fmt: skip
                    built["settings"].append(row)
                    print(f"    {setting}: recall@100 {row['recall@100']:.4f}, {speed:8.1f} users/s, "
                          f"{row['speedup']:5.1f}x exact", flush=True)  # fmt: skip
                section["indexes"].append(built)
                del index
            section["peak_rss_mib"] = round(memory.peak() / MIB, 1)
            print(f"  peak RSS {section['peak_rss_mib']:,.0f} MiB", flush=True)
            sections.append(section)
            del items, expected

    crossover = []
    for size in args.crossover_sizes:
        items = catalogue("movielens", size, args.dim, base, args.noise, args.seed + size)
        users = users_of("movielens")
        params = ivf_params(size, args.dim)  # the default IVF and search setting for the size, even below EXACT_BELOW
        index = build_index(items, params)
        exact(users[: args.user_batch_size], items)
        approximate(index, users[: args.user_batch_size], items)
        exact_speed = statistics.median(exact(users, items)[1] for _ in range(2))
        runs = [approximate(index, users, items) for _ in range(2)]
        expected = exact(users, items)[0]
        row = {"items": size, **params, "exact_users_per_s": round(exact_speed, 1),
               "index_users_per_s": round(statistics.median(r[1] for r in runs), 1),
               "recall@100": recall(runs[0][0], expected)}  # fmt: skip
        row["speedup"] = round(row["index_users_per_s"] / exact_speed, 2)
        crossover.append(row)
        print(f"crossover {size:>9,}: {row}", flush=True)
        del items, index

    result = {
        "benchmark": "rank_throughput --index",
        "sections": sections,
        "crossover": crossover,
        "config": {"dim": args.dim, "k": args.k, "users": args.users, "user_batch_size": args.user_batch_size,
                   "item_chunk_size": args.item_chunk_size, "temperature": args.temperature, "noise": args.noise,
                   "threads": torch.get_num_threads(), "faiss": faiss.__version__, "torch": torch.__version__,
                   "command": " ".join(["python", "benchmarks/rank_throughput.py", *sys.argv[1:]]),
                   "date": time.strftime("%Y-%m-%d"),
                   "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}},
    }  # fmt: skip
    runs = json.loads(args.index_output.read_text())["runs"] if args.index_output.is_file() else []
    args.index_output.write_text(json.dumps({"runs": [*runs, result]}, indent=1) + "\n")  # earlier runs kept
    print(json.dumps(result))


if __name__ == "__main__":
    main()
