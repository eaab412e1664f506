"""The front door of the data: `load_data` (from the cache when parsed before) and `tokenize_items`."""

from __future__ import annotations

import logging
import time

import datasets

from recsys_bert.arguments import DataArguments
from recsys_bert.data import cache
from recsys_bert.data.formats import check_settings, parse, source_files
from recsys_bert.data.recdata import RecData
from recsys_bert.data.splits import hold_out_items, limit_eval_users, parse_time, rows_since, training_item_counts

logger = logging.getLogger(__name__)


def load_data(data_args: DataArguments, max_history: int, seed: int = 42) -> RecData:
    """Loads the data set `data_args` describes, from the cache when it was parsed before.

    Args:
        data_args: the source (format, files) and the split settings.
        max_history: most recent history items kept in training rows (valid/test keep the full history).
        seed: picks the users kept when `data_args.max_eval_users` > 0, and the replayed rows (`replay_fraction`).

    Returns:
        `RecData` whose tables are memory-mapped from the cache folder (in memory if the cache can't be written).

    Raises:
        InputError: a file that can't be used at all, or settings that don't fit the data.
    """
    check_settings(data_args, max_history)
    files = source_files(data_args)
    cache_dir = cache.cache_root() / cache.fingerprint(data_args, files, max_history)
    data = cache.load(cache_dir)
    if data is None:
        start = time.perf_counter()
        data = parse(data_args, files, max_history)
        logger.info("parsed %s in %.1f s", data.name, time.perf_counter() - start)
        data = cache.save(data, cache_dir)
    else:
        logger.info("loaded %s from the cache %s", data.name, cache_dir)
    if data_args.train_since is not None:  # the new interactions (and a replay of the old); histories keep them all
        since = parse_time(data_args.train_since, "train_since")
        data.train = rows_since(data.train, since, data_args.replay_fraction, seed)
    if data_args.cold_item_fraction > 0:  # after train_since: an update holds out the same items
        data.train, data.held_out_items = hold_out_items(data.train, len(data.items), data_args.cold_item_fraction)
        counts = training_item_counts(data.train, data.valid, len(data.items))
        counts[data.held_out_items] = 0  # a user without training rows may have one in its valid history
        data.train_item_counts = counts
        logger.info("held out of training: %d items (cold_item_fraction %s), %d training rows left",
                    len(data.held_out_items), data_args.cold_item_fraction, len(data.train))  # fmt: skip
    if data_args.max_eval_users > 0:
        data.valid, data.test = limit_eval_users(data.valid, data.test, data_args.max_eval_users, seed)
    return data


def tokenize_items(items: datasets.Dataset, tokenizer, max_tokens: int) -> datasets.Dataset:
    """Adds `input_ids` (list<int32>, with special tokens, truncated to `max_tokens`, not padded) to `items`.

    One batched `map`, so each item is tokenized once and `datasets` caches the result next to memory-mapped items.
    """
    if "input_ids" in items.column_names:
        items = items.remove_columns("input_ids")
    features = items.features.copy()
    features["input_ids"] = datasets.List(datasets.Value("int32"))

    def tokenize(batch: dict) -> dict:
        return {"input_ids": tokenize_texts(batch["text"], tokenizer, max_tokens)}

    return items.map(tokenize, batched=True, batch_size=1000, features=features, desc="Tokenizing item texts")


def tokenize_texts(texts: list[str], tokenizer, max_tokens: int) -> list[list[int]]:
    """Each text's token ids as `tokenize_items` gives an item's: with special tokens, truncated, not padded."""
    encoded = tokenizer(
        texts, truncation=True, max_length=max_tokens, return_attention_mask=False, return_token_type_ids=False
    )
    return encoded["input_ids"]


def format_skipped(skipped: dict[str, int]) -> str:
    """One line per skip reason ("reason: count"), or "no rows skipped"."""
    if not skipped:
        return "no rows skipped"
    return "\n".join(f"{reason}: {count:,}" for reason, count in skipped.items())
