"""Training throughput: the project's training step vs a naive one that runs every item occurrence through the encoder.

The project's step (`TrainCollator` + `training.step_loss` + backward + clipping + AdamW) encodes each of the step's
unique items once, from the cached output of the frozen encoder layers. The naive step, as most research code does it,
runs every history item and every candidate of every sample through the whole encoder each step: no deduplication, no
cache. Both take the very same batches and the same loss; their repeats alternate so that background load hits both
alike, and the figures are medians over the timed steps.

    python benchmarks/train_throughput.py              # configs/movielens.yaml as is (frozen MiniLM)
    python benchmarks/train_throughput.py --finetune_layers 1
    python benchmarks/train_throughput.py --quick      # well under 2 minutes on 2 CPU cores

The last line of stdout is one JSON object; `speedup_vs_naive` is naive seconds per sample / project seconds per
sample.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from recsys_bert.arguments import parse_args  # noqa: E402
from recsys_bert.catalogue import Catalogue  # noqa: E402
from recsys_bert.collators import TrainCollator  # noqa: E402
from recsys_bert.data import load_data, tokenize_items  # noqa: E402
from recsys_bert.encoders import default_encoder_path  # noqa: E402
from recsys_bert.losses import shared_negatives_loss, step_loss  # noqa: E402
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel  # noqa: E402
from recsys_bert.trainer import parameter_groups  # noqa: E402

PHASES = ("collate", "forward", "backward", "optimizer")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--config",
        default=str(ROOT / "configs" / "movielens.yaml"),
        help="Training YAML whose model, data and loss settings the step uses (data_dir relative to the repository).",
    )
    parser.add_argument(
        "--finetune_layers",
        type=int,
        default=None,
        help="Override the config's finetune_layers: "
        "0 = frozen encoder (cached pooled vectors), N = the top N layers train (lower layers' "
        "states cached), -1 = the whole encoder trains (nothing cached).",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="Samples per step (default: the config's per_device_train_batch_size).",
    )
    parser.add_argument(
        "--num_negatives", type=int, default=None, help="Shared uniform negatives per step (default: the config's)."
    )
    parser.add_argument(
        "--naive_batch_size",
        type=int,
        default=None,
        help="Samples per naive step (default: "
        "--batch_size, or 32 when that is larger). A smaller naive batch keeps each sample's encoder "
        "work equal: the naive step's negatives are scaled by naive_batch_size / batch_size, so "
        "each sample still brings its history, its positive and the same share of negatives.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="Alternating rounds of project and naive steps.")
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="Timed project steps per round, each on its own batch (every round takes the same batches).",
    )
    parser.add_argument("--naive_steps", type=int, default=1, help="Timed naive steps per round.")
    parser.add_argument(
        "--cache_scope",
        choices=["catalogue", "batches"],
        default="catalogue",
        help="Frozen-state "
        "cache over the whole catalogue (what train.py does; its time is reported) or only over "
        "the items the timed batches use (faster start, the same step).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Shuffling and initialisation seed.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's choice, the number of cores).",
    )
    parser.add_argument(
        "--profile", action="store_true", help="Print torch.profiler's top operators of one project step at the end."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: batch 64, 64 negatives, naive batch 8, "
        "2 rounds of 2 steps, cache over the used items only (well under 2 minutes on 2 cores).",
    )
    args = parser.parse_args()
    if args.quick:
        args.batch_size = args.batch_size or 64
        args.num_negatives = args.num_negatives or 64
        args.naive_batch_size = args.naive_batch_size or 8
        args.repeats, args.steps, args.cache_scope = 2, 2, "batches"
    return args


def settings(args: argparse.Namespace):
    """The config's model and training settings with this script's overrides."""
    argv = ["--config", args.config, "--seed", str(args.seed)]
    for flag, value in (("finetune_layers", args.finetune_layers), ("per_device_train_batch_size", args.batch_size),
                        ("num_negatives", args.num_negatives)):  # fmt: skip
        if value is not None:
            argv += [f"--{flag}", str(value)]
    model_args, data_args, train_args = parse_args(argv)
    if data_args.data_dir and not Path(data_args.data_dir).is_absolute():
        data_args.data_dir = str(ROOT / data_args.data_dir)
    return model_args, data_args, train_args


def cache_used_items(model: RecsysBertModel, catalogue: Catalogue, item_ids: np.ndarray, batch_size: int = 256):
    """`catalogue.frozen_states` filled only for `item_ids` (zeros elsewhere): what `compute_frozen_states` computes
    for them, in the same length-sorted batches."""
    if model.config.finetune_layers < 0:
        return
    rows = []
    for batch in catalogue.length_sorted_batches(item_ids, batch_size):
        states = model.frozen_states(*catalogue.tokens(batch))  # (n, hidden) or (n, width, hidden)
        if states.dim() == 3:
            states = torch.nn.functional.pad(states, (0, 0, 0, catalogue.input_ids.shape[1] - states.shape[1]))
        rows.append((batch, states))
    catalogue.frozen_states = torch.zeros((len(catalogue), *rows[0][1].shape[1:]))  # (items, ...)
    for batch, states in rows:
        catalogue.frozen_states[torch.from_numpy(batch)] = states


def project_step(model, optimizer, batch, loss_kwargs, max_grad_norm, times) -> int:
    """The train.py step; returns the number of item sequences the item tower encoded."""
    start = time.perf_counter()
    loss = step_loss(model, batch, **loss_kwargs)
    times["forward"] = time.perf_counter() - start
    _backward_and_step(model, optimizer, loss, max_grad_norm, times)
    return batch["item_attention_mask"].shape[0]


def naive_step(model, optimizer, batch, loss_kwargs, max_grad_norm, times) -> int:
    """Every history item and candidate occurrence through the whole encoder, from tokens; the same loss."""
    start = time.perf_counter()
    mask = batch["history_mask"]  # (batch, width)
    positive_index, negative_index = batch["positive_index"], batch["negative_index"]
    occurrences = torch.cat([batch["history_index"][mask], positive_index, negative_index])  # (occurrences,)
    input_ids = batch["item_input_ids"][occurrences]  # (occurrences, tokens)
    attention_mask = batch["item_attention_mask"][occurrences]
    vectors = model.encode_items(attention_mask, input_ids=input_ids)  # (occurrences, dim)
    num_history, size = int(mask.sum()), len(positive_index)
    history = vectors.new_zeros((*mask.shape, vectors.shape[1]))  # (batch, width, dim)
    history[mask] = vectors[:num_history]
    user_vectors = model.encode_users(history, mask)  # (batch, dim)
    loss = shared_negatives_loss(
        user_vectors, vectors[num_history : num_history + size], batch["positive_ids"],
        vectors[num_history + size :], batch["negative_ids"], **loss_kwargs,
        history_ids=batch["history_ids"], repeat_bias=model.repeat_bias,
    )  # fmt: skip
    times["forward"] = time.perf_counter() - start
    _backward_and_step(model, optimizer, loss, max_grad_norm, times)
    return len(occurrences)


def _backward_and_step(model, optimizer, loss, max_grad_norm, times) -> None:
    start = time.perf_counter()
    loss.backward()
    times["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    times["optimizer"] = time.perf_counter() - start


def timed(step, collator, rows, model, optimizer, loss_kwargs, max_grad_norm) -> dict:
    times = {}
    start = time.perf_counter()
    batch = collator.collate_step(rows)
    times["collate"] = time.perf_counter() - start
    sequences = step(model, optimizer, batch, loss_kwargs, max_grad_norm, times)
    return {"seconds": time.perf_counter() - start, "samples": len(rows), "sequences": sequences, **times}


def summarize(records: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in records)
    per_sample = statistics.median(r["seconds"] / r["samples"] for r in records)
    return {
        "steps": len(records),
        "batch_size": records[0]["samples"],
        "seconds_per_step": round(seconds, 4),
        "samples_per_s": round(1 / per_sample, 2),
        "sequences_per_step": round(statistics.mean(r["sequences"] for r in records), 1),
        "sequences_per_sample": round(statistics.mean(r["sequences"] / r["samples"] for r in records), 2),
        "encoder_sequences_per_s": round(statistics.median(r["sequences"] / r["seconds"] for r in records), 1),
        "phase_seconds": {p: round(statistics.median(r[p] for r in records), 4) for p in PHASES},
    }


def main() -> None:
    args = parse()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_args, data_args, train_args = settings(args)
    batch_size, num_negatives = train_args.per_device_train_batch_size, train_args.num_negatives
    naive_batch = args.naive_batch_size or min(batch_size, 32)
    if not 0 < naive_batch <= batch_size:
        raise SystemExit(f"--naive_batch_size must be in 1..{batch_size}")
    load_start = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; config {args.config}; load {load_start:.1f}")

    tokenizer = AutoTokenizer.from_pretrained(model_args.encoder_name_or_path or default_encoder_path())
    data = load_data(data_args, max_history=model_args.max_history, seed=train_args.seed)
    items = tokenize_items(data.items, tokenizer, model_args.max_item_tokens)
    catalogue = Catalogue(items["input_ids"], tokenizer.pad_token_id)
    config = RecsysBertConfig(**{**vars(model_args), "text_skip_weight": 0.0})  # steps train without the skip
    model = RecsysBertModel.from_encoder(config)
    naive_model = copy.deepcopy(model)
    print(
        f"data {data.name}: {len(catalogue):,} items, {len(data.train):,} training samples; finetune_layers "
        f"{config.finetune_layers}, projection_dim {config.projection_dim}, max_history {config.max_history}, "
        f"batch {batch_size}, {num_negatives} shared negatives (+ in-batch: {train_args.in_batch_negatives})"
    )

    # the same shuffled batches for both steps; rows fetched outside the timing (identical work for both)
    loader = DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda rows: rows,
        generator=torch.Generator().manual_seed(args.seed),
    )
    batches = iter(loader)
    timed_batches = [next(batches) for _ in range(args.steps)]  # every round takes these (round 0 warms up)

    tokens_only = copy.copy(catalogue)  # the naive step reads tokens, never the cache
    start = time.perf_counter()
    if args.cache_scope == "catalogue":
        catalogue.compute_frozen_states(model, Accelerator(cpu=True), train_args.per_device_eval_batch_size)
    else:  # every history item, positive and sampled negative of the batches the project step will take
        sampling = TrainCollator(tokens_only, config, train_args)
        used = [np.asarray(row["history"][-config.max_history :]) for rows in timed_batches for row in rows]
        used += [
            sampling.collate_step(rows)[key].numpy().ravel()
            for rows in timed_batches
            for key in ("positive_ids", "negative_ids")
        ]
        used = np.unique(np.concatenate(used).astype(np.int64))
        cache_used_items(model, catalogue, used)
    cache_seconds = time.perf_counter() - start
    cached_items = len(catalogue) if args.cache_scope == "catalogue" else len(used)
    print(f"frozen-state cache: {cached_items:,} items in {cache_seconds:.1f} s ({args.cache_scope})")

    naive_args = dataclasses.replace(train_args, num_negatives=max(1, round(num_negatives * naive_batch / batch_size)))
    collators = {
        "project": TrainCollator(catalogue, config, train_args),
        "naive": TrainCollator(tokens_only, config, naive_args),
    }
    models = {"project": model.train(), "naive": naive_model.train()}
    optimizers = {k: torch.optim.AdamW(parameter_groups(m, train_args), lr=train_args.learning_rate)
                  for k, m in models.items()}  # fmt: skip
    steps = {"project": project_step, "naive": naive_step}
    counts = torch.as_tensor(data.train_item_counts, dtype=torch.float64) + 1.0
    loss_kwargs = {
        "temperature": config.score_temperature,
        "in_batch": train_args.in_batch_negatives,
        "item_log_frequency": (counts / counts.sum()).log().float(),  # (items,)
    }

    def run(kind: str, rows: list[dict]) -> dict:
        rows = rows if kind == "project" else rows[:naive_batch]
        return timed(steps[kind], collators[kind], rows, models[kind], optimizers[kind], loss_kwargs,
                     train_args.max_grad_norm)  # fmt: skip

    records = {"project": [], "naive": []}
    for number in range(args.repeats + 1):
        order = ("project", "naive") if number % 2 else ("naive", "project")
        for kind in order:
            count = args.steps if kind == "project" else args.naive_steps
            done = [run(kind, timed_batches[i % args.steps]) for i in range(count if number else 1)]
            if number:  # round 0 is the untimed warm-up
                records[kind] += done
                rate = statistics.median(r["samples"] / r["seconds"] for r in done)
                print(f"round {number}/{args.repeats} {kind:>7}: {rate:8.1f} samples/s "
                      f"({len(done)} steps of {done[0]['samples']} samples)")  # fmt: skip

    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            run("project", timed_batches[0])
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    project, naive = summarize(records["project"]), summarize(records["naive"])
    speedup = project["samples_per_s"] / naive["samples_per_s"]
    max_steps = train_args.max_steps if train_args.max_steps > 0 else len(data.train) // batch_size
    full_cache = cache_seconds * len(catalogue) / cached_items  # one-off, before the first step
    with_cache = max_steps / naive["samples_per_s"] / (full_cache / batch_size + max_steps / project["samples_per_s"])
    print()
    print(
        "| step | batch | s/step | samples/s | encoder sequences/step | sequences/s | collate | forward | backward "
        "| optimizer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in (("project", project), ("naive", naive)):
        phases = " | ".join(f"{r['phase_seconds'][p]:.3f}" for p in PHASES)
        print(f"| {name} | {r['batch_size']} | {r['seconds_per_step']:.3f} | {r['samples_per_s']:.1f} | "
              f"{r['sequences_per_step']:.0f} | {r['encoder_sequences_per_s']:.0f} | {phases} |")  # fmt: skip
    print(
        f"speedup vs naive (samples/s ratio): {speedup:.1f}x; counting the one-off frozen cache "
        f"({full_cache:.0f} s for the catalogue) over {max_steps} steps: {with_cache:.1f}x"
    )
    fairness = (
        f"same batches, same loss; naive batch {naive_batch} of the {batch_size} with "
        f"{naive_args.num_negatives} shared negatives (scaled by {naive_batch}/{batch_size}) so each sample's "
        "encoder work is unchanged; shared negatives encoded once per naive step (not once per sample); compared "
        "per sample; medians over alternating rounds; row fetching untimed for both"
    )
    print(f"fairness: {fairness}")
    result = {
        "benchmark": "train_throughput",
        "speedup_vs_naive": round(speedup, 2),
        "speedup_vs_naive_incl_cache": round(with_cache, 2),
        "samples_per_s": {"project": project["samples_per_s"], "naive": naive["samples_per_s"]},
        "encoder_sequences_per_s": {
            "project": project["encoder_sequences_per_s"],
            "naive": naive["encoder_sequences_per_s"],
        },
        "project": project,
        "naive": naive,
        "cache": {
            "scope": args.cache_scope,
            "items": cached_items,
            "seconds": round(cache_seconds, 2),
            "catalogue_seconds_estimate": round(full_cache, 1),
        },  # fmt: skip
        "config": {
            "config_file": os.path.relpath(args.config, ROOT),
            "finetune_layers": config.finetune_layers,
            "projection_dim": config.projection_dim,
            "max_history": config.max_history,
            "max_item_tokens": config.max_item_tokens,
            "batch_size": batch_size,
            "num_negatives": num_negatives,
            "naive_batch_size": naive_batch,
            "naive_num_negatives": naive_args.num_negatives,
            "in_batch_negatives": train_args.in_batch_negatives,
            "repeats": args.repeats,
            "steps": args.steps,
            "naive_steps": args.naive_steps,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
        "fairness": fairness,
    }
    assert math.isfinite(speedup) and speedup > 0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
