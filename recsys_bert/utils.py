"""What every module shares: the errors that scripts print on one line, and writes that a reader never sees half
done (a temporary name beside the target, renamed into place)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class InputError(Exception):
    """Input that can't be used (a file, a config, a model folder); the message names file, line and field."""


class Interrupted(Exception):
    """Training stopped by a signal (SIGTERM, Ctrl-C) after saving a checkpoint; exits with 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def one_line(err: BaseException | str) -> str:
    """The first line of an error's message with its whitespace collapsed (the error's type if it says nothing)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__ if isinstance(err, BaseException) else ""
    return " ".join(lines[0].split())


@contextmanager
def atomic_path(target: str | Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside `target` (a file, or a folder when `folder`) that replaces `target` when the block
    ends without error and is removed when it fails. Temporary names start with '.', so listings skip them."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp's privacy is not meant for what is shared
    else:
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if folder and target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, payload) -> None:
    """JSON with readable UTF-8 (not \\u escapes), written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def move_files_into(source: Path, target: Path) -> None:
    """Renames each file of the folder `source` into the folder `target` (kept: `target`'s other files), then removes
    `source`: each file appears whole, never half-written."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.is_dir():
            if (target / path.name).is_dir():
                shutil.rmtree(target / path.name)
        else:
            path.chmod(0o644)
        os.replace(path, target / path.name)
    source.rmdir()
