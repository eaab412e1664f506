"""Updates (`train.py --init_from`): continuing a trained model on new interactions with a fresh optimizer, the rows
`train_since` / `replay_fraction` select, the split by global time, what the saved model records, and recommend.py's
vector cache across an update."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from recsys_bert.arguments import DataArguments, load_yaml_settings, parse_args, parse_recommend_args
from recsys_bert.data import load_data
from recsys_bert.modeling import load_model
from recsys_bert.trainer import Trainer, train
from recsys_bert.utils import InputError
from tests.conftest import reset_accelerate_state

# one word each, so that the tiny BERT tells the items apart; "winter" leaves the catalogue, "lantern" joins it
WORDS = ("apple river mountain guitar pencil window garden rocket violin castle tiger ocean forest camera bridge "
         "candle dragon planet silver winter").split()  # fmt: skip
NEW_PERIOD = 2_000_000  # Unix seconds: the new interactions start here


@pytest.fixture(autouse=True)
def _fresh_state(fresh_accelerate_state):
    """Each run in this process starts its own Accelerator."""


@pytest.fixture(scope="module")
def shift(tmp_path_factory) -> dict[str, Path]:
    """A synthetic shift of taste: before `NEW_PERIOD` every user walks the old catalogue forwards (item i, then
    i + 1), afterwards the new catalogue (without "winter", with "lantern") backwards (i, then i - 1)."""
    folder = tmp_path_factory.mktemp("shift")
    rng = np.random.default_rng(0)
    old_ids = [f"i{k}" for k in range(20)]
    new_ids = old_ids[:19] + ["i20"]
    rows = []
    for user in range(60):
        start = rng.integers(20)
        rows += [(f"u{user}", old_ids[(start + k) % 20], 1_000_000 + 10 * k) for k in range(12)]
        start = rng.integers(20)
        rows += [(f"u{user}", new_ids[(start - k) % 20], NEW_PERIOD + 10 * k) for k in range(12)]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    pd.DataFrame({"item_id": old_ids, "title": WORDS}).to_csv(folder / "old_items.csv", index=False)
    pd.DataFrame({"item_id": new_ids, "title": WORDS[:19] + ["lantern"]}).to_csv(folder / "items.csv", index=False)
    log[log.timestamp < NEW_PERIOD].to_csv(folder / "old_log.csv", index=False)
    log.to_csv(folder / "log.csv", index=False)  # old + new
    return {"old_items": folder / "old_items.csv", "old_log": folder / "old_log.csv", "items": folder / "items.csv",
            "log": folder / "log.csv"}  # fmt: skip


def _args(items: Path, log: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--items", str(items), "--interactions", str(log), "--text_template", "{title}", "--output_dir",
        str(output_dir), "--per_device_train_batch_size", "32", "--num_negatives", "16", "--max_history", "10",
        "--max_item_tokens", "8", "--logging_steps", "10", "--run_baselines", "false", "--seed", "3",
        "--learning_rate", "5e-3", "--encoder_learning_rate", "5e-3", "--exclude_history", "false",
        # validated once at the end, no early stopping, no projection: not the defaults' recipe
        "--projection_dim", "0", "--eval_steps", "0", "--early_stopping_patience", "0", "--max_train_minutes", "0",
        "--text_skip_weight", "0",
        *extra,
    ]  # fmt: skip


def _train(argv: list[str]) -> dict:
    reset_accelerate_state()
    return train(*parse_args(argv))


@pytest.fixture(scope="module")
def stale(shift, tiny, tmp_path_factory) -> Path:
    """M1: trained on the old period, with the old catalogue."""
    folder = tmp_path_factory.mktemp("stale")
    _train(_args(shift["old_items"], shift["old_log"], folder, "--encoder_name_or_path", tiny, "--finetune_layers",
                 "-1", "--max_steps", "60"))  # fmt: skip
    return folder


def _update_args(shift, stale: Path, output_dir: Path, *extra: str) -> list[str]:
    return _args(shift["items"], shift["log"], output_dir, "--init_from", str(stale), "--train_since",
                 str(NEW_PERIOD), *extra)  # fmt: skip


def test_an_update_starts_from_the_old_weights_with_a_fresh_optimizer_and_the_new_catalogue(shift, stale, tmp_path):
    reset_accelerate_state()
    trainer = Trainer(*parse_args(_update_args(shift, stale, tmp_path / "update", "--max_steps", "5")))
    old, tokenizer = load_model(stale)
    model = trainer.accelerator.unwrap_model(trainer.model)
    weights = load_file(stale / "model.safetensors")
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in weights.items())
    assert len(trainer.optimizer.state) == 0 and trainer.scheduler.scheduler.last_epoch == 0  # nothing restored
    assert trainer.model_args.finetune_layers == -1 and trainer.model_args.max_history == 10  # the model's own

    # the new catalogue: "winter" left, "lantern" came and is embedded from its text like any item
    item_ids = list(trainer.data.items["item_id"])
    assert "i19" not in item_ids and item_ids[-1] == "i20" and len(item_ids) == 20
    vectors = trainer.catalogue.item_vectors(model, trainer.accelerator)  # (items, dim)
    tokens = tokenizer(WORDS[:19] + ["lantern"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = old.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])  # (items, dim)
        torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=0)
        # before any step, a user's scores are the old model's
        history = torch.tensor([[19, 0, 1]])  # lantern, apple, river, most recent first
        users = [m.eval().encode_users(expected[history], history >= 0) for m in (model, old)]
        torch.testing.assert_close(model.score(users[0], vectors, history), old.score(users[1], expected, history))


def test_an_update_of_a_frozen_encoder_model_trains_what_the_model_trained(shift, tiny, tmp_path):
    first = _train(_args(shift["old_items"], shift["old_log"], tmp_path / "m1", "--encoder_name_or_path", tiny,
                         "--finetune_layers", "1", "--max_steps", "1"))  # fmt: skip
    reset_accelerate_state()
    trainer = Trainer(*parse_args(_update_args(shift, tmp_path / "m1", tmp_path / "update", "--max_steps", "1")))
    model = trainer.accelerator.unwrap_model(trainer.model)
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    assert frozen and all(name.startswith("encoder.") and ".layer.1." not in name for name in frozen)
    assert trainer.summary["trainable_parameters"] == first["run"]["trainable_parameters"]


def test_an_update_beats_the_stale_model_on_the_new_period_and_records_what_it_came_from(shift, stale, tmp_path):
    # the stale model on the new period's valid and test rows: an update that does not move (learning rate 0)
    frozen = ("--learning_rate", "0", "--encoder_learning_rate", "0", "--max_steps", "1")
    stale_metrics = _train(_update_args(shift, stale, tmp_path / "stale", *frozen))
    updated = _train(_update_args(shift, stale, tmp_path / "updated", "--max_steps", "30"))
    assert updated["run"]["train_samples"] == 60 * 10  # the new targets only: 12 a user, less valid and test
    for split in ("valid", "test"):
        assert updated[split]["history_kept"]["mrr"] > stale_metrics[split]["history_kept"]["mrr"] + 0.2

    config = json.loads((tmp_path / "updated" / "config.json").read_text())
    (record,) = config["updated_from"]
    digest = record["revision"]
    assert record == {"model": stale.name, "revision": digest, "data_period": ["1970-01-24", "1970-01-24"]}
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 16
    card = (tmp_path / "updated" / "README.md").read_text()
    assert "## Updates" in card and f"| `{stale.name}` | `{digest}` | 1970-01-24 to 1970-01-24 |" in card
    assert str(stale.parent) not in card and str(stale.parent) not in json.dumps(config["updated_from"])

    # a second update keeps the history, oldest first; a different model, so another revision
    again = _train(_args(shift["items"], shift["log"], tmp_path / "again", "--init_from", str(tmp_path / "updated"),
                         "--max_steps", "2", "--replay_fraction", "0.5", "--train_since", "1970-01-24"))  # fmt: skip
    old_targets = len(load_data(DataArguments(items=str(shift["items"]), interactions=str(shift["log"]),
                                              text_template="{title}"), max_history=10).train) - 600  # fmt: skip
    assert again["run"]["train_samples"] == 600 + round(old_targets / 2)  # the new day's and half the old
    chain = json.loads((tmp_path / "again" / "config.json").read_text())["updated_from"]
    assert chain[0] == record and chain[1]["model"] == "updated" and chain[1]["revision"] != digest
    assert chain[1]["replay_fraction"] == 0.5


def test_a_hub_model_is_recorded_by_its_commit(shift, stale):
    from recsys_bert.trainer import update_record

    model, _ = load_model(stale)
    model.config._commit_hash = "ab" * 20  # what from_pretrained sets for a model from the Hub (or its cache)
    args = DataArguments(items=str(shift["items"]), interactions=str(shift["log"]), text_template="{title}",
                         train_since=str(NEW_PERIOD))  # fmt: skip
    record = update_record("me/recsys-bert-shift", model, load_data(args, max_history=10), args)
    assert record == {"model": "me/recsys-bert-shift", "revision": "ab" * 20, "data_period": ["1970-01-24"] * 2}


def test_a_model_setting_that_contradicts_the_loaded_model_is_one_clear_error(shift, stale, tmp_path):
    argv = _update_args(shift, stale, tmp_path / "x", "--projection_dim", "8", "--max_history", "10")
    reset_accelerate_state()
    with pytest.raises(InputError) as error:
        Trainer(*parse_args(argv))
    message = str(error.value)
    assert message.startswith(f"init_from {stale}: the architecture is the model's own") and "\n" not in message
    assert "projection_dim 8 (the model's: 0)" in message and "max_history" not in message  # 10 is the model's


def test_recommend_misses_the_vector_cache_after_an_update_and_hits_it_on_a_second_run(shift, stale, tmp_path):
    from recsys_bert.inference import recommend

    updated = tmp_path / "updated"
    _train(_update_args(shift, stale, updated, "--max_steps", "3"))
    flags = ["--items", str(shift["items"]), "--interactions", str(shift["log"]), "--text_template", "{title}",
             "--vector_cache", str(tmp_path / "cache"), "--top_k", "5"]  # fmt: skip
    runs = []
    for model in (stale, updated, updated):
        reset_accelerate_state()
        output = str(tmp_path / f"recs-{len(runs)}.jsonl")
        runs.append(recommend(*parse_recommend_args(["--model", str(model), *flags, "--output", output])))
    assert [run["vector_cache"] for run in runs] == ["written", "written", "hit"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


# ---------------------------------------------------------------- the rows an update trains on, and the time split


def _hand_log(tmp_path: Path) -> DataArguments:
    """User a: i1..i6 at times 1..6; user b: i6, i5, i4, i3 at times 2, 4, 6, 8."""
    pd.DataFrame({"item_id": [f"i{k}" for k in range(1, 7)], "title": WORDS[:6]}).to_csv(tmp_path / "i.csv",
                                                                                        index=False)  # fmt: skip
    rows = [("a", f"i{k}", k) for k in range(1, 7)] + [("b", f"i{k}", 2 * n) for n, k in enumerate((6, 5, 4, 3), 1)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(tmp_path / "l.csv", index=False)
    return DataArguments(items=str(tmp_path / "i.csv"), interactions=str(tmp_path / "l.csv"), text_template="{title}")


def test_train_since_keeps_the_new_targets_with_their_whole_history_and_replay_a_seeded_share(tmp_path):
    args = _hand_log(tmp_path)
    everything = load_data(args, max_history=10).train.to_dict()
    # leave-one-out: a trains on targets at times 2, 3, 4; b (i6 i5 i4 i3) on time 4
    assert everything == {"user_id": ["a", "a", "a", "b"], "history": [[0], [0, 1], [0, 1, 2], [5]],
                          "target": [1, 2, 3, 4], "timestamp": [2.0, 3.0, 4.0, 4.0]}  # fmt: skip
    args.train_since = "4"
    new = load_data(args, max_history=10).train.to_dict()
    assert new == {"user_id": ["a", "b"], "history": [[0, 1, 2], [5]], "target": [3, 4], "timestamp": [4.0, 4.0]}
    args.replay_fraction = 0.5  # one of the two earlier targets (a's at 2 and 3), the same for a seed
    replayed = [load_data(args, max_history=10, seed=seed).train.to_dict() for seed in range(8)]
    for rows in replayed:
        assert len(rows["target"]) == 3 and {3, 4} <= set(rows["target"]) and rows["timestamp"] == sorted(
            rows["timestamp"][:2]) + [4.0]  # fmt: skip
    assert {tuple(rows["target"]) for rows in replayed} == {(1, 3, 4), (2, 3, 4)}
    assert load_data(args, max_history=10, seed=5).train.to_dict() == replayed[5]
    args.replay_fraction = 1.0
    assert load_data(args, max_history=10).train.to_dict() == everything
    args.train_since = "1970-01-01T00:00:04Z"  # an ISO time is the same cut
    args.replay_fraction = 0.0
    assert load_data(args, max_history=10).train.to_dict() == new


def test_the_split_by_global_time_on_a_hand_made_log(tmp_path):
    args = _hand_log(tmp_path)
    args.valid_since, args.test_since = "4", "6"
    data = load_data(args, max_history=2)
    # train: targets before 4 (a's at 2, 3; b's first item, at 2, is no target); histories cut to 2
    assert data.train.to_dict() == {"user_id": ["a", "a"], "history": [[0], [0, 1]], "target": [1, 2],
                                    "timestamp": [2.0, 3.0]}  # fmt: skip
    # valid: the first target in [4, 6) of each user, the whole history before it; test: the first at or after 6
    assert data.valid.to_dict() == {"user_id": ["a", "b"], "history": [[0, 1, 2], [5]], "target": [3, 4]}
    assert data.test.to_dict() == {"user_id": ["a", "b"], "history": [[0, 1, 2, 3, 4], [5, 4]], "target": [5, 3]}
    args.valid_since = "6"  # no validation period
    data = load_data(args, max_history=10)
    assert len(data.valid) == 0 and data.train["target"] == [1, 2, 3, 4, 4]
    args.valid_since, args.test_since = "2", "8"  # b's first target in [2, 8), at 2, has no history: no row
    data = load_data(args, max_history=10)
    assert data.valid["user_id"] == ["a"] and data.test["user_id"] == ["b"]
    assert data.skipped["l.csv: valid targets with fewer than 1 items before them"] == 1


def test_a_time_split_without_a_validation_period_trains_and_keeps_the_last_model(shift, tiny, tmp_path):
    argv = _args(shift["items"], shift["log"], tmp_path, "--encoder_name_or_path", tiny, "--max_steps", "3",
                 "--valid_since", str(NEW_PERIOD + 100), "--test_since", str(NEW_PERIOD + 100))  # fmt: skip
    metrics = _train(argv)
    assert metrics["valid"] == {} and metrics["history"] == [] and metrics["protocol"]["steps"] == 3
    assert metrics["test"]["history_kept"]["users"] == 60 and (tmp_path / "model.safetensors").is_file()
    assert "the model after the last of 3 steps (no validation rows)" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"valid_since": "5"}, "valid_since and test_since: give both"),
        ({"valid_since": "6", "test_since": "5"}, "valid_since (6) is after test_since (5)"),
        ({"replay_fraction": 0.5}, "replay_fraction: set train_since too"),
        ({"train_since": "4", "replay_fraction": 1.5}, "replay_fraction must be between 0 and 1, got 1.5"),
        ({"train_since": "soon"}, "train_since: 'soon' is neither an ISO date (2018-06-01) nor Unix seconds"),
    ],
)
def test_bad_time_settings_are_one_line_errors(tmp_path, settings, message):
    args = _hand_log(tmp_path)
    for name, value in settings.items():
        setattr(args, name, value)
    with pytest.raises(InputError) as error:
        load_data(args, max_history=10)
    assert str(error.value) == message or str(error.value).startswith(message)


def test_unquoted_dates_and_numbers_in_a_yaml_config_are_times(tmp_path):
    config = tmp_path / "update.yaml"
    config.write_text("train_since: 2018-06-01\nvalid_since: 1530403200\ntest_since: 2018-08-01T00:00:00\n")
    assert load_yaml_settings(config) == {"train_since": "2018-06-01", "valid_since": "1530403200",
                                          "test_since": "2018-08-01T00:00:00"}  # fmt: skip
