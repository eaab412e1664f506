"""Two processes (gloo, `accelerate launch` with the shipped DDP config) against one: the same model with the same
global batch, in-batch negatives gathered across processes, and evaluation that counts every user exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recsys_bert.arguments import parse_args
from recsys_bert.trainer import train
from tests.conftest import REPO_ROOT, flat, reset_accelerate_state, tiny_train_args
from tests.tiny import make_tiny_encoder

# sampled negatives drawn from a seed every process shares, and no dropout (whose masks are per process): the
# candidates and activations are the same however the batch is split
RUN = ("--max_steps", "4", "--eval_steps", "2", "--num_negatives", "16", "--dropout", "0", "--run_baselines", "true")
# one user's target moving past a near tie (float noise of another batch split) moves a mean metric by < 1 / users
ONE_USER = 1 / 40


def test_two_processes_train_the_model_one_process_trains(generic_files, tmp_path):
    tiny = make_tiny_encoder(tmp_path / "tiny")  # without dropout in the encoder either
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(config))
    reset_accelerate_state()
    one = train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path / "one", *RUN)))
    argv = tiny_train_args(generic_files, tiny, tmp_path / "two", *RUN, "--per_device_train_batch_size", "16")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    launch = [accelerate, "launch", "--config_file", "configs/accelerate/ddp.yaml"]
    result = subprocess.run(
        [*launch, "--num_processes", "2", "--mixed_precision", "no", "train.py", *argv],
        cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["run"]["processes"] == 2 and one["run"]["processes"] == 1
    assert two["run"]["effective_batch_size"] == one["run"]["effective_batch_size"] == 32
    # evaluation: every user once, and exactly the single-process metrics for the same scores
    assert two["test"]["history_kept"]["users"] == one["test"]["history_kept"]["users"] == 40
    assert two["baselines"]["popularity"] == one["baselines"]["popularity"]  # integer scores: exact
    assert flat(two["baselines"]["zero_shot"]) == pytest.approx(flat(one["baselines"]["zero_shot"]), abs=ONE_USER)
    # training: the same weights and metrics, to float tolerance
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    for key, tensor in weights_one.items():
        if key.endswith("self_attn.in_proj_bias"):  # the key bias has no gradient (softmax ignores it): Adam turns
            third = len(tensor) // 3  # the float noise there into lr-sized steps, so only query and value compare
            tensor, weights_two[key] = (torch.cat([t[:third], t[2 * third :]]) for t in (tensor, weights_two[key]))
        # Adam turns float noise in a near-zero gradient into up to lr-sized differences: 2e-5 of lr 1e-3
        torch.testing.assert_close(weights_two[key], tensor, atol=2e-5, rtol=1e-4, msg=key)
    pretrained = load_file(
        tmp_path / "tiny" / "model.safetensors"
    )  # the encoder did train: the equality is not trivial
    key = "encoder.layer.1.output.dense.weight"
    assert (weights_one[f"encoder.{key}"] - pretrained[key]).abs().max() > 5e-5  # 4 Adam steps of lr 5e-5
    assert flat(two["test"]) == pytest.approx(flat(one["test"]), abs=ONE_USER)
    assert flat(two["valid"]) == pytest.approx(flat(one["valid"]), abs=ONE_USER)


def test_the_shipped_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {
        path.stem: load_config_from_file(str(path)).distributed_type.value
        for path in sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))
    }
    assert kinds == {"one_gpu": "NO", "ddp": "MULTI_GPU", "multi_node": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED",
                     "fsdp": "FSDP"}  # fmt: skip
    fsdp = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / "fsdp.yaml")).fsdp_config
    # no layer class named: accelerate wraps what the model's _no_split_modules names, each encoder's own layer
    assert fsdp["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in fsdp


def test_fsdp2_sharded_model_evaluates_trains_and_saves_as_the_whole_model(generic_files, tiny, tmp_path):
    """FSDP2 over 2 gloo processes (torch's `fully_shard`, wrapped as configs/accelerate/fsdp.yaml wraps: Accelerate
    itself enables FSDP only on accelerators): evaluation under `whole_parameters` before and after a training step,
    the step through the root, and the gathered state dict, all equal to the unsharded model's."""
    items, log = generic_files
    out = tmp_path / "fsdp.json"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "tests/fsdp_check.py", str(items), str(log), tiny, str(out)],
        cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads(out.read_text())
    assert check["processes"] == 2 and check["sharded_parameter_type"] == "DTensor"
    assert check["before"] == {"max_abs_diff": 0.0, "metrics_equal": True}  # before any step: the zero-shot case
    assert check["loss"][0] == pytest.approx(check["loss"][1], abs=1e-6)
    assert check["after"]["moved"] > 1e-3 and check["after"]["max_abs_diff"] < 1e-5
    assert flat(check["after"]["metrics_sharded"]) == pytest.approx(
        flat(check["after"]["metrics_whole"]), abs=ONE_USER
    )
    assert check["state_dict_keys_equal"] and check["state_dict_max_abs_diff"] < 1e-4
