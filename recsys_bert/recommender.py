"""A trained model with its catalogue encoded once, answering for histories: the top-K with scores and probabilities,
optionally diversified (`recsys_bert.rerank`) and explained (`recsys_bert.explain`).

`Recommender.recommend` answers one request or a few (the demo app, the Python API); recommend.py runs the same
`rank` over batches of users of a split or a file.

    from recsys_bert.recommender import Recommender

    recommender = Recommender.from_pretrained("runs/movielens")  # the catalogue from the run's config.yaml
    recommender.recommend([["Toy Story (1995)", "Heat (1995)"]], top_k=5, exclude_history=True, explain=2)
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
import yaml
from accelerate import Accelerator

from recsys_bert.arguments import DataArguments
from recsys_bert.catalogue import Catalogue
from recsys_bert.collators import EvalCollator
from recsys_bert.data import load_data, load_items, tokenize_items, tokenize_texts
from recsys_bert.distributed import has_accelerator
from recsys_bert.evaluation import user_vectors
from recsys_bert.explain import explain as explain_by_deletion
from recsys_bert.modeling import RecsysBertModel, load_model
from recsys_bert.rerank import POOL, rerank
from recsys_bert.retrieval import catalogue_vectors, default_vector_cache, top_k
from recsys_bert.utils import InputError

logger = logging.getLogger(__name__)


def load_catalogue(data_args: DataArguments, tokenizer, config, seed: int = 42):
    """The catalogue `data_args` names, tokenized for the model, and its data set when it has interactions.

    Returns:
        `(items, data, skipped)`: `items` with `item_id`, `text`, `input_ids`; `data` a `RecData` (its valid and test
        rows) or `None` for an item file alone (`--items` without `--interactions`); the skipped-row counts.
    """
    skipped: dict[str, int] = {}
    data = None
    if data_args.data_format != "generic" or data_args.interactions:
        data = load_data(data_args, max_history=config.max_history, seed=seed)
        items, skipped = data.items, dict(data.skipped)
    elif data_args.items:
        table = load_items(data_args.items, data_args.item_id_column, data_args.text_template, skipped)
        items = datasets.Dataset.from_pandas(table, preserve_index=False)
    else:
        raise InputError("no catalogue: give --config, --data_dir, --items (with --interactions for a split)")
    return tokenize_items(items, tokenizer, config.max_item_tokens), data, skipped


def run_data_args(model_path: str | Path) -> DataArguments | None:
    """The data settings a train.py run folder was trained with (its config.yaml), or `None` where it has none."""
    path = Path(model_path) / "config.yaml"
    if not path.is_file():
        return None
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    names = set(DataArguments.__dataclass_fields__)
    return DataArguments(**{key: value for key, value in settings.items() if key in names})


def with_texts(
    model: RecsysBertModel,
    tokenizer,
    items: datasets.Dataset,
    catalogue: Catalogue,
    vectors: torch.Tensor,
    texts: list[str],
    accelerator: Accelerator,
    batch_size: int = 256,
) -> tuple[torch.Tensor, Catalogue]:
    """The item vectors `(items + texts, dim)` and the history catalogue with free texts appended: items unseen at
    training, embedded from their text, for histories only (never ranked)."""
    if not texts:
        return vectors, catalogue
    config = model.config
    tokens = tokenize_texts(texts, tokenizer, config.max_item_tokens)
    extra = Catalogue(tokens, tokenizer.pad_token_id)
    vectors = torch.cat([vectors, extra.item_vectors(model, accelerator, batch_size).to(vectors.device)])
    if config.user_tower == "text":
        catalogue = Catalogue(items.data.column("input_ids").to_pylist() + tokens, tokenizer.pad_token_id)
    return vectors, catalogue


def user_collator(config, exclude_history: bool, catalogue: Catalogue) -> EvalCollator:
    """Batches of users to rank: the recent history, the whole one to exclude, the 'text' tower's tokens."""
    return EvalCollator(
        config.max_history,
        full_history=exclude_history,
        catalogue=catalogue if config.user_tower == "text" else None,
        max_user_tokens=config.max_user_tokens,
    )


@torch.no_grad()
def rank(
    model: RecsysBertModel,
    batch: dict[str, torch.Tensor],
    users: torch.Tensor,
    vectors: torch.Tensor,
    k: int,
    item_chunk_size: int = 100_000,
    diversify: str | None = None,
    diversity_lambda: float = 1.0,
    index=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top `k` items of an `EvalCollator` batch's users, as `retrieval.top_k` returns them.

    Args:
        users (`(users, dim)`): the batch's user vectors.
        vectors (`(items, dim)`): the catalogue's item vectors (what is ranked).
        diversify: `mmr` or `dpp` re-ranks the best `rerank.POOL x k` items; `None` keeps the plain top-K.
        index: a faiss index over `vectors` (`recsys_bert.index`): its candidates, scored exactly, instead of the
            whole catalogue; the log-normalizer is then over the candidates.

    The batch's `full_history_ids` (the collator's `full_history`) are excluded, the split's target aside, and ties
    are broken against the target, as evaluation ranks it.
    """
    exclude, targets = batch.get("full_history_ids"), batch.get("target_ids")
    if exclude is not None and targets is not None:  # the split's target stays rankable
        exclude = exclude.masked_fill(exclude == targets[:, None], -1)
    pool = k if diversify is None else POOL * k
    if index is not None:
        from recsys_bert.index import index_top_k  # faiss is an optional extra

        logits, found, log_normalizer = index_top_k(
            index, users, vectors, pool, model, batch["history_ids"], exclude, ties_against=targets
        )
    else:
        score = partial(model.score, history_ids=batch["history_ids"])
        logits, found, log_normalizer = top_k(users, vectors, pool, score, exclude, item_chunk_size, targets)
    if diversify is not None:
        logits, found = rerank(diversify, logits, found, vectors, k, diversity_lambda, model.config.score_temperature)
    return logits, found, log_normalizer


class Recommender:
    """A trained model, its tokenized catalogue and the catalogue's item vectors (encoded once, cached on disk).

    Args:
        model, tokenizer: from `load_model`.
        items: the catalogue (`item_id`, `text`, `input_ids`: `load_catalogue`).
        accelerator: where to run (default: the GPU if there is one, else the CPU).
        vector_cache: the folder of cached item vectors (default: `retrieval.default_vector_cache()`); `None`: none.
    """

    def __init__(
        self,
        model: RecsysBertModel,
        tokenizer,
        items: datasets.Dataset,
        accelerator: Accelerator | None = None,
        vector_cache: str | Path | None = "default",
        batch_size: int = 256,
    ):
        self.accelerator = accelerator or Accelerator(cpu=not has_accelerator())
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.items = items
        self.item_ids = np.asarray(items["item_id"], dtype=object)
        self.texts = list(items["text"])
        self.catalogue = Catalogue.from_items(items, tokenizer.pad_token_id)
        cache_dir = default_vector_cache() if vector_cache == "default" else vector_cache
        vectors, self.cache_hit = catalogue_vectors(
            model, self.catalogue, self.accelerator, batch_size, None if cache_dir is None else Path(cache_dir)
        )
        self.vectors = vectors.to(self.accelerator.device)  # (items, dim)
        # a history entry is a catalogue item by its id or by its exact text; ids win
        self.index_of = {text: i for i, text in enumerate(self.texts)}
        self.index_of |= {item: i for i, item in enumerate(self.item_ids)}

    @classmethod
    def from_pretrained(
        cls, model_name_or_path: str | Path, data_args: DataArguments | None = None, **kwargs
    ) -> Recommender:
        """A model folder or Hub id, with the catalogue of `data_args` (default: the run folder's own config.yaml)."""
        model, tokenizer = load_model(model_name_or_path)
        data_args = data_args or run_data_args(model_name_or_path)
        if data_args is None:
            raise InputError(f"{model_name_or_path}: no catalogue (give the items file or the data set's config)")
        items, _, _ = load_catalogue(data_args, tokenizer, model.config)
        accelerator = kwargs.pop("accelerator", None) or Accelerator(cpu=not has_accelerator())
        model.to(accelerator.device)
        return cls(model, tokenizer, items, accelerator=accelerator, **kwargs)

    def __len__(self) -> int:
        return len(self.item_ids)

    @torch.no_grad()
    def recommend(
        self,
        histories: list[list[str]],
        top_k: int = 10,
        exclude_history: bool = False,
        diversify: str | None = None,
        diversity_lambda: float = 1.0,
        explain: int = 0,
    ) -> list[list[dict]]:
        """The top `top_k` items for each history.

        Args:
            histories: per user, item ids or exact item texts, oldest first; any other string is a free-text item.
            exclude_history: never recommend an item of the history.
            diversify, diversity_lambda: re-ranking (`mmr` or `dpp`; lambda 1 = the plain top-K).
            explain: the number of history items to give for each recommendation (0: none).

        Returns:
            Per user, best first: `{"item_id", "text", "score" (logit), "probability" (softmax over the catalogue)}`
            and with `explain`, `"because"`: `[{"item_id", "text", "drop", "share"}, ...]` (`recsys_bert.explain`).
        """
        new_texts: dict[str, int] = {}
        rows = []
        for history in histories:
            ids = []
            for entry in history:
                entry = str(entry).strip()
                if entry in self.index_of:
                    ids.append(self.index_of[entry])
                elif entry:
                    ids.append(new_texts.setdefault(entry, len(self) + len(new_texts)))
            rows.append({"history": ids})
        vectors, catalogue = with_texts(
            self.model, self.tokenizer, self.items, self.catalogue, self.vectors, list(new_texts), self.accelerator
        )
        collator = user_collator(self.model.config, exclude_history, catalogue)
        batch = {key: value.to(self.accelerator.device) for key, value in collator(rows).items()}
        users = user_vectors(self.model, batch, vectors, self.accelerator)  # (users, dim)
        logits, index, log_normalizer = rank(
            self.model, batch, users, vectors[: len(self)], top_k, 100_000, diversify, diversity_lambda
        )
        because = None
        if explain:
            because = explain_by_deletion(
                self.model, rows, index, logits, vectors, collator, self.accelerator, explain, self.batch_size
            )
        names = np.concatenate([self.item_ids, np.asarray(list(new_texts), dtype=object)])
        texts = self.texts + list(new_texts)
        results = []
        for user in range(len(rows)):
            keep = torch.isfinite(logits[user])
            entries = []
            for column in torch.nonzero(keep).flatten().tolist():
                item, logit = int(index[user, column]), float(logits[user, column])
                entry = {
                    "item_id": str(names[item]),
                    "text": texts[item],
                    "score": logit,
                    "probability": float(np.exp(logit - float(log_normalizer[user]))),
                }
                if because is not None:
                    entry["because"] = [
                        {"item_id": str(names[h]), "text": texts[h], "drop": drop, "share": share}
                        for h, drop, share in because[user][column]
                    ]
                entries.append(entry)
            results.append(entries)
        return results

    def search(self, query: str, limit: int = 20) -> list[tuple[str, str]]:
        """Catalogue items whose text contains every word of `query` (case-insensitive): `(item_id, text)`, those
        whose text starts with the query first, then the shortest texts (the closest matches)."""
        words = query.lower().split()
        if not words:
            return []
        prefix = " ".join(words)
        hits = [i for i, text in enumerate(self.texts) if all(word in text.lower() for word in words)]
        hits.sort(key=lambda i: (not self.texts[i].lower().startswith(prefix), len(self.texts[i]), i))
        return [(str(self.item_ids[i]), self.texts[i]) for i in hits[:limit]]
