"""The Hugging Face Hub: a self-contained model folder (model card, item tower as a sentence-transformers model) and
its upload.

    python -m recsys_bert.hub runs/scientific --hub_model_id me/recsys-bert-scientific [--hub_private]

The token comes from the environment (`HF_TOKEN`) or `huggingface-cli login`, never from a config or a log.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

from recsys_bert.encoders import default_encoder_path
from recsys_bert.modeling import RecsysBertModel, load_model
from recsys_bert.utils import InputError, atomic_path, write_text_atomic

ITEM_ENCODER_FOLDER = "item_encoder"
DEFAULT_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# the card's metrics: full ranking, or MIND's impression metrics
METRIC_NAMES = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10", "mrr": "MRR"}
IMPRESSION_METRIC_NAMES = {"auc": "AUC", "mrr": "MRR", "ndcg@5": "nDCG@5", "ndcg@10": "nDCG@10"}


def upload_files(folder: Path) -> list[Path]:
    """The files of a train.py output folder that make the model (relative paths): not the checkpoints (resume
    state), the best-model scratch folder, nor hidden or temporary files."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        first = relative.parts[0]
        if not path.is_file() or first.startswith(("checkpoint-", "best_model", ".")) or path.name.startswith("."):
            continue
        if path.name.endswith(".tmp"):
            continue
        files.append(relative)
    return files


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, commit_message: str | None = None) -> str:
    """Uploads a train.py output folder as one commit to the Hub model repo `repo_id` (created if needed).

    Returns:
        The commit's URL.
    """
    folder = Path(folder)
    for name in ("config.json", "model.safetensors", "README.md", f"{ITEM_ENCODER_FOLDER}/modules.json"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: {name} missing; push a folder written by train.py")
    api = HfApi()  # token: HF_TOKEN or the saved login
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [
        CommitOperationAdd(path_in_repo=relative.as_posix(), path_or_fileobj=str(folder / relative))
        for relative in upload_files(folder)
    ]
    info = api.create_commit(
        repo_id=repo.repo_id,
        operations=operations,
        commit_message=commit_message or "Upload recsys-bert model",
        repo_type="model",
    )
    return info.commit_url


# ---------------------------------------------------------------- the item tower as a sentence-transformers model


@torch.no_grad()
def save_item_encoder(model: RecsysBertModel, tokenizer, target: Path) -> None:
    """Saves the item tower (encoder, pooling, projection, normalisation) as a sentence-transformers model, so that
    `SentenceTransformer(target).encode(texts)` gives the recommender's item vectors. Written beside `target` and
    renamed into place."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from transformers import AutoModel

    config = model.config
    with atomic_path(target, folder=True) as folder, tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        # the encoder with the pooler its class expects (zeros, unused): loading it reports no missing weights
        encoder = AutoModel.from_config(model.encoder.config)
        missing, _ = encoder.load_state_dict(model.encoder.state_dict(), strict=False)
        for name, param in encoder.named_parameters():
            if name in missing:
                param.zero_()
        encoder.save_pretrained(f"{scratch}/encoder")
        tokenizer.save_pretrained(f"{scratch}/encoder")
        hidden = model.encoder.config.hidden_size
        modules = [
            Transformer(f"{scratch}/encoder", max_seq_length=config.max_item_tokens),
            Pooling(hidden, config.pooling),
        ]
        if config.projection_dim:
            first, _, second = model.projection
            modules += [
                Dense(hidden, hidden, activation_function=torch.nn.GELU(), init_weight=first.weight.clone(),
                      init_bias=first.bias.clone()),
                Dense(hidden, config.projection_dim, activation_function=None, init_weight=second.weight.clone(),
                      init_bias=second.bias.clone()),
            ]  # fmt: skip
        modules.append(Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(folder))
        for f in folder.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)


# ---------------------------------------------------------------- the model card


def _default_encoder_or_none() -> str | None:
    try:
        return default_encoder_path()
    except InputError:  # the package is not installed (e.g. a GPU machine given the encoder as a folder)
        return None


def model_card(results: dict, settings: dict, model_config: dict, repo_id: str | None = None) -> str:
    """README.md of a trained model: Hub metadata (library, tags, data, base model, metrics) and a human part (the
    results with their protocol, how to use it, the training settings)."""
    protocol = results.get("protocol", {})
    data_name = protocol.get("data", "data")
    test = results.get("test", {})
    encoder = model_config.get("encoder_name_or_path")
    base_model = DEFAULT_ENCODER_HUB_ID if encoder is None or encoder == _default_encoder_or_none() else encoder
    if Path(str(base_model)).exists():  # a local folder is not a Hub id
        base_model = None
    impressions = protocol.get("ranking") == "impressions"
    names = IMPRESSION_METRIC_NAMES if impressions else METRIC_NAMES
    split = "test split, " + ("impressions" if impressions else f"full ranking over {protocol.get('items')} items")
    eval_results = [
        EvalResult(
            task_type="recommendation",
            task_name="Sequential recommendation",
            dataset_type=data_name,
            dataset_name=data_name,
            dataset_split="test",
            metric_type=key,
            metric_name=name,
            metric_value=round(float(test[key]), 4),
        )
        for key, name in names.items()
        if key in test
    ]
    data = ModelCardData(
        library_name="recsys-bert",
        license="apache-2.0",
        tags=["recommendation", "sequential-recommendation", "bert", "sentence-transformers", "recsys-bert"],
        datasets=[data_name],
        base_model=base_model,
        model_name=repo_id or f"recsys-bert-{data_name}",
        eval_results=eval_results,
    )
    name = repo_id or "runs/your-model"
    shown = [k for k in names if k in test]
    rows = [f"| recsys-bert (this model) | {' | '.join(f'{test[k]:.4f}' for k in shown)} |"]
    for baseline, metrics in results.get("baselines", {}).items():
        values = [f"{metrics[k]:.4f}" if k in metrics else "" for k in shown]
        rows.append(f"| {baseline} | {' | '.join(values)} |")
    download = (
        f'folder = snapshot_download("{repo_id}", allow_patterns=["{ITEM_ENCODER_FOLDER}/*"])'
        if repo_id
        else f'folder = "{name}"  # the model folder'
    )
    config_flag = f"--data_format {settings['data_format']} --data_dir DATA_DIR" if settings.get("data_dir") else ""
    body = f"""
# recsys-bert on {data_name}

A sequential recommender built on `{base_model or encoder}`: item texts are embedded by the encoder, a user's history
by the `{model_config.get("user_tower")}` user tower, and items are ranked by dot-product softmax scores, with a
learned offset (`repeat_bias`) for items already in the user's recent history. Trained with recsys-bert.

## Results ({split})

History {"excluded from" if protocol.get("history_excluded") else "kept in"} the ranking; ties broken against the
target; best of {protocol.get("steps")} steps at step {protocol.get("best_step")}.

| model | {" | ".join(names[k] for k in shown)} |
|---|{"---|" * len(shown)}
{chr(10).join(rows)}

## Use

```bash
# in a clone of recsys-bert (make setup): top-20 items for the users of a data set,
# or for ad-hoc users (history: item ids or free texts)
python recommend.py --model {name} {config_flag} --split test --top_k 20 --output recs.parquet
python recommend.py --model {name} --items items.csv --users users.jsonl --output recs.jsonl
```

```python
from recsys_bert.modeling import load_model

model, tokenizer = load_model("{name}")
texts = ["an item title", "another item"]
items = tokenizer(texts, padding=True, truncation=True, max_length=model.config.max_item_tokens, return_tensors="pt")
item_vectors = model.encode_items(items["attention_mask"], input_ids=items["input_ids"])  # (items, dim)
```

The item tower alone is a sentence-transformers model in `{ITEM_ENCODER_FOLDER}/`:

```python
from huggingface_hub import snapshot_download
from sentence_transformers import SentenceTransformer

{download}
item_encoder = SentenceTransformer(f"{{folder}}/{ITEM_ENCODER_FOLDER}")
item_vectors = item_encoder.encode(["an item title", "another item"])  # the recommender's item vectors
```

## Training settings

```yaml
{yaml.safe_dump(settings, sort_keys=False).strip()}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def write_model_card(folder: Path, repo_id: str | None = None) -> None:
    """README.md for a train.py output folder, from its metrics.json, config.yaml and config.json."""
    results = json.loads((folder / "metrics.json").read_text())
    settings = yaml.safe_load((folder / "config.yaml").read_text())
    model_config = json.loads((folder / "config.json").read_text())
    write_text_atomic(folder / "README.md", model_card(results, settings, model_config, repo_id))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Push a train.py output folder to the Hugging Face Hub.")
    parser.add_argument("folder", help="The output folder of train.py.")
    parser.add_argument("--hub_model_id", required=True, help="The Hub repo, e.g. me/recsys-bert-scientific.")
    parser.add_argument("--hub_private", action="store_true", help="Create the repo private.")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not (folder / "item_encoder" / "modules.json").is_file() and (folder / "config.json").is_file():
        model, tokenizer = load_model(str(folder))
        save_item_encoder(model, tokenizer, folder / ITEM_ENCODER_FOLDER)
    if (folder / "metrics.json").is_file() and (folder / "config.yaml").is_file():
        write_model_card(folder, args.hub_model_id)
    print(push_to_hub(folder, args.hub_model_id, private=args.hub_private))


if __name__ == "__main__":
    from recsys_bert.cli import quiet_libraries, run_main

    quiet_libraries()
    run_main(main)
