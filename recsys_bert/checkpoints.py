"""Checkpoints: `Accelerator.save_state` into a temporary folder renamed `checkpoint-STEP`, with the trainer's state
(`trainer_state.json`, written last: a folder without it is incomplete and never resumed from) and the best model so
far; the oldest complete ones beyond a limit deleted."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

from accelerate import Accelerator

from recsys_bert.utils import InputError, one_line, write_json_atomic

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
BEST_MODEL_FOLDER = "best_model"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    found = [path for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (path / STATE_FILE).is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)))


def find_checkpoint(output_dir: Path, which: str) -> Path | None:
    """`which` = a checkpoint folder, or 'latest': the newest complete checkpoint of `output_dir` (None if none)."""
    if which != "latest":
        path = Path(which)
        if not (path / STATE_FILE).is_file():
            raise InputError(f"{path}: not a complete checkpoint (no {STATE_FILE})")
        return path
    return (complete_checkpoints(output_dir) or [None])[-1]


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Every process writes its part (model, optimizer, scheduler, RNG states); the main process adds the best model
    and `state`, renames the folder into place and deletes all but the newest `keep` complete checkpoints."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    scratch = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"  # one name for every process, unlike mkdtemp's
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch))
    accelerator.wait_for_everyone()  # every process has written its part before the rename
    if accelerator.is_main_process:
        if (output_dir / BEST_MODEL_FOLDER).exists():  # the best model so far is part of the state to resume
            shutil.copytree(output_dir / BEST_MODEL_FOLDER, scratch / BEST_MODEL_FOLDER)
        write_json_atomic(scratch / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(scratch, final)
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, output_dir: Path) -> dict:
    """Restores what `save_checkpoint` saved (tensors through `torch.load(weights_only=True)`: a file holding
    anything else is refused, never run); returns the trainer's state and puts the best model back in place."""
    try:
        accelerator.load_state(str(checkpoint))
    except (pickle.UnpicklingError, RuntimeError, OSError) as err:
        raise InputError(f"{checkpoint}: can't resume from it ({one_line(err)})") from None
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    if accelerator.is_main_process and (checkpoint / BEST_MODEL_FOLDER).exists():
        shutil.rmtree(output_dir / BEST_MODEL_FOLDER, ignore_errors=True)
        shutil.copytree(checkpoint / BEST_MODEL_FOLDER, output_dir / BEST_MODEL_FOLDER)
    accelerator.wait_for_everyone()
    return state
