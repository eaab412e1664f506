"""Splits of an interaction log into training rows and evaluation rows (leave-one-out, or by global time), built as
Arrow tables without Python loops."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys_bert.data.readers import count_skipped, lookup, parse_timestamps, show_names, strings
from recsys_bert.utils import InputError

logger = logging.getLogger(__name__)


def split_log(
    log: pd.DataFrame,
    items: pd.DataFrame,
    path: Path,
    columns: tuple[str, str, str],
    max_history: int,
    min_history: int,
    skipped: dict[str, int],
    cuts: tuple[float, float] | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """Sorts the interactions by (user, time), ties by item id, and splits them.

    Leave-one-out (`cuts` None): each user's sequence gives test = the last item, valid = the second-last, train =
    one row per earlier position t >= 1 (history = the items before it). By global time (`cuts` = (valid_since,
    test_since) in Unix seconds): `time_split`. Training rows also hold their target's `timestamp` (Unix seconds).
    """
    user_column, item_column, time_column = columns
    users, item_ids = log[user_column].str.strip(), log[item_column].str.strip()
    missing = ((users == "") | (item_ids == "")).to_numpy()
    count_skipped(skipped, f"{path.name}: missing {user_column} or {item_column}", missing.sum())
    item_codes = lookup(items["item_id"], item_ids)
    unknown = ~missing & (item_codes < 0)
    count_skipped(skipped, f"{path.name}: unknown {item_column}", unknown.sum())
    if unknown.any() and not (~missing & ~unknown).any():  # not one id matches: another column or id format?
        raise InputError(
            f"{path}: no usable rows (none of its {item_column} values is in the item table: e.g. "
            f"{show_names(item_ids[unknown][:1])}; the item table has e.g. {show_names(items['item_id'][:3])})"
        )
    times = parse_timestamps(log[time_column])
    bad_time = ~missing & ~unknown & ~np.isfinite(times)
    count_skipped(skipped, f"{path.name}: missing or unparseable {time_column}", bad_time.sum())
    negative = ~missing & ~unknown & ~bad_time & (times < 0)
    count_skipped(skipped, f"{path.name}: negative {time_column}", negative.sum())
    keep = ~(missing | unknown | bad_time | negative)
    count_skipped(
        skipped, f"{path.name}: users with no usable interaction", users[~missing].nunique() - users[keep].nunique()
    )
    user_codes, user_names = pd.factorize(users[keep])
    # by user, then time; items at the same time by item id (as numbers where every id is one), so that the split
    # never depends on the file's row order
    order = np.lexsort((_id_order(items["item_id"])[item_codes[keep]], times[keep], user_codes))
    user_codes, sequence = user_codes[order], item_codes[keep][order].astype(np.int32)
    times = times[keep][order]

    starts = (
        np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]]) if len(user_codes) else np.zeros(0, np.int64)
    )
    ends = np.r_[starts[1:], len(user_codes)].astype(np.int64)
    if cuts is not None:
        names = strings(np.asarray(user_names, dtype=object))  # one per user code
        return time_split(names, user_codes, sequence, times, starts, cuts, path, max_history, min_history, skipped)
    needed = min_history + 2
    long_enough = ends - starts >= needed
    count_skipped(skipped, f"{path.name}: users with fewer than {needed} interactions", (~long_enough).sum())
    if not long_enough.any():
        prefix = f"{path.name}: "
        why = "; ".join(f"{reason[len(prefix) :]}: {n}" for reason, n in skipped.items() if reason.startswith(prefix))
        raise InputError(f"{path}: no usable rows (no user has the {needed} interactions needed; skipped {why})")
    starts, ends = starts[long_enough], ends[long_enough]
    names = strings(np.asarray(user_names, dtype=object)[user_codes[starts]])  # one per user

    rows_per_user = np.maximum(ends - starts - 3, 0)  # targets at positions 1 .. n-3
    if not rows_per_user.any():
        logger.warning("%s: no training rows (no user has more than 3 interactions), only valid and test", path)
    row_user = np.repeat(np.arange(len(starts)), rows_per_user)
    first_row = np.cumsum(rows_per_user) - rows_per_user
    target_pos = starts[row_user] + 1 + np.arange(len(row_user)) - first_row[row_user]
    train = {
        "user_id": names.take(row_user),
        "history": list_array(sequence, np.maximum(starts[row_user], target_pos - max_history), target_pos),
        "target": pa.array(sequence[target_pos]),
        "timestamp": pa.array(times[target_pos]),
    }
    valid = {
        "user_id": names,
        "history": list_array(sequence, starts, ends - 2),
        "target": pa.array(sequence[ends - 2]),
    }
    test = {
        "user_id": names,
        "history": list_array(sequence, starts, ends - 1),
        "target": pa.array(sequence[ends - 1]),
    }
    return arrow_dataset(train), arrow_dataset(valid), arrow_dataset(test)


def time_split(
    names: pa.Array,
    user_codes: np.ndarray,
    sequence: np.ndarray,
    times: np.ndarray,
    starts: np.ndarray,
    cuts: tuple[float, float],
    path: Path,
    max_history: int,
    min_history: int,
    skipped: dict[str, int],
) -> tuple[datasets.Dataset, datasets.Dataset, datasets.Dataset]:
    """The split by global time of interactions sorted by (user, time): train = every target before valid_since
    (position t >= 1, history = the last `max_history` items before it), valid = each user's first target in
    [valid_since, test_since), test = each user's first target at or after test_since, with the whole history before
    it. A user without a target in a period has no row there; one with fewer than `min_history` items before it
    neither (counted in `skipped`).

    Args:
        names (`(users,)`): user ids by user code; `user_codes`, `sequence`, `times` (`(interactions,)`): sorted;
        starts (`(users,)`): each user's first position.
    """
    valid_since, test_since = cuts
    before = np.arange(len(sequence)) - starts[user_codes]  # (interactions,) items before it in its user's sequence
    target = np.flatnonzero((before >= 1) & (times < valid_since))
    user = user_codes[target]
    train = {
        "user_id": names.take(user),
        "history": list_array(sequence, np.maximum(starts[user], target - max_history), target),
        "target": pa.array(sequence[target]),
        "timestamp": pa.array(times[target]),
    }
    tables = [arrow_dataset(train)]
    for split, low, high in (("valid", valid_since, test_since), ("test", test_since, np.inf)):
        in_period = np.flatnonzero((times >= low) & (times < high))
        _, first = np.unique(user_codes[in_period], return_index=True)  # sorted by time within each user
        target = in_period[first]
        short = before[target] < min_history
        count_skipped(skipped, f"{path.name}: {split} targets with fewer than {min_history} items before them",
                      short.sum())  # fmt: skip
        target = target[~short]
        user = user_codes[target]
        rows = {"user_id": names.take(user), "history": list_array(sequence, starts[user], target),
                "target": pa.array(sequence[target])}  # fmt: skip
        tables.append(arrow_dataset(rows))
    if not len(tables[2]):
        raise InputError(f"{path}: no usable rows (no interaction at or after test_since with a history before it)")
    return tables[0], tables[1], tables[2]


def parse_time(value: str, name: str) -> float:
    """A time setting, an ISO date (UTC unless it says otherwise) or Unix seconds, as Unix seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        raise InputError(f"{name}: {value!r} is neither an ISO date (2018-06-01) nor Unix seconds") from None
    return (stamp if stamp.tzinfo else stamp.tz_localize("UTC")).timestamp()


def rows_since(train: datasets.Dataset, since: float, replay_fraction: float, seed: int) -> datasets.Dataset:
    """The training rows whose target is at or after `since` (Unix seconds), and a seeded random share
    `replay_fraction` of the earlier ones (a replay of the old log), in their order."""
    times = train.data.column("timestamp").to_numpy()
    earlier = np.flatnonzero(times < since)
    replay = np.random.default_rng(seed).choice(earlier, round(replay_fraction * len(earlier)), replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(times >= since), replay]).astype(np.int64))
    return arrow_dataset(train.data.table.take(keep))


COLD_ITEMS_SEED = 0  # the held-out items are the same for every training seed, and for the peers


def hold_out_items(train: datasets.Dataset, num_items: int, fraction: float) -> tuple[datasets.Dataset, np.ndarray]:
    """A random share `fraction` of the items (seeded, `COLD_ITEMS_SEED`) held out of training entirely: the
    training rows whose target is one are dropped, and they are cut out of the other rows' histories (rows left with
    no history are dropped too). Returns the rows left and the held-out items, sorted."""
    rng = np.random.default_rng(COLD_ITEMS_SEED)
    held_out = np.sort(rng.choice(num_items, round(fraction * num_items), replace=False)).astype(np.int64)
    cold = np.zeros(num_items, dtype=bool)
    cold[held_out] = True
    table = train.data.table
    table = table.filter(pa.array(~cold[table.column("target").to_numpy()]))
    history = table.column("history").combine_chunks()
    values = pc.list_flatten(history).to_numpy()
    lengths = pc.list_value_length(history).to_numpy().astype(np.int64)
    warm = ~cold[values]
    rows = np.repeat(np.arange(len(lengths)), lengths)[warm]
    starts, ends = row_bounds(rows, len(lengths))
    table = table.set_column(table.schema.get_field_index("history"), "history",
                             list_array(values[warm].astype(np.int32), starts, ends))  # fmt: skip
    table = table.filter(pa.array(ends > starts))
    return arrow_dataset(table), held_out


def _id_order(ids: pd.Series) -> np.ndarray:
    """Each id's place in the sorted ids: numerically where every id is a number, else as strings."""
    numbers = pd.to_numeric(ids, errors="coerce")
    keys = numbers if numbers.notna().all() else ids.astype(str)
    return np.argsort(np.argsort(keys.to_numpy(), kind="stable"), kind="stable")


def training_item_counts(train: datasets.Dataset, valid: datasets.Dataset, num_items: int) -> np.ndarray:
    """How often each item was interacted with in training: every training target, plus the history before each
    user's first training target (its shortest history); a user of leave-one-out data without training rows
    counts the history before its valid target. `(num_items,)` int64."""
    table = train.data.table
    lengths = pd.Series(pc.list_value_length(table.column("history")).to_numpy())
    first_rows = lengths.groupby(table.column("user_id").to_numpy(), sort=False).idxmin().to_numpy()
    items = [table.column("target").to_numpy(), pc.list_flatten(table.column("history").take(first_rows)).to_numpy()]
    if "target" in valid.column_names:  # leave-one-out: users with too few interactions for a training row
        trained = pa.array(pd.unique(table.column("user_id").to_numpy()), type=pa.string())
        untrained = pc.invert(pc.is_in(valid.data.table.column("user_id"), value_set=trained))
        items.append(pc.list_flatten(valid.data.table.column("history").filter(untrained)).to_numpy())
    return np.bincount(np.concatenate(items).astype(np.int64), minlength=num_items).astype(np.int64)


def limit_eval_users(
    valid: datasets.Dataset, test: datasets.Dataset, max_users: int, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Keeps the rows of at most `max_users` users per split. Each split keeps its first users in one seeded random
    order of all users, so leave-one-out valid and test keep the same users (MIND's, with other users, favour shared
    ones)."""
    valid_users = valid.data.column("user_id").to_numpy()
    test_users = test.data.column("user_id").to_numpy()
    users = pd.unique(np.concatenate([valid_users, test_users]))
    rank = pd.Series(np.random.default_rng(seed).permutation(len(users)), index=users)

    def keep(table: datasets.Dataset, table_users: np.ndarray) -> datasets.Dataset:
        present = pd.unique(table_users)
        if len(present) <= max_users:
            return table
        chosen = rank[present].nsmallest(max_users).index
        return table.select(np.flatnonzero(pd.Index(chosen).get_indexer(table_users) >= 0))

    return keep(valid, valid_users), keep(test, test_users)


def row_bounds(rows: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each row's entries in a flat array whose entries are sorted by `rows`."""
    ends = np.cumsum(np.bincount(rows, minlength=num_rows)).astype(np.int64)
    return ends - np.bincount(rows, minlength=num_rows), ends


def list_array(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """An Arrow list array whose row i is values[starts[i]:ends[i]] (one gather, no loop)."""
    lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if max(offsets[-1], len(values)) > np.iinfo(np.int32).max:
        raise InputError(f"{offsets[-1]:,} list entries are too many for one table; lower max_history")
    # int32 is enough for these positions and halves the memory of the gather
    gather = np.repeat((np.asarray(starts, dtype=np.int64) - offsets[:-1]).astype(np.int32), lengths)
    gather += np.arange(offsets[-1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[gather]))


def arrow_dataset(columns: dict | pd.DataFrame | pa.Table) -> datasets.Dataset:
    if isinstance(columns, pd.DataFrame):
        columns = {name: strings(columns[name].to_numpy()) for name in columns.columns}
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    # a fresh random fingerprint: datasets would otherwise hash the whole table (seconds for millions of rows)
    return datasets.Dataset(table, fingerprint=uuid.uuid4().hex[:16])
