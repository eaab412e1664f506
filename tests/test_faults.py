"""Faults: a run killed with SIGKILL or stopped with SIGTERM resumes to the uninterrupted result; an output folder
that can't be written stops the run before training; files that would run code when unpickled are refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recsys_bert.arguments import parse_args
from recsys_bert.modeling import load_model
from recsys_bert.trainer import Trainer, train
from recsys_bert.utils import InputError, Interrupted
from tests.conftest import REPO_ROOT, flat, reset_accelerate_state, tiny_train_args

RUN = (
    "--finetune_layers", "0", "--projection_dim", "16", "--max_steps", "60", "--save_steps", "10",
    "--eval_steps", "20", "--save_total_limit", "10", "--dropout", "0.2",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_state(fresh_accelerate_state):
    """Each run in this process starts its own Accelerator."""


@pytest.fixture(scope="module")
def uninterrupted(generic_files, tiny, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted")
    reset_accelerate_state()
    train(*parse_args(tiny_train_args(generic_files, tiny, folder, *RUN)))
    return folder


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *argv],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.001)


def _assert_same_result(folder: Path, reference: Path) -> None:
    result, expected = (json.loads((f / "metrics.json").read_text()) for f in (folder, reference))
    assert flat(result["test"]) == pytest.approx(flat(expected["test"]), abs=1e-6)
    assert flat(result["valid"]) == pytest.approx(flat(expected["valid"]), abs=1e-6)
    weights, expected_weights = load_file(folder / "model.safetensors"), load_file(reference / "model.safetensors")
    for key, tensor in expected_weights.items():
        torch.testing.assert_close(weights[key], tensor, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "event",
    ["checkpoint-20/trainer_state.json", ".tmp-checkpoint-40"],  # just after a checkpoint; while one is written
)
def test_sigkill_at_any_moment_resumes_to_the_uninterrupted_result(
    generic_files, tiny, uninterrupted, tmp_path, event
):
    """Killed the moment a file appears (an event, not a time: the same on a fast machine and a slow one)."""
    argv = tiny_train_args(generic_files, tiny, tmp_path, *RUN)
    process = _start(argv)
    _wait_for(tmp_path / event, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    # the kill landed mid-run
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "checkpoint-60").exists()
    resumed = subprocess.run(
        [sys.executable, "train.py", *argv, "--resume_from_checkpoint", "latest"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr
    _assert_same_result(tmp_path, uninterrupted)


def test_sigterm_on_an_evaluation_step_keeps_that_validation(
    generic_files, tiny, uninterrupted, tmp_path, monkeypatch
):
    """The signal arrives during step 20, which validates: the checkpoint holds step 20's validation."""
    original = Trainer._micro_step

    def micro_step(self, batch, *position):
        if self.state.global_step == 19:  # the step in progress becomes step 20
            os.kill(os.getpid(), signal.SIGTERM)
        original(self, batch, *position)

    argv = tiny_train_args(generic_files, tiny, tmp_path, *RUN)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_micro_step", micro_step)
        with pytest.raises(Interrupted, match="stopped by SIGTERM at step 20"):
            train(*parse_args(argv))
    state = json.loads((tmp_path / "checkpoint-20" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["history"]] == [20] and state["best_step"] == 20
    reset_accelerate_state()
    train(*parse_args([*argv, "--resume_from_checkpoint", "latest"]))
    _assert_same_result(tmp_path, uninterrupted)
    written = json.loads((tmp_path / "metrics.json").read_text())
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    assert [h["step"] for h in written["history"]] == [h["step"] for h in expected["history"]] == [20, 40, 60]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(generic_files, tiny, uninterrupted, tmp_path):
    argv = tiny_train_args(generic_files, tiny, tmp_path, *RUN)
    process = _start(argv)
    _wait_for(tmp_path / "checkpoint-10" / "trainer_state.json", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert last.startswith("stopped by SIGTERM at step ") and last.endswith(
        "continue with --resume_from_checkpoint latest"
    )
    step = int(last.split("at step ")[1].split(":")[0])
    assert (tmp_path / f"checkpoint-{step}" / "trainer_state.json").is_file() and 10 <= step < 60
    reset_accelerate_state()
    train(*parse_args([*argv, "--resume_from_checkpoint", "latest"]))
    _assert_same_result(tmp_path, uninterrupted)


def test_an_output_folder_that_cannot_be_written_stops_before_training(generic_files, tiny, tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(InputError, match="a-file/out: output folder can't be written"):
        train(*parse_args(tiny_train_args(generic_files, tiny, tmp_path / "a-file" / "out")))


class _RunsCode:
    """A pickle that touches a file when loaded: what a malicious checkpoint or weights file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_files_that_would_run_code_are_refused_not_run(generic_files, tiny, uninterrupted, tmp_path):
    marker = tmp_path / "code-ran"
    # a checkpoint whose optimizer state is a code-running pickle
    shutil.copytree(uninterrupted / "checkpoint-60", tmp_path / "run" / "checkpoint-60")
    with open(tmp_path / "run" / "checkpoint-60" / "optimizer.bin", "wb") as f:
        pickle.dump(_RunsCode(marker), f)
    argv = tiny_train_args(generic_files, tiny, tmp_path / "run", *RUN, "--resume_from_checkpoint", "latest")
    with pytest.raises(InputError, match="checkpoint-60: can't resume from it"):
        train(*parse_args(argv))
    assert not marker.exists()
    # a model folder with pickled weights only
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    shutil.copy(uninterrupted / "config.json", model_dir / "config.json")
    torch.save(_RunsCode(marker), model_dir / "pytorch_model.bin")
    with pytest.raises(InputError, match="no model.safetensors"):
        load_model(str(model_dir))
    assert not marker.exists()
