"""Fine-tuning with Accelerate, in the loop order of accelerate's `gradient_accumulation.py` example."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_scheduler

from recsys_bert.catalogue import Catalogue
from recsys_bert.cli import configure_logging
from recsys_bert.config import DataArguments, ModelArguments, TrainingArguments, settings_dict
from recsys_bert.data import RecData, format_skipped, load_data, tokenize_items
from recsys_bert.errors import InputError, Interrupted
from recsys_bert.evaluation import (
    EvalCollator,
    eval_loader,
    evaluate,
    mean_history_scorer,
    model_scorer,
    popularity_scorer,
)
from recsys_bert.hub import ITEM_ENCODER_FOLDER, push_to_hub, save_item_encoder, write_model_card
from recsys_bert.losses import per_sample_negatives_loss, shared_negatives_loss
from recsys_bert.model import RecsysBertConfig, RecsysBertModel, default_encoder_path

logger = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "checkpoint-"


class TrainCollator:
    """Training batches in which every item of the step (history, positive, negatives) appears once.

    Samples' histories, positives and negatives become indices into the step's unique items, whose tokens (or cached
    frozen states) the batch carries. Sampled negatives are drawn from a generator seeded by the batch's content, so
    a resumed run draws what an uninterrupted one did.
    """

    def __init__(self, catalogue: Catalogue, config: RecsysBertConfig, args: TrainingArguments):
        self.catalogue = catalogue
        self.config = config
        self.args = args

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        recent = [np.asarray(row["history"][-self.config.max_history :], dtype=np.int64)[::-1] for row in rows]
        targets = np.array([row["target"] for row in rows], dtype=np.int64)  # (batch,)
        lengths = np.array([len(h) for h in recent])
        rng = np.random.default_rng([self.args.seed, len(rows), *targets[:16].tolist(), int(lengths.sum())])
        if "negatives" in rows[0]:  # MIND: npratio of the impression's non-clicked items, -1 where it has too few
            negatives = np.full((len(rows), self.args.npratio), -1, dtype=np.int64)  # (batch, npratio)
            for i, row in enumerate(rows):
                pool = np.asarray(row["negatives"], dtype=np.int64)
                if len(pool):
                    negatives[i] = rng.choice(pool, self.args.npratio, replace=len(pool) < self.args.npratio)
        else:
            negatives = (
                np.arange(len(self.catalogue))  # (items,) a full softmax
                if self.args.num_negatives < 0
                else rng.integers(0, len(self.catalogue), self.args.num_negatives)  # (negatives,) shared
            )
        width = max(int(lengths.max()), 1)
        history = np.zeros((len(rows), width), dtype=np.int64)  # (batch, width)
        history_mask = np.arange(width)[None, :] < lengths[:, None]  # (batch, width)
        for i, h in enumerate(recent):
            history[i, : len(h)] = h
        # the 'text' user tower reads the history's tokens, not its item vectors: those items need no encoding
        history_items = history[history_mask] if self.config.user_tower == "attention" else history[:0, 0]
        unique, inverse = np.unique(
            np.concatenate([history_items, targets, negatives[negatives >= 0]]), return_inverse=True
        )
        n_hist, n_batch = len(history_items), len(rows)
        history_index = np.zeros_like(history)
        if n_hist:
            history_index[history_mask] = inverse[:n_hist]
        negative_index = np.full(negatives.shape, 0, dtype=np.int64)
        negative_index[negatives >= 0] = inverse[n_hist + n_batch :]
        batch = {
            "history_index": torch.from_numpy(history_index),  # (batch, width)
            "history_mask": torch.from_numpy(history_mask),  # (batch, width)
            "positive_index": torch.from_numpy(inverse[n_hist : n_hist + n_batch]),  # (batch,)
            "negative_index": torch.from_numpy(negative_index),  # (negatives,) or (batch, npratio)
            "positive_ids": torch.from_numpy(targets),  # (batch,)
            "negative_ids": torch.from_numpy(negatives),  # (negatives,) or (batch, npratio), -1 = none
            "history_ids": torch.from_numpy(np.where(history_mask, history, -1)),  # (batch, width), -1 = none
            **{f"item_{key}": value for key, value in self.catalogue.features(unique).items()},  # (unique_items, ...)
        }
        if self.config.user_tower == "text":
            batch["user_input_ids"], batch["user_attention_mask"] = self.catalogue.history_text_tokens(
                recent, self.config.max_user_tokens
            )
        return batch


ID_FIELDS = ("positive_ids", "negative_ids", "history_ids")  # a `TrainCollator` batch's fields for the loss only


def step_loss(
    model: RecsysBertModel,
    batch: dict[str, torch.Tensor],
    temperature: float,
    item_log_frequency: torch.Tensor | None = None,
    in_batch: bool = True,
    impressions: bool = False,
) -> torch.Tensor:
    """The loss of one `TrainCollator` batch: the model's vectors against the step's candidates, with the repeat
    bias on candidates from each sample's history.

    Args:
        item_log_frequency, in_batch: as in `shared_negatives_loss`.
        impressions: each sample has its own negatives (MIND), scored by `per_sample_negatives_loss`.
    """
    output = model(**{key: value for key, value in batch.items() if key not in ID_FIELDS})
    vectors = (output.user_vectors, output.positive_vectors, batch["positive_ids"], output.negative_vectors)
    repeats = {"history_ids": batch["history_ids"], "repeat_bias": output.repeat_bias}
    if impressions:
        return per_sample_negatives_loss(*vectors, batch["negative_ids"], temperature, **repeats)
    return shared_negatives_loss(
        *vectors, batch["negative_ids"], temperature, in_batch, item_log_frequency=item_log_frequency, **repeats
    )


class StopRequest:
    """SIGTERM or Ctrl-C while training: the step finishes, a checkpoint is saved, the run stops (`Interrupted`).

    A second Ctrl-C stops at once. Every process stops at the same step when any of them got the signal.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, accelerator: Accelerator) -> bool:
        return any_process(accelerator, self.signum is not None)


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any of them (so that all stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    flag = torch.tensor(float(flag), device=accelerator.device)
    return accelerator.reduce(flag, reduction="sum").item() > 0


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def save_model(model: RecsysBertModel, tokenizer, target: Path, state_dict: dict | None = None) -> None:
    """`save_pretrained` (safetensors + JSON config) and the tokenizer into a temporary folder beside `target`, then
    each file renamed into `target`: a reader never sees a half-written file. `state_dict`: the weights to write when
    the model holds shards of them (FSDP; `Accelerator.get_state_dict` gathers them)."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.chmod(0o644)  # mkdtemp's privacy is not meant for a model to share
        os.replace(f, target / f.name)
    tmp.rmdir()


def find_checkpoint(output_dir: Path, which: str) -> Path | None:
    """`which` = a checkpoint folder or 'latest': the newest complete checkpoint (one holding its `trainer_state.json`,
    the file written last)."""
    if which != "latest":
        path = Path(which)
        if not (path / "trainer_state.json").exists():
            raise InputError(f"{path}: not a complete checkpoint (no trainer_state.json)")
        return path
    complete = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.json").exists()]
    return max(complete, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


@contextmanager
def whole_parameters(model: torch.nn.Module):
    """The parameters whole, as evaluation and catalogue encoding need them: they call the model's parts directly,
    outside its `forward`, and each process encodes its own share of the items, so under FSDP2 (which keeps only each
    process's shard of the parameters, gathering them in every wrapped module's forward) processes would gather
    different numbers of times. Every FSDP module is gathered once up front and kept whole until the end. A no-op
    for a model that FSDP2 did not wrap."""
    if not torch.distributed.is_available():
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    # FSDP2 takes the first module to run as its root; evaluation before any training step would run an encoder
    # layer first. Initialize from the real root, as its forward would (torch has no public call for this).
    model._get_fsdp_state()._lazy_init()
    wrapped = [module for module in model.modules() if isinstance(module, FSDPModule)]
    model.set_reshard_after_forward(False)  # torch's documented way to keep parameters whole for evaluation
    for module in wrapped:
        module.unshard()
    try:
        yield
    finally:
        model.set_reshard_after_forward(True)  # as accelerate wraps (fsdp_reshard_after_forward), the root
        model.set_reshard_after_forward(False, recurse=False)  # excepted, as FSDP2 sets it
        for module in wrapped:
            module.reshard()


def has_accelerator() -> bool:
    from accelerate.utils import is_mps_available, is_npu_available, is_xpu_available

    return torch.cuda.is_available() or is_mps_available() or is_xpu_available() or is_npu_available()


def check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{output_dir}: output folder can't be written ({err.strerror})") from None


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Loads the data, fine-tunes, evaluates and saves; returns what is written to `metrics.json`."""
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir)
    if args.push_to_hub and not args.hub_model_id:
        raise InputError("push_to_hub: set hub_model_id (e.g. me/recsys-bert-movielens)")
    accelerator = Accelerator(
        cpu=not has_accelerator(),  # so that torchrun on CPUs starts a gloo process group
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    configure_logging(accelerator)
    args = dataclasses.replace(args, mixed_precision=accelerator.mixed_precision)  # recorded as run, not as asked
    set_seed(args.seed)

    # ---- data: loaded and tokenized once, by the main process first (the others read its cache) ----
    start = time.perf_counter()
    encoder_path = model_args.encoder_name_or_path or default_encoder_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder_path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0]
        raise InputError(f"{encoder_path}: can't load a tokenizer from it ({message})") from None
    with accelerator.main_process_first():
        data = load_data(data_args, max_history=model_args.max_history, seed=args.seed)
        items = tokenize_items(data.items, tokenizer, model_args.max_item_tokens)
    if accelerator.is_main_process:
        logger.info("Skipped while loading %s: %s", data.name, format_skipped(data.skipped).replace("\n", "; "))
    _check_metric_name(args, data)
    if len(data.train) == 0:
        raise InputError(f"{data.name}: no training rows (see what was skipped above); nothing to train on")
    catalogue = Catalogue.from_items(items, tokenizer.pad_token_id)

    config = RecsysBertConfig(**vars(model_args))
    model = RecsysBertModel.from_encoder(config).to(accelerator.device)
    catalogue.compute_frozen_states(model, accelerator, args.per_device_eval_batch_size)

    # ---- prepare, then the number of steps of the sharded loader, then the schedule ----
    train_loader = DataLoader(
        data.train,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=TrainCollator(catalogue, config, args),
        num_workers=args.dataloader_num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
    )
    optimizer = torch.optim.AdamW(_parameter_groups(model, args), lr=args.learning_rate)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = max(1, len(train_loader) // args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,  # the prepared scheduler steps once per process per step
        num_warmup_steps=int(args.warmup_ratio * max_steps) * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    scheduler = accelerator.prepare(scheduler)
    eval_collator = EvalCollator(
        config.max_history,
        full_history=args.exclude_history,
        catalogue=catalogue if config.user_tower == "text" else None,
        max_user_tokens=config.max_user_tokens,
    )
    valid_loader = eval_loader(data.valid, eval_collator, args.per_device_eval_batch_size, accelerator)
    test_loader = eval_loader(data.test, eval_collator, args.per_device_eval_batch_size, accelerator)

    def run_eval(scorer, loader, description):
        return evaluate(scorer, loader, accelerator, args.eval_ks, args.exclude_history, description)

    unwrapped = accelerator.unwrap_model(model)
    summary = {
        "data": data.name,
        "items": len(data.items),
        "users": len(set(data.test["user_id"])),
        # each test row holds the user's history before the target (capped at 50 by atomic files)
        "interactions": sum(len(h) for h in data.test["history"]) + len(data.test),
        "train_samples": len(data.train),
        "test_rows": len(data.test),
        "trainable_parameters": sum(p.numel() for p in unwrapped.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in unwrapped.parameters()),
        "effective_batch_size": args.per_device_train_batch_size
        * accelerator.num_processes
        * args.gradient_accumulation_steps,
        "max_steps": max_steps,
        "processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.value,
        "mixed_precision": accelerator.mixed_precision,
        "setup_seconds": round(time.perf_counter() - start, 1),
    }
    if accelerator.is_main_process:
        logger.info("Run: %s", json.dumps(summary))
    scalars = (int, float, str, bool)
    tracked = {k: v for k, v in settings_dict(model_args, data_args, args).items() if isinstance(v, scalars)}
    accelerator.init_trackers("train", config=tracked)

    baselines = {}
    if args.run_baselines:
        popularity = popularity_scorer(data.train_item_counts, accelerator.device)
        baselines["popularity"] = run_eval(popularity, test_loader, "Popularity")
        with whole_parameters(model):
            zero_shot_vectors = _zero_shot_item_vectors(
                unwrapped, catalogue, accelerator, args.per_device_eval_batch_size
            )
        baselines["zero_shot"] = run_eval(mean_history_scorer(zero_shot_vectors), test_loader, "Zero-shot")
        del zero_shot_vectors

    # ---- resume ----
    best_dir = output_dir / "best_model"
    state = {"global_step": 0, "best_metric": None, "best_step": None, "evals_without_improvement": 0, "history": []}
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, args.resume_from_checkpoint)
        if checkpoint is None:
            logger.info("No complete checkpoint in %s: starting from scratch", output_dir)
        else:
            try:  # torch.load with weights_only=True: a file holding anything but tensors is refused, never run
                accelerator.load_state(str(checkpoint))
            except (pickle.UnpicklingError, RuntimeError, OSError) as err:
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InputError(f"{checkpoint}: can't resume from it ({message})") from None
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            if accelerator.is_main_process and (checkpoint / "best_model").exists():
                shutil.rmtree(best_dir, ignore_errors=True)
                shutil.copytree(checkpoint / "best_model", best_dir)
            accelerator.wait_for_everyone()
            logger.info("Resumed from %s at step %d", checkpoint, state["global_step"])

    # ---- the loop ----
    counts = torch.as_tensor(data.train_item_counts, dtype=torch.float64) + 1.0  # +1: items never a target
    item_log_frequency = (counts / counts.sum()).log().float().to(accelerator.device)  # (items,)
    progress = tqdm(
        total=max_steps, initial=state["global_step"], desc="Training", disable=not accelerator.is_local_main_process
    )
    stop = state["global_step"] >= max_steps
    window_loss, window_batches, window_samples = torch.zeros((), device=accelerator.device), 0, 0
    window_start = loop_start = time.perf_counter()
    with StopRequest() as stop_request:
        for epoch in range(state["global_step"] // steps_per_epoch, num_epochs):
            if stop:
                break
            model.train()
            train_loader.set_epoch(epoch)
            skip = (state["global_step"] - epoch * steps_per_epoch) * args.gradient_accumulation_steps
            loader = accelerator.skip_first_batches(train_loader, skip) if skip > 0 else train_loader
            for micro_step, batch in enumerate(loader, start=skip):
                # dropout masks depend only on (seed, process, epoch, micro-step): a resumed run draws the same ones
                torch.manual_seed(hash((args.seed, accelerator.process_index, epoch, micro_step)) % 2**63)
                with accelerator.accumulate(model):
                    negatives = {"in_batch": args.in_batch_negatives, "impressions": data.is_impressions}
                    loss = step_loss(model, batch, config.temperature, item_log_frequency, **negatives)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                window_loss += loss.detach()
                window_batches += 1
                window_samples += len(batch["positive_ids"])
                if not accelerator.sync_gradients:
                    continue
                state["global_step"] += 1
                step = state["global_step"]
                progress.update(1)
                if stop_request.requested(accelerator):
                    _save_checkpoint(accelerator, output_dir, state, args.save_total_limit)
                    progress.close()
                    raise Interrupted(
                        f"stopped by {signal.Signals(stop_request.signum or signal.SIGTERM).name} at step {step}: "
                        f"checkpoint saved in {output_dir / f'{CHECKPOINT_PREFIX}{step}'}; continue with "
                        "--resume_from_checkpoint latest",
                        128 + (stop_request.signum or signal.SIGTERM),
                    )
                if step % args.logging_steps == 0 or step == max_steps:
                    elapsed = time.perf_counter() - window_start
                    logs = {
                        "train/loss": accelerator.reduce(window_loss, reduction="mean").item() / window_batches,
                        "train/learning_rate": scheduler.get_last_lr()[0],
                        "train/samples_per_second": window_samples * accelerator.num_processes / max(elapsed, 1e-9),
                        "train/epoch": step / steps_per_epoch,
                    }
                    accelerator.log(logs, step=step)
                    progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
                    window_loss.zero_()
                    window_batches, window_samples, window_start = 0, 0, time.perf_counter()
                out_of_time = args.max_train_minutes > 0 and any_process(
                    accelerator, time.perf_counter() - loop_start >= 60 * args.max_train_minutes
                )
                if out_of_time:
                    logger.info("Time budget of %s minutes spent at step %d", args.max_train_minutes, step)
                if (args.eval_steps > 0 and step % args.eval_steps == 0) or step == max_steps or out_of_time:
                    best = _validate(model, catalogue, accelerator, args, run_eval, valid_loader, state, step)
                    state["history"][-1]["seconds"] = round(time.perf_counter() - loop_start, 1)  # of this launch
                    if best:
                        state_dict = accelerator.get_state_dict(model)  # every process: FSDP gathers its shards
                        if accelerator.is_main_process:
                            save_model(accelerator.unwrap_model(model), tokenizer, best_dir, state_dict)
                        accelerator.wait_for_everyone()
                    patience = args.early_stopping_patience
                    if patience and state["evals_without_improvement"] >= patience:
                        logger.info("Early stopping at step %d (best at step %s)", step, state["best_step"])
                        stop = True
                if args.save_steps > 0 and step % args.save_steps == 0:
                    _save_checkpoint(accelerator, output_dir, state, args.save_total_limit)
                if step >= max_steps or stop or out_of_time:
                    stop = True
                    break
    progress.close()
    summary["train_seconds"] = round(time.perf_counter() - loop_start, 1)  # steps and validations (of this launch)

    # ---- the best model on test, in a plain model (not sharded by FSDP); everything written atomically ----
    best_weights = best_dir / "model.safetensors"
    state_dict = load_file(best_weights) if best_weights.exists() else accelerator.get_state_dict(model)
    best_model = RecsysBertModel(config)
    best_model.load_state_dict(state_dict)
    best_model.to(accelerator.device)
    item_vectors = catalogue.item_vectors(best_model, accelerator, args.per_device_eval_batch_size)
    test_metrics = run_eval(model_scorer(best_model, item_vectors, accelerator), test_loader, "Test")
    valid_metrics = next((h["metrics"] for h in state["history"] if h["step"] == state["best_step"]), {})
    results = {
        "valid": valid_metrics,
        "test": test_metrics,
        "baselines": baselines,
        "history": state["history"],  # every validation: step, seconds since this launch's first step, metrics
        "protocol": {
            "data": data.name,
            "ranking": "impressions" if data.is_impressions else "full catalogue",
            "items": len(data.items),
            "history_excluded": bool(args.exclude_history),
            "ties": "broken against the target",
            "best_step": state["best_step"],
            "steps": state["global_step"],
            "metric_for_best_model": args.metric_for_best_model,
        },
        "run": summary,
    }
    accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state["global_step"])
    if accelerator.is_main_process:
        save_model(best_model, tokenizer, output_dir)
        _write_json_atomic(output_dir / "metrics.json", results)
        tmp = output_dir / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(settings_dict(model_args, data_args, args), sort_keys=False))
        os.replace(tmp, output_dir / "config.yaml")
        shutil.rmtree(best_dir, ignore_errors=True)
        save_item_encoder(best_model, tokenizer, output_dir / ITEM_ENCODER_FOLDER)
        write_model_card(output_dir, args.hub_model_id)
        shown = {k: round(v, 4) for k, v in test_metrics.items() if isinstance(v, float)}
        logger.info("Test: %s", json.dumps(shown))
        if args.push_to_hub:
            try:
                logger.info("Pushed to the Hub: %s", push_to_hub(output_dir, args.hub_model_id, args.hub_private))
            except Exception as err:  # whatever failed, the trained model is saved: say how to push it again
                raise InputError(
                    f"push to {args.hub_model_id} failed ({type(err).__name__}: {str(err).strip().splitlines()[0]}); "
                    f"the model is saved in {output_dir}: push it with "
                    f"python -m recsys_bert.hub {output_dir} --hub_model_id {args.hub_model_id}"
                ) from None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def _check_metric_name(args: TrainingArguments, data: RecData) -> None:
    """Fails before training when `metric_for_best_model` is not a metric that validation reports."""
    if data.is_impressions:
        names = ["auc", "mrr", "ndcg@5", "ndcg@10"]
    else:
        names = [f"{m}@{k}" for k in args.eval_ks for m in ("ndcg", "recall", "precision", "mrr")] + ["mrr"]
    if args.metric_for_best_model not in names:
        raise InputError(f"metric_for_best_model: {args.metric_for_best_model!r} is not one of {', '.join(names)}")


def _validate(
    model, catalogue: Catalogue, accelerator: Accelerator, args: TrainingArguments, run_eval, valid_loader, state, step
) -> bool:
    """Validation metrics at `step`, recorded in `state`; True when they are the best so far."""
    unwrapped = accelerator.unwrap_model(model)
    with whole_parameters(model):
        item_vectors = catalogue.item_vectors(unwrapped, accelerator, args.per_device_eval_batch_size)
        metrics = run_eval(model_scorer(unwrapped, item_vectors, accelerator), valid_loader, "Validating")
    model.train()
    accelerator.log({f"valid/{k}": v for k, v in metrics.items()}, step=step)
    value = metrics[args.metric_for_best_model]
    state["history"].append({"step": step, "metrics": metrics})
    if state["best_metric"] is None or value > state["best_metric"]:
        state.update(best_metric=value, best_step=step, evals_without_improvement=0)
        logger.info("Step %d: valid %s = %.4f (best)", step, args.metric_for_best_model, value)
        return True
    state["evals_without_improvement"] += 1
    logger.info("Step %d: valid %s = %.4f (best %.4f at step %d)", step, args.metric_for_best_model, value,
                state["best_metric"], state["best_step"])  # fmt: skip
    return False


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> None:
    """`save_state` into a temporary folder, then renamed; `trainer_state.json` is written last, so a folder
    without it is incomplete and skipped on resume."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{state['global_step']}"
    tmp = output_dir / f".tmp-{CHECKPOINT_PREFIX}{state['global_step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its part (its RNG states) before the rename
    if accelerator.is_main_process:
        if (output_dir / "best_model").exists():  # the best model so far is part of the state to resume
            shutil.copytree(output_dir / "best_model", tmp / "best_model")
        _write_json_atomic(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        checkpoints = sorted(
            (p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.json").exists()),
            key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)),
        )
        for old in checkpoints[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _parameter_groups(model: RecsysBertModel, args: TrainingArguments) -> list[dict]:
    """Encoder layers at `encoder_learning_rate`, the new layers at `learning_rate`; no decay on biases and norms."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = args.encoder_learning_rate if name.startswith("encoder.") else args.learning_rate
        decay = 0.0 if param.dim() < 2 else args.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


@torch.no_grad()
def _zero_shot_item_vectors(model: RecsysBertModel, catalogue: Catalogue, accelerator: Accelerator, batch_size: int):
    """The untrained encoder's unit item vectors (pooling only, no projection): the zero-shot baseline."""
    was_training = model.training
    model.eval()

    def encode(**features):
        return torch.nn.functional.normalize(model.encode_texts(**features), dim=-1)  # (n, hidden)

    vectors = catalogue.encode(encode, accelerator, batch_size, "Zero-shot items")
    model.train(was_training)
    return vectors.to(accelerator.device)
