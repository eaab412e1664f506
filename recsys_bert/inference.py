"""Batch inference (recommend.py): top-K items for many users, or scores of MIND impressions, from a trained model.

The catalogue is encoded once (length-sorted batches, no gradients, shared across processes) and its vectors cached
(`recsys_bert.retrieval`); users are read from a split or a JSON Lines file and encoded in batches, each process
taking a contiguous slice of them; outputs are written to a temporary name and renamed.
"""

from __future__ import annotations

import copy
import csv
import ctypes
import hashlib
import hmac
import io
import itertools
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from recsys_bert.arguments import DataArguments, RecommendArguments
from recsys_bert.catalogue import Catalogue
from recsys_bert.cli import configure_logging
from recsys_bert.data import format_skipped
from recsys_bert.distributed import has_accelerator
from recsys_bert.evaluation import user_vectors
from recsys_bert.explain import explain
from recsys_bert.modeling import RecsysBertModel, load_model
from recsys_bert.recommender import load_catalogue, rank, user_collator, with_texts
from recsys_bert.retrieval import catalogue_vectors, default_vector_cache, fingerprint
from recsys_bert.utils import InputError

logger = logging.getLogger(__name__)

OUTPUT_EXTENSIONS = (".jsonl", ".csv", ".parquet", ".txt")
SALT_VARIABLE = "RECSYS_BERT_USER_ID_SALT"
BECAUSE = pa.struct([("item_id", pa.string()), ("drop", pa.float32()), ("share", pa.float32())])


# ---------------------------------------------------------------- the model


def quantize_int8(model: RecsysBertModel, scheme: str = "per_channel") -> RecsysBertModel:
    """A copy whose `nn.Linear` layers are dynamically quantized to int8 for CPUs (int8 weights, activations quantized
    per batch): the encoder, the projection head and the attention pooling. The user tower's `nn.TransformerEncoder`
    stays fp32: its fast path reads `linear1.weight`, which a quantized layer no longer has as a tensor.

    Args:
        scheme: `per_channel` (a weight scale per output channel) or `per_tensor` (one per matrix; loses more).

    `torch.ao.quantization` is deprecated in favour of torchao (not a dependency here) but still works in torch 2.13.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if scheme == "per_channel" else default_dynamic_qconfig
    spec = {name: qconfig for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not name.startswith("user_encoder.")}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


# ---------------------------------------------------------------- users


def _user_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a users file, read one at a time."""
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise InputError(f"{path}, line {number}: not UTF-8 text") from None
                if line.strip():
                    yield number, line
    except OSError as err:
        raise InputError(f"{path}: can't be read ({err.strerror or err})") from None


def count_users(path: str | Path) -> int:
    """The number of non-blank lines of a users file (streamed), after checking that it reads as UTF-8 text and that
    its first line is JSON: a file that is not JSON Lines at all fails here, before anything is ranked."""
    count = 0
    for number, line in _user_lines(Path(path)):
        if count == 0:
            try:
                json.loads(line)
            except ValueError as err:
                raise InputError(f"{path}, line {number}: not JSON ({err.args[0].split(':')[0]})") from None
        count += 1
    return count


def iter_users(
    path: str | Path, item_index: dict[str, int], skipped: dict[str, int], lines: range | None = None
) -> Iterator[dict]:
    """Ad-hoc users from JSON Lines `{"user_id": ..., "history": [item id or free text, ...]}`, history oldest first,
    streamed: one line at a time, so memory does not grow with the file.

    Args:
        item_index: catalogue item index by id (and by text).
        lines: which of the file's non-blank lines to read (0-based; a process's slice); default: all.

    Yields:
        `{"user_id", "history"}` per usable line; a history entry is a catalogue index (`int`) or a free text
        (`str`: an item unseen at training, embedded from its text). A bad line is skipped and counted in `skipped`.
    """
    path = Path(path)
    lines = lines if lines is not None else range(1 << 62)
    for seen, (_, line) in enumerate(_user_lines(path)):
        if seen < lines.start:
            continue
        if seen >= lines.stop:
            return
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        reason = _user_record_problem(record)
        if reason is not None:
            skipped[f"{path.name}: {reason}"] = skipped.get(f"{path.name}: {reason}", 0) + 1
            continue
        history = []
        for entry in record["history"]:
            entry = str(entry).strip()
            if entry:
                history.append(item_index.get(entry, entry))
        yield {"user_id": str(record["user_id"]), "history": history}


def resolve_texts(rows: list[dict], num_items: int) -> tuple[list[dict], list[str]]:
    """`rows` whose free-text history entries index, from `num_items` on, the returned new texts (in first-seen
    order)."""
    new_index: dict[str, int] = {}
    resolved = []
    for row in rows:
        history = [
            e if isinstance(e, int) else new_index.setdefault(e, num_items + len(new_index)) for e in row["history"]
        ]
        resolved.append({**row, "history": history})
    return resolved, list(new_index)


def read_users(path: str | Path, item_index: dict[str, int], skipped: dict[str, int]) -> tuple[list[dict], list[str]]:
    """The whole users file at once (`iter_users` + `resolve_texts`); a file with no usable user is an error.

    Args:
        item_index: catalogue item index by id (and by text); the catalogue has `max(item_index.values()) + 1` items.
    """
    count_users(path)
    rows = list(iter_users(path, item_index, skipped))
    if not rows:
        raise InputError(f'{path}: no usable user (each line: {{"user_id": ..., "history": [...]}})')
    return resolve_texts(rows, max(item_index.values(), default=-1) + 1)


def _user_record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return "malformed lines (not a JSON object)"
    if record.get("user_id") in (None, ""):
        return "missing user_id"
    if not isinstance(record.get("history", []), list):
        return "history not a list"
    if any(not isinstance(entry, (str, int)) or isinstance(entry, bool) for entry in record.get("history", [])):
        return "history entries neither ids nor texts"
    record.setdefault("history", [])
    return None


def pseudonymize(user_ids: list[str], salt: bytes) -> list[str]:
    """HMAC-SHA256 of each id under a secret salt: stable for one salt, not reversible without it."""
    return [hmac.new(salt, user_id.encode(), hashlib.sha256).hexdigest()[:32] for user_id in user_ids]


# ---------------------------------------------------------------- output


class RowWriter:
    """Writes Arrow record batches to .jsonl, .csv, .parquet or MIND's prediction.txt under a temporary name;
    `close` renames it to its final name, so a reader never sees a half-written file."""

    def __init__(self, path: Path):
        self.path = path
        self.suffix = path.suffix.lower()
        if self.suffix not in OUTPUT_EXTENSIONS:
            raise InputError(f"{path}: unknown output type '{path.suffix}' (use {', '.join(OUTPUT_EXTENSIONS)})")
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.parquet: pq.ParquetWriter | None = None
        self.text: io.TextIOBase | None = None
        self.csv_header = True

    def write(self, batch: pa.Table) -> None:
        if self.suffix == ".parquet":
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, batch.schema)
            self.parquet.write_table(batch)
            return
        if self.text is None:
            self.text = open(self.tmp, "w", encoding="utf-8", newline="")
        rows = batch.to_pylist()
        if self.suffix == ".jsonl":
            self.text.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        elif self.suffix == ".txt":  # MIND's leaderboard format: "impression_id [rank,rank,...]"
            self.text.writelines(f"{row['impression_id']} [{','.join(map(str, row['ranks']))}]\n" for row in rows)
        else:  # csv: list columns as JSON arrays
            writer = csv.writer(self.text)
            if self.csv_header:
                writer.writerow(batch.column_names)
                self.csv_header = False
            writer.writerows(
                [json.dumps(v, ensure_ascii=False) if isinstance(v, list) else v for v in row.values()] for row in rows
            )

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        elif self.text is not None:
            self.text.close()
        else:  # no rows at all: still an output, an empty file
            self.tmp.write_text("")
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        for handle in (self.parquet, self.text):
            if handle is not None:
                handle.close()
        self.tmp.unlink(missing_ok=True)


def merge_parts(parts: list[Path], target: Path) -> None:
    """Concatenates the processes' Parquet parts, in order, into `target` (any output type), streaming."""
    writer = RowWriter(target)
    try:
        for part in parts:
            if part.stat().st_size == 0:
                continue
            for group in range(pq.ParquetFile(part).num_row_groups):
                writer.write(pq.ParquetFile(part).read_row_group(group))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    for part in parts:
        part.unlink(missing_ok=True)


# ---------------------------------------------------------------- the run


def recommend(data_args: DataArguments, args: RecommendArguments) -> dict:
    """recommend.py: ranks the catalogue for the users of a split or of `--users`, writes `args.output`.

    Returns:
        The closing summary (users, items, seconds, users/s, cache hit, output).
    """
    start = time.perf_counter()
    output = Path(args.output)
    if args.top_k < 1:
        raise InputError(f"--top_k {args.top_k}: must be at least 1")
    if output.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise InputError(f"{output}: unknown output type '{output.suffix}' (use {', '.join(OUTPUT_EXTENSIONS)})")
    if not output.parent.is_dir():
        raise InputError(f"{output.parent}: output folder not found")
    salt = os.environ.get(SALT_VARIABLE, "").encode()
    if args.pseudonymize_user_ids and not salt:
        raise InputError(f"--pseudonymize_user_ids needs a secret salt in the environment variable {SALT_VARIABLE}")
    accelerator = Accelerator(cpu=not has_accelerator(), mixed_precision=args.mixed_precision)
    configure_logging(accelerator)
    model, tokenizer = load_model(args.model)
    if args.int8 and accelerator.device.type != "cpu":
        raise InputError(f"--int8: dynamic int8 quantization runs on CPUs, not on {accelerator.device.type}")
    model.to(accelerator.device)
    config = model.config

    # ---- the catalogue and the users ----
    with accelerator.main_process_first():
        items, data, skipped = load_catalogue(data_args, tokenizer, config, args.seed)
    split_rows = None if data is None else (data.valid if args.split == "valid" else data.test)
    item_ids = np.asarray(items["item_id"], dtype=object)
    catalogue = Catalogue.from_items(items, tokenizer.pad_token_id)
    if args.users:
        # a history entry is a catalogue item by its id or by its exact text; ids win
        known = {text: i for i, text in enumerate(items["text"])} | {item: i for i, item in enumerate(item_ids)}
        num_users = count_users(args.users)
    elif split_rows is not None:
        num_users = len(split_rows)
    else:
        raise InputError("no users: give --users, or a data set with interactions (--config or --interactions)")

    cache_dir = Path(args.vector_cache or default_vector_cache())
    if (args.vector_cache or "").lower() == "none":
        cache_dir = None
    # the key from the fp32 weights (an int8 layer's weights are packed, not tensors)
    cache_key = fingerprint(model, catalogue, "int8" if args.int8 else accelerator.mixed_precision)
    if args.int8:
        model = quantize_int8(model)
    vectors, cache_hit = catalogue_vectors(model, catalogue, accelerator, args.batch_size, cache_dir, cache_key)
    vectors = vectors.to(accelerator.device)  # (items, dim)
    index, index_name = _ann_index(args, vectors, cache_dir, cache_key, accelerator)
    encoded = time.perf_counter()

    # ---- each process ranks a contiguous slice of the users, streamed in batches; the main process merges the
    # slices in order ----
    impressions = split_rows is not None and not args.users and "candidates" in split_rows.column_names
    if output.suffix.lower() == ".txt" and not impressions:
        raise InputError(f"{output}: .txt is MIND's prediction.txt, for impression data; use .jsonl, .csv or .parquet")
    world, process = accelerator.num_processes, accelerator.process_index
    bounds = np.linspace(0, num_users, world + 1).astype(int)
    mine = range(bounds[process], bounds[process + 1])
    user_skipped: dict[str, int] = {}  # lines of the users file
    if args.users:
        batches = _batches(iter_users(args.users, known, user_skipped, mine), args.batch_size)
    else:
        starts = range(mine.start, mine.stop, args.batch_size)
        batches = (_row_dicts(split_rows, b, min(b + args.batch_size, mine.stop)) for b in starts)
    part = output.with_name(f".{output.name}.part-{process}.parquet")
    writer = RowWriter(output if world == 1 else part)
    num_items = len(catalogue)
    ranked, new_texts = 0, 0
    progress = tqdm(total=num_users, desc="Ranking", disable=not accelerator.is_local_main_process, unit="user")
    try:
        for number, batch_rows in enumerate(batches, 1):
            # cold start: items unseen at training, embedded from their text; history only, never ranked
            batch_rows, texts = resolve_texts(batch_rows, num_items)
            batch_vectors, history_catalogue = with_texts(
                model, tokenizer, items, catalogue, vectors, texts, accelerator, args.batch_size
            )  # (items + texts, dim)
            names = np.concatenate([item_ids, np.asarray(texts, dtype=object)])  # what history indices name
            collator = user_collator(config, args.exclude_history, history_catalogue)
            batch = {key: value.to(accelerator.device) for key, value in collator(batch_rows).items()}
            users = user_vectors(model, batch, batch_vectors, accelerator)  # (users, dim)
            user_ids = [str(row["user_id"]) for row in batch_rows]
            if args.pseudonymize_user_ids:
                user_ids = pseudonymize(user_ids, salt)
            if impressions:
                table = _impression_table(model, users, vectors, batch, batch_rows, user_ids, item_ids)
            else:
                logits, found, log_normalizer = rank(
                    model, batch, users, vectors, args.top_k, args.item_chunk_size, args.diversify,
                    args.diversity_lambda, index,
                )  # fmt: skip
                because = None
                if args.explain:
                    because = explain(
                        model, batch_rows, found, logits, batch_vectors, collator, accelerator, args.explain,
                        args.batch_size,
                    )  # fmt: skip
                table = _ranking_table(logits, found, log_normalizer, user_ids, names, batch_rows, split_rows, because)
            writer.write(table)
            ranked, new_texts = ranked + len(batch_rows), new_texts + len(texts)
            if number % 64 == 0:
                release_free_memory()
            progress.update(world * len(batch_rows))
        totals = [(ranked, new_texts, user_skipped)]
        totals = gather_object(totals) if world > 1 else totals
        ranked, new_texts = sum(t[0] for t in totals), sum(t[1] for t in totals)
        if args.users and not ranked:
            raise InputError(f'{args.users}: no usable user (each line: {{"user_id": ..., "history": [...]}})')
    except BaseException:
        writer.abort()
        raise
    progress.close()
    writer.close()
    if world > 1:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            merge_parts([output.with_name(f".{output.name}.part-{r}.parquet") for r in range(world)], output)
    accelerator.wait_for_everyone()
    for _, _, counts in totals:
        for reason, count in counts.items():
            skipped[reason] = skipped.get(reason, 0) + count
    if skipped and accelerator.is_main_process:
        logger.info("Skipped: %s", format_skipped(skipped).replace("\n", "; "))
    seconds = time.perf_counter() - start
    summary = {
        "users": ranked,
        "items": num_items,
        "new_texts": new_texts,
        "processes": world,
        "vector_cache": "hit" if cache_hit else ("written" if cache_dir else "off"),
        "index": index_name,
        "encode_seconds": round(encoded - start, 2),
        "seconds": round(seconds, 2),
        "users_per_second": round(ranked / max(time.perf_counter() - encoded, 1e-9), 1),
        "output": str(output),
    }
    if accelerator.is_main_process:
        logger.info("Recommended: %s", json.dumps(summary, ensure_ascii=False))
    return summary


def _ann_index(args: RecommendArguments, vectors: torch.Tensor, cache_dir: Path | None, key: str, accelerator):
    """The faiss index `--index` asks for (built by the main process and cached beside the vectors, read by the
    others), and what the summary calls it: its factory string, or "exact" for the whole-catalogue scan."""
    if args.index == "exact":
        return None, "exact"
    try:
        from recsys_bert import index as ann
    except ImportError:
        if args.index == "faiss":
            raise InputError("--index faiss needs faiss: pip install 'recsys-bert[ann]'") from None
        return None, "exact"
    if args.index == "auto" and len(vectors) < ann.EXACT_BELOW:
        return None, "exact"
    params = ann.index_params(len(vectors), vectors.shape[1])
    if args.index_factory:  # another kind of index: the search settings given, else faiss's own defaults
        params = {"factory": args.index_factory}
    given = {"nprobe": args.nprobe, "k_factor": args.k_factor, "ef_search": args.ef_search}
    params |= {key: value for key, value in given.items() if value}
    with accelerator.main_process_first():
        index, from_disk = ann.load_or_build(vectors.cpu(), cache_dir, key, params)
    if accelerator.is_main_process:
        logger.info("Index %s (%s): %s", params, "from the cache" if from_disk else "built", len(vectors))
    return index, params["factory"]


def release_free_memory() -> None:
    """Hands the C heap's free memory back to the system (glibc's `malloc_trim`; elsewhere nothing). A batch job's
    per-batch tensors and Arrow tables of varying sizes otherwise leave the heap growing with the number of users."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _batches(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _row_dicts(rows, begin: int, end: int) -> list[dict]:
    if isinstance(rows, list):
        return rows[begin:end]
    columns = rows[begin:end]  # a datasets slice: column -> values
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _ranking_table(logits, index, log_normalizer, user_ids, item_ids, batch_rows, split_rows, because) -> pa.Table:
    """One row per user: `user_id`, `item_ids`, `scores` (logits), `probabilities` (softmax over the catalogue),
    `target_id` for the users of a split, and with `--explain`, `because`: per recommended item, the history items
    that drove it (`item_id`, `drop` of the score without it, `share`). Items excluded by `exclude_history`
    (logit -inf) are left out."""
    logits, index = logits.cpu(), index.cpu()
    probabilities = (logits - log_normalizer.cpu()[:, None]).exp()  # (users, k)
    keep = torch.isfinite(logits)
    columns = {
        "user_id": user_ids,
        "item_ids": [item_ids[i[k].numpy()].tolist() for i, k in zip(index, keep)],
        "scores": [s[k].tolist() for s, k in zip(logits, keep)],
        "probabilities": [p[k].tolist() for p, k in zip(probabilities, keep)],
    }
    if split_rows is not None and "target" in batch_rows[0]:
        columns["target_id"] = [item_ids[row["target"]] for row in batch_rows]
    if because is not None:
        columns["because"] = [
            [
                [{"item_id": item_ids[h], "drop": drop, "share": share} for h, drop, share in reasons]
                for reasons, kept in zip(user, k.tolist())
                if kept
            ]
            for user, k in zip(because, keep)
        ]
    return pa.table(
        columns,
        schema=pa.schema(
            [
                ("user_id", pa.string()),
                ("item_ids", pa.list_(pa.string())),
                ("scores", pa.list_(pa.float32())),
                ("probabilities", pa.list_(pa.float32())),
                *([("target_id", pa.string())] if "target_id" in columns else []),
                *([("because", pa.list_(pa.list_(BECAUSE)))] if "because" in columns else []),
            ]
        ),
    )


def _impression_table(model, users, vectors, batch, batch_rows, user_ids, item_ids) -> pa.Table:
    """MIND: each impression's candidates in their given order, their logits, and their rank (1 = best)."""
    candidates = batch["candidate_ids"]  # (users, candidates), -1 = padding
    # the model's scores over the catalogue, then the candidates': exactly what evaluation ranks
    logits = model.score(users, vectors, batch["history_ids"]).gather(1, candidates.clamp(min=0))  # (users, cands)
    logits = logits.masked_fill(candidates < 0, -torch.inf).cpu()
    order = logits.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, order.shape[1] + 1).expand_as(order))  # (users, candidates)
    lengths = (candidates >= 0).sum(1).cpu().tolist()
    return pa.table(
        {
            "impression_id": [str(row["impression_id"]) for row in batch_rows],
            "user_id": user_ids,
            "item_ids": [item_ids[np.asarray(row["candidates"])].tolist() for row in batch_rows],
            "scores": [s[:n].tolist() for s, n in zip(logits, lengths)],
            "ranks": [r[:n].tolist() for r, n in zip(ranks, lengths)],
        },
        schema=pa.schema(
            [
                ("impression_id", pa.string()),
                ("user_id", pa.string()),
                ("item_ids", pa.list_(pa.string())),
                ("scores", pa.list_(pa.float32())),
                ("ranks", pa.list_(pa.int32())),
            ]
        ),
    )
