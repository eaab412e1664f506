"""Catalogue encoding throughput: recommend.py's item encoder vs sentence-transformers, and int8 on the CPU.

Three encoders of the same MiniLM (all-MiniLM-L6-v2, fp32) over the same MovieLens item texts, truncated alike
(`max_item_tokens`), at the same batch size, texts in, unit vectors out:

- `project`: tokenize once, then `Catalogue.item_vectors` (length-sorted batches, `RecsysBertModel.encode_items`),
  with mean pooling and no projection head, i.e. the sentence-transformers pipeline;
- `sentence_transformers`: `SentenceTransformer(default_encoder_path()).encode(texts, batch_size=...)`;
- `int8`: `project` after `torch.ao.quantization.quantize_dynamic` of its `nn.Linear` layers (int8 weights, int8
  activations quantized per batch).

Repeats rotate the order of the three so that background load hits each alike; figures are medians. The vectors are
checked against each other (max abs difference). Then the price of int8 in quality: test NDCG@10 of the trained model
in `runs/movielens` with its item and user vectors in fp32 vs int8, by the project's evaluation code.

    python benchmarks/encode_throughput.py           # 2,000 texts, 3 repeats, then NDCG@10 (6-7 min, 2 cores)
    python benchmarks/encode_throughput.py --quick   # 300 texts, 2 repeats, no NDCG

The last line of stdout is one JSON object; `ratio_vs_sentence_transformers` is project items/s / ST items/s.
"""

from __future__ import annotations

import argparse
import json
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
import yaml  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from recsys_bert.arguments import DataArguments  # noqa: E402
from recsys_bert.catalogue import Catalogue  # noqa: E402
from recsys_bert.collators import EvalCollator  # noqa: E402
from recsys_bert.data import load_data, tokenize_items  # noqa: E402
from recsys_bert.encoders import default_encoder_path  # noqa: E402
from recsys_bert.evaluation import eval_loader, evaluate, model_scorer, protocol  # noqa: E402
from recsys_bert.inference import quantize_int8  # noqa: E402
from recsys_bert.modeling import (  # noqa: E402
    RecsysBertConfig,
    RecsysBertModel,
    load_model,  # noqa: E402
)

METHODS = ("project", "sentence_transformers", "int8")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000, help="Encode the first N MovieLens item texts.")
    parser.add_argument("--batch_size", type=int, default=256, help="Texts per batch, for every encoder (256 is "
                        "recommend.py's default).")  # fmt: skip
    parser.add_argument(
        "--max_item_tokens",
        type=int,
        default=32,
        help="Truncation of every encoder's input (the "
        "movielens config's max_item_tokens; sentence-transformers' max_seq_length is set to it).",
    )
    parser.add_argument("--repeats", type=int, default=3, help="Rounds; each encodes the texts once per encoder.")
    parser.add_argument("--data_dir", default=str(ROOT / "data" / "ml-latest-small"), help="MovieLens folder.")
    parser.add_argument(
        "--model",
        default=str(ROOT / "runs" / "movielens"),
        help="Trained model (train.py output) "
        "whose test NDCG@10 is measured with fp32 and int8 vectors; skipped when absent.",
    )
    parser.add_argument(
        "--skip_ndcg",
        action="store_true",
        help="Skip the NDCG@10 part (two encodings of the whole catalogue, about 2 min on 2 cores).",
    )
    parser.add_argument(
        "--int8_scheme",
        choices=["per_channel", "per_tensor"],
        default="per_channel",
        help="Weight "
        "scales of the int8 layers: one per output channel, or one per matrix (torch's default "
        "qconfig; measured to lose more: cosine to fp32 about .95 vs .97 on MovieLens texts).",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--profile", action="store_true", help="Print torch.profiler's top operators of one pass "
                        "of the project encoder and one of sentence-transformers.")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="300 texts, 2 repeats, no NDCG part (well under 2 "
                        "minutes on 2 cores).")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeats, args.skip_ndcg = min(args.items, 300), 2, True
    return args


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """What `recsys_bert.data.tokenize_items` does to each text (without its `datasets` cache)."""
    return tokenizer(texts, truncation=True, max_length=max_tokens, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]  # fmt: skip


def padded_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> int:
    """Tokens an encoder runs over texts of these lengths taken in `order`, each batch padded to its longest."""
    return int(sum(lengths[order[i : i + batch_size]].max() * len(order[i : i + batch_size])
                   for i in range(0, len(order), batch_size)))  # fmt: skip


def main() -> None:
    args = parse()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = Accelerator(cpu=True)
    load_start = os.getloadavg()[0]
    encoder_path = default_encoder_path()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoder {encoder_path}")
    data = load_data(DataArguments(data_format="movielens", data_dir=args.data_dir), max_history=30)
    texts = data.items["text"][: args.items]
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)

    config = RecsysBertConfig(
        pooling="mean", projection_dim=0, finetune_layers=0, max_item_tokens=args.max_item_tokens
    )
    model = RecsysBertModel.from_encoder(config).eval()  # pooled, normalized MiniLM: what ST computes
    int8_model = quantize_int8(model, args.int8_scheme)
    st = SentenceTransformer(encoder_path, device="cpu")
    st.max_seq_length = args.max_item_tokens
    assert next(st.parameters()).dtype == next(model.parameters()).dtype == torch.float32

    def encode(method: str, texts: list[str]) -> tuple[torch.Tensor, float]:
        """Texts in, unit vectors out; also returns the seconds spent after tokenizing (project and int8)."""
        if method == "sentence_transformers":
            return st.encode(texts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False), 0.0
        catalogue = Catalogue(tokenize(tokenizer, texts, args.max_item_tokens), tokenizer.pad_token_id)
        start = time.perf_counter()
        vectors = catalogue.item_vectors(model if method == "project" else int8_model, accelerator, args.batch_size)
        return vectors, time.perf_counter() - start

    print(
        f"{len(texts):,} MovieLens texts, max {args.max_item_tokens} tokens, batch {args.batch_size}, fp32 "
        f"(int8: dynamic quantization of the nn.Linear layers, {args.int8_scheme}); load {os.getloadavg()[0]:.1f}"
    )
    for method in METHODS:  # warm-up
        encode(method, texts[:32])
    seconds = {m: [] for m in METHODS}
    encode_only = {m: [] for m in METHODS}
    vectors = {}
    for repeat in range(args.repeats):
        for method in METHODS[repeat % 3 :] + METHODS[: repeat % 3]:
            start = time.perf_counter()
            vectors[method], after_tokenizing = encode(method, texts)
            seconds[method].append(time.perf_counter() - start)
            encode_only[method].append(after_tokenizing)
            print(f"round {repeat + 1}/{args.repeats} {method:>21}: {len(texts) / seconds[method][-1]:7.1f} items/s")

    if args.profile:
        for method in ("project", "sentence_transformers"):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
                encode(method, texts)
            print(f"{method}:")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    items_per_s = {m: round(len(texts) / statistics.median(seconds[m]), 1) for m in METHODS}
    ratio = items_per_s["project"] / items_per_s["sentence_transformers"]
    project_vectors = vectors["project"]
    diff_st = (project_vectors - vectors["sentence_transformers"].cpu()).abs().max().item()
    diff_int8 = (project_vectors - vectors["int8"]).abs().max().item()
    cosine_int8 = (project_vectors * vectors["int8"]).sum(-1)  # (items,) both unit vectors
    lengths = np.array([len(ids) for ids in tokenize(tokenizer, texts, args.max_item_tokens)])  # (texts,)
    padded = {  # tokens the encoder runs: each batch padded to its longest text
        "project": padded_tokens(lengths, np.argsort(-lengths, kind="stable"), args.batch_size),  # by token count
        "sentence_transformers": padded_tokens(lengths, np.argsort([-len(t) for t in texts]), args.batch_size),
    }  # sentence-transformers sorts by character count
    print()
    print("| encoder | items/s | ratio to sentence-transformers | max abs diff to project fp32 |")
    print("|---|---|---|---|")
    for method, diff in (("project", 0.0), ("sentence_transformers", diff_st), ("int8", diff_int8)):
        relative = items_per_s[method] / items_per_s["sentence_transformers"]
        print(f"| {method} | {items_per_s[method]:.1f} | {relative:.2f} | {diff:.2e} |")
    print(
        f"tokens run (padding included): project {padded['project']:,}, sentence-transformers "
        f"{padded['sentence_transformers']:,} (it sorts texts by characters, not tokens); {lengths.sum():,} real"
    )
    print(
        f"project fp32 vs sentence-transformers: max abs diff {diff_st:.2e} (the same vectors); int8 vs fp32: max "
        f"abs diff {diff_int8:.3f}, cosine min {cosine_int8.min().item():.4f} mean {cosine_int8.mean().item():.4f}"
    )
    result = {
        "benchmark": "encode_throughput",
        "ratio_vs_sentence_transformers": round(ratio, 3),
        "items_per_s": items_per_s,
        "int8_speedup_vs_fp32": round(items_per_s["int8"] / items_per_s["project"], 3),
        "project_encode_only_items_per_s": round(len(texts) / statistics.median(encode_only["project"]), 1),
        "max_abs_diff_vs_sentence_transformers": diff_st,
        "int8_max_abs_diff_vs_fp32": round(diff_int8, 5),
        "int8_cosine_vs_fp32": {
            "min": round(cosine_int8.min().item(), 5),
            "mean": round(cosine_int8.mean().item(), 5),
        },
        "config": {
            "items": len(texts),
            "tokens": int(lengths.sum()),
            "padded_tokens": padded,
            "batch_size": args.batch_size,
            "max_item_tokens": args.max_item_tokens,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "precision": "fp32",
            "int8_scheme": args.int8_scheme,
            "quick": args.quick,
            "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
    }
    assert diff_st < 1e-4, f"project and sentence-transformers vectors differ by {diff_st}"
    result["ndcg"] = ndcg_fp32_vs_int8(args, accelerator)
    print(json.dumps(result))


def ndcg_fp32_vs_int8(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """Test NDCG@10 of the trained model with its item and user vectors in fp32 and in int8."""
    path = Path(args.model)
    if args.skip_ndcg:
        print("NDCG@10 fp32 vs int8: skipped (--skip_ndcg or --quick)")
        return {"skipped": "--skip_ndcg or --quick"}
    if not (path / "model.safetensors").is_file():
        print(f"NDCG@10 fp32 vs int8: skipped, no trained model in {path} (make demo writes runs/movielens)")
        return {"skipped": f"no trained model in {path}"}
    model, tokenizer = load_model(str(path))
    settings = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    exclude_history = bool(settings.get("exclude_history", True))
    data = load_data(
        DataArguments(data_format="movielens", data_dir=args.data_dir), max_history=model.config.max_history
    )
    items = tokenize_items(data.items, tokenizer, model.config.max_item_tokens)
    catalogue = Catalogue(items["input_ids"], tokenizer.pad_token_id)
    collator = EvalCollator(model.config.max_history)
    loader = eval_loader(data.test, collator, 256, accelerator)
    out = {"model": os.path.relpath(path, ROOT), "items": len(catalogue), "history_excluded": exclude_history}
    vectors = {}
    for name, candidate in (("fp32", model), ("int8", quantize_int8(model, args.int8_scheme))):
        start = time.perf_counter()
        vectors[name] = catalogue.item_vectors(candidate, accelerator, args.batch_size)  # (items, dim)
        encode_seconds = time.perf_counter() - start
        metrics = evaluate(model_scorer(candidate, vectors[name], accelerator), loader, accelerator, [10])
        metrics = metrics[protocol(exclude_history)]
        out[name] = {
            "ndcg@10": round(metrics["ndcg@10"], 4),
            "recall@10": round(metrics["recall@10"], 4),
            "users": metrics["users"],
            "catalogue_items_per_s": round(len(catalogue) / encode_seconds, 1),
        }
        print(
            f"trained model, {name}: test NDCG@10 {metrics['ndcg@10']:.4f}, Recall@10 {metrics['recall@10']:.4f} "
            f"({metrics['users']} users); catalogue encoded at {len(catalogue) / encode_seconds:.1f} items/s"
        )
    out["ndcg@10_change"] = round(out["int8"]["ndcg@10"] - out["fp32"]["ndcg@10"], 4)
    out["item_vectors_max_abs_diff"] = round((vectors["fp32"] - vectors["int8"]).abs().max().item(), 5)
    metrics_file = path / "metrics.json"
    if metrics_file.is_file():  # the fp32 figure must be what training reported for these weights
        out["metrics_json_ndcg@10"] = round(
            json.loads(metrics_file.read_text())["test"][protocol(exclude_history)]["ndcg@10"], 4
        )
    print(
        f"int8 changes NDCG@10 by {out['ndcg@10_change']:+.4f} (fp32 {out['fp32']['ndcg@10']:.4f} -> int8 "
        f"{out['int8']['ndcg@10']:.4f}; metrics.json says {out.get('metrics_json_ndcg@10')})"
    )
    return out


if __name__ == "__main__":
    main()
