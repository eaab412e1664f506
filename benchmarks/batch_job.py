"""recommend.py over large users files: peak memory and users/s against the number of users (the streaming batch job).

Synthetic users of MovieLens items (histories of 5 to 50 random ml-latest-small movie ids, a tenth of them with a free
text too) are written as JSON Lines of `--users` sizes; `recommend.py --users FILE --output recs.parquet` ranks the
whole catalogue (9,742 movies) for each, top 20, in a subprocess. Peak memory is that subprocess's peak resident set
(`resource.getrusage(RUSAGE_CHILDREN)` of a fresh `python` that runs nothing else); users/s is recommend.py's own
figure (ranking and writing, after the catalogue is encoded). A streaming job's peak is flat in the number of users.

The model is `make demo`'s architecture (all-MiniLM-L6-v2, a 128-wide head, the attention user tower over 30 items),
untrained: ranking costs what the trained model's does, and no training run is needed first.

    python benchmarks/batch_job.py                         # 10k, 100k and 1M users
    python benchmarks/batch_job.py --users 1000 10000      # quicker

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOVIELENS = ROOT / "data" / "ml-latest-small"

CHILD = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)  # KiB, the recommend.py process
sys.exit(done.returncode)
"""


def write_users(path: Path, count: int, movie_ids: list[str], seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for user in range(count):
            history = rng.sample(movie_ids, rng.randint(5, 50))
            if user % 10 == 0:
                history.append(f"A film about {rng.choice(['teapots', 'rivers', 'robots', 'chess'])} ({user % 97})")
            handle.write(json.dumps({"user_id": f"u{user}", "history": history}) + "\n")


def make_model(folder: Path) -> None:
    from transformers import AutoTokenizer

    from recsys_bert.encoders import default_encoder_path
    from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel, save_model

    # the architecture of configs/movielens.yaml (the demo's model), untrained
    model = RecsysBertModel.from_encoder(RecsysBertConfig(projection_dim=128, max_history=30, max_item_tokens=32))
    save_model(model, AutoTokenizer.from_pretrained(default_encoder_path()), folder)
    (folder / "config.yaml").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "batch_job_results.json"))
    args = parser.parse_args()
    import pandas as pd
    import torch

    movie_ids = pd.read_csv(MOVIELENS / "movies.csv", dtype=str).movieId.tolist()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="batch-job-") as scratch:
        scratch = Path(scratch)
        env["RECSYS_BERT_CACHE"] = str(scratch / "cache")
        make_model(scratch / "model")
        for count in args.users:
            users = scratch / f"users-{count}.jsonl"
            write_users(users, count, movie_ids)
            output = scratch / "recs.parquet"
            command = [
                sys.executable, "-c", CHILD, sys.executable, str(ROOT / "recommend.py"),
                "--model", str(scratch / "model"),
                "--items", str(MOVIELENS / "movies.csv"), "--item_id_column", "movieId",
                "--text_template", "{title}. {genres}", "--users", str(users), "--top_k", "20",
                "--batch_size", str(args.batch_size), "--output", str(output),
            ]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                sys.exit(done.stderr[-3000:])
            summary = json.loads(done.stderr.split("Recommended: ", 1)[1].splitlines()[0])
            peak_kib = int(done.stderr.strip().splitlines()[-1])
            row = {
                "users": count,
                "users_file_mib": round(users.stat().st_size / 2**20, 1),
                "output_mib": round(output.stat().st_size / 2**20, 1),
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "users_per_second": summary["users_per_second"],
                "wall_seconds": round(wall, 1),
                "vector_cache": summary["vector_cache"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            users.unlink()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
