"""RecBole 1.2.1's SASRec on one prepared data set, run inside RecBole's own venv (`benchmarks/sasrec.py` builds it
and writes the data; run that, not this).

Trains SASRec (CE loss over all items) until early stopping fires on validation NDCG@10 or the time cap is reached,
evaluates the best checkpoint with RecBole's own evaluator (history kept: RecBole never masks a sequential model's
history), then scores the same checkpoint over our catalogue with recsys-bert's own metric code
(`recsys_bert/metrics.py`, loaded by path: this venv has numpy<2 and no transformers) in both protocols, and checks
each test user's target against ours. Writes `--output` (JSON) and `--ranks` (JSON: our user id -> [rank with the
history kept, rank with it excluded]).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("recsys_bert_metrics", ROOT / "recsys_bert" / "metrics.py")
metrics = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(metrics)


class TimeCap(Exception):
    """Raised from RecBole's validation callback once the training time cap is spent."""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_path", required=True, help="Folder holding the data set's folder.")
    parser.add_argument("--dataset", required=True, help="The data set's name (its folder and file stem).")
    parser.add_argument(
        "--mode",
        choices=["benchmark", "inter"],
        required=True,
        help="benchmark: {train,valid,test}.inter files; inter: one .inter, leave-one-out by time.",
    )
    parser.add_argument("--test_users", required=True, help="JSON: our user id -> [full history, test target].")
    parser.add_argument("--num_items", type=int, required=True, help="Our catalogue's size.")
    parser.add_argument("--held_out_items", help="JSON list of the items held out of training (cold), if any.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=500, help="Most epochs (early stopping ends it before).")
    parser.add_argument("--patience", type=int, default=10, help="Validations without improvement before stopping.")
    parser.add_argument("--max_minutes", type=float, default=120, help="Training time cap.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--ranks", required=True)
    parser.add_argument("--checkpoint_dir", required=True)
    return parser.parse_args()  # fmt: skip


def patch_torch_load(checkpoint_dir: Path) -> None:
    """RecBole pickles its checkpoints (config objects beside the weights), which torch>=2.6 refuses to load by
    default: `weights_only=False` for files under `checkpoint_dir` only, RecBole's own, written by this run."""
    original = torch.load

    def load(path, *args, **kwargs):
        if Path(path).resolve().is_relative_to(checkpoint_dir.resolve()):
            kwargs["weights_only"] = False
        return original(path, *args, **kwargs)

    torch.load = load


def config_dict(args: argparse.Namespace) -> dict:
    settings = {
        "data_path": args.data_path, "dataset": args.dataset, "checkpoint_dir": args.checkpoint_dir,
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "MAX_ITEM_LIST_LENGTH": 50,
        # no filtering: the data are already what every peer gets
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "model": "SASRec", "loss_type": "CE", "train_neg_sample_args": None,
        "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "epochs": args.epochs, "stopping_step": args.patience, "eval_step": 1,
        "train_batch_size": 2048, "eval_batch_size": 4096, "learning_rate": 0.001,
        "metrics": ["Recall", "NDCG", "MRR"], "topk": [10, 50], "valid_metric": "NDCG@10",
        "seed": args.seed, "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False,
        "log_wandb": False, "save_dataset": False, "save_dataloaders": False,
    }  # fmt: skip
    if args.mode == "benchmark":  # UniSRec's atomic files: histories given, the split given
        settings["load_col"] = {"inter": ["user_id", "item_id_list", "item_id"]}
        settings["alias_of_item_id"] = ["item_id_list"]
        settings["benchmark_filename"] = ["train", "valid", "test"]
    else:
        settings["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    return settings


def our_scores(model, interaction, item_ours: torch.Tensor, num_items: int) -> torch.Tensor:
    """SASRec's scores of a test batch, moved into our item indices `(users, num_items)`; items RecBole never saw
    (no interaction) score -inf (none is a target)."""
    scores = model.full_sort_predict(interaction).view(len(interaction), -1)  # (users, RecBole items + 1)
    full = torch.full((len(scores), num_items), -torch.inf)
    full[:, item_ours[1:]] = scores[:, 1:]  # RecBole's item 0 is padding
    return full


def main() -> None:
    args = parse()
    Path(args.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    patch_torch_load(Path(args.checkpoint_dir))
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    config = Config(model="SASRec", dataset=args.dataset, config_dict=config_dict(args))
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)

    curve, start = [], time.perf_counter()

    def after_validation(epoch: int, valid_score: float) -> None:
        minutes = (time.perf_counter() - start) / 60
        curve.append({"epoch": epoch, "valid_ndcg@10": float(valid_score), "minutes": round(minutes, 2)})
        print(f"epoch {epoch}: valid NDCG@10 {valid_score:.4f} after {minutes:.1f} min", flush=True)
        if minutes >= args.max_minutes:
            raise TimeCap

    capped = False
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=after_validation)
    except TimeCap:
        capped = True
    train_minutes = (time.perf_counter() - start) / 60
    recbole_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)  # loads the best weights
    recbole_test = {key: float(value) for key, value in recbole_test.items()}

    # the same checkpoint through our metric code, over our catalogue, both protocols
    test_users = json.loads(Path(args.test_users).read_text())
    item_ours = torch.tensor([-1] + [int(t) for t in dataset.field2id_token["item_id"][1:]])  # RecBole id -> ours
    user_tokens = dataset.field2id_token["user_id"]
    model = trainer.model.eval()
    ranks, mismatched = {}, 0
    with torch.no_grad():
        for interaction, _, _, positive_i in test_data:
            scores = our_scores(model, interaction, item_ours, args.num_items)  # (users, num_items)
            users = [str(user_tokens[u]) for u in interaction["user_id"].tolist()]
            targets = item_ours[positive_i]  # (users,)
            ours = torch.tensor([test_users[u][1] for u in users])
            mismatched += int((targets != ours).sum())
            kept = metrics.target_ranks(scores, ours)
            for row, user in enumerate(users):
                history = [i for i in test_users[user][0] if i != test_users[user][1]]
                scores[row, history] = -torch.inf
            excluded = metrics.target_ranks(scores, ours)
            ranks.update({u: [int(k), int(e)] for u, k, e in zip(users, kept, excluded)})
    if mismatched or len(ranks) != len(test_users):
        raise SystemExit(f"RecBole's test split differs from ours: {mismatched} targets differ, "
                         f"{len(ranks)} of {len(test_users)} users scored")  # fmt: skip
    kept = metrics.ranking_metrics([r[0] for r in ranks.values()], (10, 50))
    excluded = metrics.ranking_metrics([r[1] for r in ranks.values()], (10, 50))
    held_out = set(json.loads(Path(args.held_out_items).read_text())) if args.held_out_items else set()
    cold = [r for u, r in ranks.items() if test_users[u][1] in held_out]  # test users with a held-out target
    cold_items = {"items": len(held_out), "users": len(cold)}
    if cold:
        cold_items.update(history_kept=metrics.ranking_metrics([r[0] for r in cold], (10, 50)),
                          history_excluded=metrics.ranking_metrics([r[1] for r in cold], (10, 50)))  # fmt: skip
    best_epoch = max(curve, key=lambda c: c["valid_ndcg@10"])["epoch"] if curve else None
    summary = {
        "recbole_test": recbole_test,
        "history_kept": kept,
        "history_excluded": excluded,
        "users": len(ranks),
        "test_cold_items": cold_items,
        "train_rows": len(train_data._dataset),
        "epochs_run": len(curve),
        "best_epoch": best_epoch,
        "best_valid_ndcg@10": float(trainer.best_valid_score),
        "early_stopped": not capped and len(curve) < args.epochs,
        "capped": capped,
        "train_minutes": round(train_minutes, 2),
        "curve": curve,
        "settings": {k: v for k, v in config_dict(args).items() if k not in ("data_path", "checkpoint_dir")},
        "torch": torch.__version__,
    }
    Path(args.ranks).write_text(json.dumps(ranks))
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("recbole_test", "epochs_run", "early_stopped", "train_minutes")}))


if __name__ == "__main__":
    sys.exit(main())
