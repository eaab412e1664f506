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

from recsys_bert.encoders import default_encoder_path, encoder_file
from recsys_bert.modeling import RecsysBertModel, load_model
from recsys_bert.utils import InputError, atomic_path, write_text_atomic

ITEM_ENCODER_FOLDER = "item_encoder"
DEFAULT_ENCODER_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# the card's metrics: full ranking, or MIND's impression metrics
METRIC_NAMES = {"ndcg@10": "NDCG@10", "recall@10": "Recall@10", "mrr": "MRR"}
IMPRESSION_METRIC_NAMES = {"auc": "AUC", "mrr": "MRR", "ndcg@5": "nDCG@5", "ndcg@10": "nDCG@10"}
# the beyond-accuracy metrics of the top-K lists (metrics.json: `beyond_accuracy` of each protocol), by name before @K
BEYOND_ACCURACY_NAMES = {"coverage": "coverage", "gini": "Gini", "tail_share": "tail share",
                         "average_popularity": "avg. popularity", "novelty": "novelty", "diversity": "diversity",
                         "calibration": "miscalibration"}  # fmt: skip


def upload_files(folder: Path) -> list[Path]:
    """The files of a train.py output folder that make the model (relative paths): not the checkpoints (resume
    state), the best-model scratch folder, the TensorBoard logs, config.yaml (the run's settings, local paths and
    all; the model card shows them without), nor hidden or temporary files."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        first = relative.parts[0]
        if not path.is_file() or first.startswith(("checkpoint-", "best_model", ".")) or path.name.startswith("."):
            continue
        if first in ("logs", "config.yaml"):  # the run's own record: TensorBoard logs, settings with local paths
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
    names = ["config.json", "model.safetensors", "README.md"]
    if (folder / "config.json").is_file() and has_item_encoder(json.loads((folder / "config.json").read_text())):
        names.append(f"{ITEM_ENCODER_FOLDER}/modules.json")
    for name in names:
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


def has_item_encoder(model_config: dict) -> bool:
    """Whether a model's item tower is a sentence-transformers pipeline: not with the text skip, whose item vector
    is two separately normalised parts (no sentence-transformers module normalises part of a vector)."""
    return not model_config.get("text_skip_weight")


@torch.no_grad()
def save_item_encoder(model: RecsysBertModel, tokenizer, target: Path) -> None:
    """Saves the item tower (encoder, pooling, projection, normalisation) as a sentence-transformers model, so that
    `SentenceTransformer(target).encode(texts)` gives the recommender's item vectors. Written beside `target` and
    renamed into place; nothing is written for a model without one (`has_item_encoder`)."""
    if not has_item_encoder(model.config.to_dict()):
        return
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


# data whose terms travel with a model trained on it (the data_format that reads it)
DATA_LICENSES = {
    "movielens": ("movielens-terms", "https://files.grouplens.org/datasets/movielens/ml-latest-small-README.html"),
    "mind": ("microsoft-research-license", "https://github.com/msnews/MIND/blob/master/MSR%20License_Data.pdf"),
}


def public_name(value):
    """A setting as it may be published: a local path becomes its last part (the folder's name), anything else
    stays."""
    if isinstance(value, str) and value and ("/" in value or "\\" in value) and Path(value).exists():
        return Path(value).name
    return value


def base_model_id(encoder: str | None) -> str | None:
    """The Hub id of the encoder a model was trained from: the packaged MiniLM's, or the given id; None for a local
    folder (saved models keep only its name: no Hub id to point at)."""
    if encoder is None or encoder == _default_encoder_or_none():
        return DEFAULT_ENCODER_HUB_ID
    return encoder if "/" in encoder and not Path(encoder).exists() else None  # "org/name", not a folder


def card_license(data_format: str | None, encoder: str | None) -> dict:
    """The card's licence fields: the data's own terms where recsys-bert knows them (MovieLens, MIND: research,
    non-commercial), else the encoder's licence from its own model card."""
    if data_format in DATA_LICENSES:
        name, link = DATA_LICENSES[data_format]
        return {"license": "other", "license_name": name, "license_link": link}
    card = encoder_file(encoder or _default_encoder_or_none() or DEFAULT_ENCODER_HUB_ID, "README.md")
    try:
        license_id = ModelCard.load(card).data.license if card else None
    except Exception:  # an encoder's README without readable metadata
        license_id = None
    return {"license": license_id} if license_id else {}


TABLE_TITLES = {
    "history_kept": "History kept in the ranking (RecBole's and RecFormer's protocol)",
    "history_excluded": "History excluded from the ranking (only items new to the user)",
    "impressions": "Impressions",
}


def _results_table(table_name: str, names: dict, metrics: dict, results: dict, chosen: bool) -> str:
    """One protocol's table: the model, each baseline, and the paired interval of the model's lead over each."""
    shown = [k for k in names if k in metrics]
    comparisons = {b: c[table_name] for b, c in results.get("comparisons", {}).items() if table_name in c}
    metric = next(iter(comparisons.values()), {}).get("metric")
    header = ["model", *(names[k] for k in shown)] + (
        [f"this model − baseline, {metric} [95% interval]"] * bool(metric)
    )
    rows = [["recsys-bert (this model)", *(f"{metrics[k]:.4f}" for k in shown)] + [""] * bool(metric)]
    for baseline, baseline_metrics in results.get("baselines", {}).items():
        values = baseline_metrics if table_name == "impressions" else baseline_metrics.get(table_name, {})
        row = [baseline, *(f"{values[k]:.4f}" if k in values else "" for k in shown)]
        if metric:
            c = comparisons.get(baseline)
            row.append(f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]" if c else "")
        rows.append(row)
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(r)} |" for r in rows)]
    suffix = " (the protocol that chose the best model)" if chosen and table_name != "impressions" else ""
    return f"### {TABLE_TITLES[table_name]}{suffix}\n\n" + "\n".join(lines)


def _beyond_accuracy_table(results: dict) -> str:
    """The beyond-accuracy metrics of the model and each baseline, both protocols, in one table ("" without any)."""
    systems = {"recsys-bert (this model)": results.get("test", {}), **results.get("baselines", {})}
    rows = [(system, table_name, by_protocol[table_name]["beyond_accuracy"])
            for system, by_protocol in systems.items() for table_name in ("history_kept", "history_excluded")
            if "beyond_accuracy" in by_protocol.get(table_name, {})]  # fmt: skip
    if not rows:
        return ""
    keys = list(rows[0][2])  # name@K
    names = [key.partition("@") for key in keys]  # (name, "@", K)
    header = ["model", "history", *(f"{BEYOND_ACCURACY_NAMES.get(name, name)}@{k}" for name, _, k in names)]

    def cell(metrics: dict, key: str) -> str:
        if key not in metrics:
            return ""
        return f"{metrics[key]:.1f}" if key.startswith("average_popularity") else f"{metrics[key]:.4f}"

    cells = [[system, table_name.removeprefix("history_"), *(cell(metrics, k) for k in keys)]
             for system, table_name, metrics in rows]  # fmt: skip
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(r)} |" for r in cells)]
    return (
        "### Beyond accuracy (each user's top-K list)\n\n"
        "Coverage: share of the catalogue recommended to anyone; Gini: inequality of how often items are recommended "
        "(0 = all equally, 1 = always the same few); tail share: recommendations among the 80% least popular items "
        "(training interactions); avg. popularity: training interactions of a recommended item; novelty: mean "
        "-log2 of the share of training users who had the item; diversity: mean pairwise 1 - cosine of the "
        "untrained encoder's item vectors (one ruler for every row); miscalibration: KL divergence of the list's "
        "categories from the history's (Steck 2018; 0 = the same mix).\n\n" + "\n".join(lines)
    )


def _updates_section(model_config: dict) -> str:
    """What the model was updated from (`train.py --init_from`), oldest first ("" for a model trained from its
    encoder)."""
    updates = model_config.get("updated_from") or []
    if not updates:
        return ""
    rows = []
    for update in updates:
        period = " to ".join(update["data_period"]) if update.get("data_period") else "(no times in the data)"
        replay = f", replaying {update['replay_fraction']:.0%} of the earlier" if update.get("replay_fraction") else ""
        rows.append(f"| `{update['model']}` | `{update['revision']}` | {period}{replay} |")
    return (
        "## Updates\n\nThis model continues a trained recsys-bert model on newer interactions (its weights, a fresh "
        "optimizer and schedule); the last row is the latest update.\n\n| updated from | revision | training targets "
        "|\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
    )


def model_card(results: dict, settings: dict, model_config: dict, repo_id: str | None = None) -> str:
    """README.md of a trained model: Hub metadata (library, tags, licence, base model, metrics) and a human part (the
    results in both protocols beside the baselines, how to use it, the training settings). No local paths: a
    setting that is one shows its last part."""
    protocol = results.get("protocol", {})
    data_name = protocol.get("data", "data")
    test = results.get("test", {})
    encoder = settings.get("encoder_name_or_path", model_config.get("encoder_name_or_path"))  # as given to train.py
    base_model = base_model_id(encoder)
    impressions = protocol.get("ranking") == "impressions"
    names = IMPRESSION_METRIC_NAMES if impressions else METRIC_NAMES
    tables = {"impressions": test} if impressions else test  # protocol -> metrics
    chosen_protocol = "history_excluded" if protocol.get("history_excluded") else "history_kept"
    split = "test split, " + ("impressions" if impressions else f"full ranking over {protocol.get('items')} items")
    eval_results = [
        EvalResult(
            task_type="recommendation",
            task_name="Sequential recommendation",
            dataset_type=data_name,
            dataset_name=data_name,
            dataset_config=table_name,
            dataset_split="test",
            metric_type=key,
            metric_name=f"{name}, {table_name.replace('_', ' ')}",
            metric_value=round(float(metrics[key]), 4),
        )
        for table_name, metrics in tables.items()
        for key, name in names.items()
        if key in metrics
    ]
    data = ModelCardData(
        library_name="recsys-bert",
        tags=["recommendation", "sequential-recommendation", "sentence-transformers", "recsys-bert"],
        base_model=base_model,
        model_name=repo_id or f"recsys-bert-{data_name}",
        eval_results=eval_results,
        **card_license(settings.get("data_format"), encoder),
    )
    name = repo_id or "runs/your-model"
    sections = [
        _results_table(table_name, names, metrics, results, chosen=table_name == chosen_protocol)
        for table_name, metrics in tables.items()
    ]
    sections += [table for table in [_beyond_accuracy_table(results)] if table]
    download = (
        f'folder = snapshot_download("{repo_id}", allow_patterns=["{ITEM_ENCODER_FOLDER}/*"])'
        if repo_id
        else f'folder = "{name}"  # the model folder'
    )
    item_encoder_section = (
        f"""The item tower alone is a sentence-transformers model in `{ITEM_ENCODER_FOLDER}/`:

```python
from huggingface_hub import snapshot_download
from sentence_transformers import SentenceTransformer

{download}
item_encoder = SentenceTransformer(f"{{folder}}/{ITEM_ENCODER_FOLDER}")
item_vectors = item_encoder.encode(["an item title", "another item"])  # the recommender's item vectors
```
"""
        if has_item_encoder(model_config)
        else "The item vectors carry the text skip (two separately normalised parts), so the item tower is not a "
        "sentence-transformers pipeline: use `model.encode_items` as above.\n"
    )
    config_flag = f"--data_format {settings['data_format']} --data_dir DATA_DIR" if settings.get("data_dir") else ""
    published = {key: public_name(value) for key, value in settings.items() if key != "output_dir"}
    terms = DATA_LICENSES.get(settings.get("data_format"))
    license_note = (
        f"Trained on data whose terms are [{terms[0]}]({terms[1]}); they apply to this model too."
        if terms
        else "The training data's own terms apply to this model too."
    )
    steps, best_step = protocol.get("steps"), protocol.get("best_step")
    chosen = (f"best of {steps} steps at step {best_step}" if best_step is not None
              else f"the model after the last of {steps} steps (no validation rows)")  # fmt: skip
    body = f"""
# recsys-bert on {data_name}

A sequential recommender built on `{base_model or public_name(encoder)}`: item texts are embedded by the encoder, a
user's history by the `{model_config.get("user_tower")}` user tower, and items are ranked by dot-product softmax
scores, with a learned offset (`repeat_bias`) for items already in the user's recent history. Trained with
recsys-bert. {license_note}

{_updates_section(model_config)}## Results ({split})

Ties broken against the target; {chosen}. The
baselines are scored the same way: popularity (interactions before the test split) and the untrained encoder
(user = mean of the history's item vectors). The interval is a paired bootstrap over the same test users.

{(chr(10) * 2).join(sections)}

## Use

```python
import torch
from recsys_bert import load_model  # or: import recsys_bert; transformers.AutoModel.from_pretrained(...)

model, tokenizer = load_model("{name}")
texts = ["an item title", "another item", "a third item"]
tokens = tokenizer(texts, padding=True, truncation=True, max_length=model.config.max_item_tokens, return_tensors="pt")
with torch.no_grad():
    items = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])  # (items, dim)
    history = torch.tensor([[1, 0]])  # a user's history as item indices, most recent first
    users = model.encode_users(items[history], history >= 0)  # (users, dim)
    scores = model.score(users, items, history_ids=history)  # (users, items) logits
    best = scores.topk(2).indices  # (users, 2)
```

```bash
# in a clone of recsys-bert (make setup): top-20 items for the users of a data set,
# or for ad-hoc users (history: item ids or free texts)
python recommend.py --model {name} {config_flag} --split test --top_k 20 --output recs.parquet
python recommend.py --model {name} --items items.csv --users users.jsonl --output recs.jsonl
```

{item_encoder_section}
## Training settings

```yaml
{yaml.safe_dump(published, sort_keys=False, allow_unicode=True).strip()}
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
    config_file = folder / "config.json"
    if (not (folder / ITEM_ENCODER_FOLDER / "modules.json").is_file() and config_file.is_file()
            and has_item_encoder(json.loads(config_file.read_text()))):  # fmt: skip
        model, tokenizer = load_model(str(folder))
        save_item_encoder(model, tokenizer, folder / ITEM_ENCODER_FOLDER)
    if (folder / "metrics.json").is_file() and (folder / "config.yaml").is_file():
        write_model_card(folder, args.hub_model_id)
    print(push_to_hub(folder, args.hub_model_id, private=args.hub_private))


if __name__ == "__main__":
    from recsys_bert.cli import quiet_libraries, run_main

    quiet_libraries()
    run_main(main)
