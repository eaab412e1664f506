"""GPU throughput against the ceilings of `../shared/device/README.md`, the ceilings measured again in the same run.

1. Ceiling: a plain PyTorch loop over the same encoder (its real weights in float32, bf16 autocast, SDPA attention) on
   random tokens of exactly `--tokens` tokens, no padding: training (forward, mean pooling, backward, AdamW) and
   inference sequences/s, medians over `--steps` steps after warm-up; the README's method (MiniLM at 64 tokens on an
   H200: 38,800 train, 103,000 inference).
2. The project's training step (train.py's: `TrainCollator`'s unique items, forward, loss, backward, clipping, AdamW)
   on the config's data at `--finetune_layers`, bf16 autocast: encoder sequences/s and samples/s, and the fraction of
   the ceiling per sequence and per real (non-padding) token.
3. Catalogue encoding, as recommend.py does it (`Catalogue.item_vectors`, tokenizing included), against
   `SentenceTransformer.encode` under the same bf16 autocast, on the config's item texts repeated to
   `--encode_items`: items/s, their ratio, and the fraction of the inference ceiling.

    python benchmarks/gpu_throughput.py --config configs/scientific.yaml --encoder_name_or_path DIR
    python benchmarks/gpu_throughput.py --quick      # tiny sizes; runs on a CPU too (CI-sized)

The last line of stdout is one JSON object.
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
from recsys_bert.losses import step_loss  # noqa: E402
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel  # noqa: E402
from recsys_bert.trainer import parameter_groups  # noqa: E402

# ../shared/device/README.md, H200, MiniLM-L6 (hidden 384), sequences/s
README_CEILINGS = {32: {"train": 67400, "inference": 171000}, 64: {"train": 38800, "inference": 103000},
                   128: {"train": 20500, "inference": 58100}}  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", default="configs/scientific.yaml", help="Training config: data and model.")
    parser.add_argument("--encoder_name_or_path", default=None, help="Encoder (default: the packaged MiniLM).")
    parser.add_argument("--data_dir", default=None, help="Overrides the config's data_dir.")
    parser.add_argument("--finetune_layers", type=int, default=-1, help="Encoder layers the project's step trains.")
    parser.add_argument("--batch_size", type=int, default=None, help="Samples per step (default: the config's).")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps of each kind (after warm-up).")
    parser.add_argument("--tokens", type=int, default=64, help="Tokens per sequence of the ceiling loop.")
    parser.add_argument("--ceiling_batch", type=int, default=512, help="Sequences per step of the ceiling loop.")
    parser.add_argument("--encode_items", type=int, default=20000, help="Texts encoded (the catalogue repeated).")
    parser.add_argument("--encode_batch", type=int, default=512, help="Texts per batch, both encoders.")
    parser.add_argument("--encode_rounds", type=int, default=2, help="Timed rounds of each encoder (alternating).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a check that everything runs.")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.tokens, args.ceiling_batch, args.encode_items, args.encode_batch = 2, 16, 16, 64, 32
        args.encode_rounds = 1
        args.batch_size = args.batch_size or 16
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision(device: torch.device) -> str:
    """bf16 on a GPU; float32 on a CPU, whose bf16 autocast is far slower (`--quick` only checks that all runs)."""
    return "bf16" if device.type == "cuda" else "no"


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision(device) == "bf16")


def timed_median(step, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Median seconds of `step()` over `steps` calls after `warmup` untimed ones, the device synchronized."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ceiling(model: RecsysBertModel, args, device: torch.device) -> dict:
    """Sequences/s of the bare encoder at `--tokens` tokens: training (fwd + bwd + AdamW) and inference."""
    encoder = model.encoder
    input_ids = torch.randint(1000, 20000, (args.ceiling_batch, args.tokens), device=device)
    attention_mask = torch.ones_like(input_ids)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)

    def train_step():
        with autocast(device):
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, t, hidden)
            loss = hidden.mean(dim=1).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def inference_step():
        with autocast(device):
            encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.mean(dim=1)

    encoder.train()
    train_seconds = timed_median(train_step, args.steps, device)
    encoder.eval()
    inference_seconds = timed_median(inference_step, args.steps, device)
    return {
        "tokens": args.tokens,
        "batch": args.ceiling_batch,
        "train_sequences_per_s": round(args.ceiling_batch / train_seconds, 1),
        "inference_sequences_per_s": round(args.ceiling_batch / inference_seconds, 1),
    }


def project_training(model_args, data_args, train_args, args, device: torch.device) -> dict:
    """train.py's step on real batches of the config's data (bf16 autocast), from a fresh pretrained model."""
    tokenizer = AutoTokenizer.from_pretrained(model_args.encoder_name_or_path or default_encoder_path())
    data = load_data(data_args, max_history=model_args.max_history, seed=train_args.seed)
    catalogue = Catalogue(tokenize_items(data.items, tokenizer, model_args.max_item_tokens)["input_ids"],
                          tokenizer.pad_token_id)  # fmt: skip
    config = RecsysBertConfig(**{**vars(model_args), "text_skip_weight": 0.0})  # steps train without the skip
    model = RecsysBertModel.from_encoder(config).to(device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision(device))
    catalogue.compute_frozen_states(model, accelerator, train_args.per_device_eval_batch_size)
    collator = TrainCollator(catalogue, config, train_args)
    loader = DataLoader(data.train, batch_size=train_args.per_device_train_batch_size, shuffle=True, drop_last=True,
                        collate_fn=collator.collate_step,
                        generator=torch.Generator().manual_seed(train_args.seed))  # fmt: skip
    batches = iter(loader)
    optimizer = torch.optim.AdamW(parameter_groups(model, train_args), lr=train_args.learning_rate)
    counts = torch.as_tensor(data.train_item_counts, dtype=torch.float64) + 1.0
    item_log_frequency = (counts / counts.sum()).log().float().to(device)  # (items,)
    model.train()
    records = []

    def step():
        batch = {key: value.to(device, non_blocking=True) for key, value in next(batches).items()}
        with autocast(device):
            loss = step_loss(model, batch, config.score_temperature, item_log_frequency, train_args.in_batch_negatives)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mask = batch["item_attention_mask"]  # (unique_items, tokens)
        records.append({"sequences": mask.shape[0], "tokens": int(mask.sum()), "samples": len(batch["positive_ids"])})

    # every step has other shapes (unique items, sub-batch widths): warm up as many steps as are timed. With 3
    # warm-up steps an H200 gave 0.44 s/step where train.py's own loop ran at 0.13 s/step once under way.
    seconds = timed_median(step, args.steps, device, warmup=max(3, args.steps))  # the collator's work counts
    timed = records[-args.steps :]
    sequences = statistics.mean(r["sequences"] for r in timed)
    tokens = statistics.mean(r["tokens"] for r in timed)
    return {
        "data": data.name,
        "finetune_layers": config.finetune_layers,
        "batch_size": train_args.per_device_train_batch_size,
        "num_negatives": train_args.num_negatives,
        "max_item_tokens": config.max_item_tokens,
        "seconds_per_step": round(seconds, 4),
        "samples_per_s": round(timed[0]["samples"] / seconds, 1),
        "encoder_sequences_per_step": round(sequences, 1),
        "real_tokens_per_sequence": round(tokens / sequences, 1),
        "encoder_sequences_per_s": round(sequences / seconds, 1),
        "real_tokens_per_s": round(tokens / seconds, 1),
        "steps_per_epoch": len(data.train) // train_args.per_device_train_batch_size,
        "texts": list(data.items["text"]),
    }


def encoding(texts: list[str], encoder_path: str, max_tokens: int, args, device: torch.device) -> dict:
    """Items/s of recommend.py's catalogue encoding vs `SentenceTransformer.encode`, both under bf16 autocast."""
    from sentence_transformers import SentenceTransformer

    texts = (texts * (args.encode_items // len(texts) + 1))[: args.encode_items]
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=precision(device))
    config = RecsysBertConfig(encoder_name_or_path=encoder_path, finetune_layers=0, max_item_tokens=max_tokens)
    model = RecsysBertModel.from_encoder(config).to(device).eval()  # pooled, normalized MiniLM: what ST computes
    st = SentenceTransformer(encoder_path, device=str(device), model_kwargs={"dtype": torch.float32})
    st.max_seq_length = max_tokens
    outputs = {}

    def project():
        ids = tokenizer(texts, truncation=True, max_length=max_tokens, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]  # fmt: skip
        outputs["project"] = Catalogue(ids, tokenizer.pad_token_id).item_vectors(model, accelerator, args.encode_batch)
        outputs["tokens"] = sum(len(i) for i in ids)

    def sentence_transformers():
        with autocast(device):
            outputs["st"] = st.encode(texts, batch_size=args.encode_batch, convert_to_tensor=True,
                                      show_progress_bar=False)  # fmt: skip

    seconds = {"project": [], "sentence_transformers": []}
    for number in range(args.encode_rounds + 1):  # alternating; the first round warms up
        encoders = (("project", project), ("sentence_transformers", sentence_transformers))
        for name, fn in encoders[:: 1 - 2 * (number % 2)]:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if number:
                seconds[name].append(time.perf_counter() - start)
    items_per_s = {name: round(len(texts) / statistics.median(s), 1) for name, s in seconds.items()}
    cosine = (outputs["project"].float() * outputs["st"].float().to(outputs["project"].device)).sum(-1)  # (items,)
    return {
        "items": len(texts),
        "batch": args.encode_batch,
        "real_tokens_per_item": round(outputs["tokens"] / len(texts), 1),
        "items_per_s": items_per_s,
        "ratio_vs_sentence_transformers": round(items_per_s["project"] / items_per_s["sentence_transformers"], 3),
        "cosine_vs_sentence_transformers_min": round(cosine.min().item(), 4),
    }


def main() -> None:
    args = parse()
    hf_logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    argv = ["--config", args.config, "--finetune_layers", str(args.finetune_layers)]
    for flag in ("encoder_name_or_path", "data_dir"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    if args.batch_size:
        argv += ["--per_device_train_batch_size", str(args.batch_size)]
    if args.quick:
        argv += ["--num_negatives", "16", "--max_item_tokens", "16"]
    model_args, data_args, train_args = parse_args(argv)
    if data_args.data_dir and not Path(data_args.data_dir).is_absolute():
        data_args.data_dir = str(ROOT / data_args.data_dir)
    encoder_path = model_args.encoder_name_or_path or default_encoder_path()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; encoder {encoder_path}; config {args.config}", flush=True)

    bare = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=encoder_path, finetune_layers=-1))
    limits = ceiling(bare.to(device), args, device)
    del bare
    print(f"ceiling at {args.tokens} tokens, batch {args.ceiling_batch}: train {limits['train_sequences_per_s']:,.0f}"
          f", inference {limits['inference_sequences_per_s']:,.0f} sequences/s", flush=True)  # fmt: skip
    train = project_training(model_args, data_args, train_args, args, device)
    texts = train.pop("texts")
    print(f"project step ({train['data']}, finetune_layers {train['finetune_layers']}, batch {train['batch_size']}): "
          f"{train['seconds_per_step']:.3f} s/step, {train['samples_per_s']:,.0f} samples/s, "
          f"{train['encoder_sequences_per_s']:,.0f} encoder sequences/s of {train['real_tokens_per_sequence']} "
          "real tokens", flush=True)  # fmt: skip
    encode = encoding(texts, encoder_path, model_args.max_item_tokens, args, device)
    print(f"encoding {encode['items']:,} items: project {encode['items_per_s']['project']:,.0f} items/s, "
          f"sentence-transformers {encode['items_per_s']['sentence_transformers']:,.0f} items/s "
          f"({encode['ratio_vs_sentence_transformers']:.2f}x)", flush=True)  # fmt: skip
    ceiling_tokens_train = limits["train_sequences_per_s"] * args.tokens
    ceiling_tokens_inference = limits["inference_sequences_per_s"] * args.tokens
    fractions = {
        "train_sequences": round(train["encoder_sequences_per_s"] / limits["train_sequences_per_s"], 3),
        "train_real_tokens": round(train["real_tokens_per_s"] / ceiling_tokens_train, 3),
        "encode_items": round(encode["items_per_s"]["project"] / limits["inference_sequences_per_s"], 3),
        "encode_real_tokens": round(
            encode["items_per_s"]["project"] * encode["real_tokens_per_item"] / ceiling_tokens_inference, 3
        ),
    }
    print(f"fractions of this run's ceiling: {json.dumps(fractions)}")
    result = {
        "benchmark": "gpu_throughput",
        "device": name,
        "torch": torch.__version__,
        "ceiling": limits,
        "readme_ceiling": README_CEILINGS.get(args.tokens),
        "train": train,
        "encode": encode,
        "ratio_vs_sentence_transformers": encode["ratio_vs_sentence_transformers"],
        "fraction_of_ceiling": fractions,
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
