"""Fine-tuning with Accelerate. `Trainer` runs the loop in the order of accelerate's `gradient_accumulation.py`
example (data mapped on the main process first, `prepare`, steps counted after `prepare` on `sync_gradients`, tqdm on
the local main process, `gather_for_metrics` in evaluation), validates, keeps the best model, checkpoints, stops
cleanly on a signal, and writes the output folder (model, metrics, config, model card, item tower).

Its state between steps is a `TrainerState`, saved in every checkpoint, so a resumed run continues exactly where the
interrupted one was.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, send_to_device, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_scheduler

from recsys_bert.arguments import DataArguments, ModelArguments, TrainingArguments, settings_dict
from recsys_bert.catalogue import Catalogue
from recsys_bert.checkpoints import (
    BEST_MODEL_FOLDER,
    CHECKPOINT_PREFIX,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from recsys_bert.cli import configure_logging
from recsys_bert.collators import EvalCollator, TrainCollator
from recsys_bert.data import RecData, default_template, format_skipped, load_data, tokenize_items
from recsys_bert.data.cache import cache_root
from recsys_bert.data.splits import parse_time
from recsys_bert.distributed import any_process, has_accelerator, whole_parameters
from recsys_bert.encoders import default_encoder_path
from recsys_bert.evaluation import (
    PROTOCOLS,
    eval_loader,
    evaluate,
    mean_history_scorer,
    model_scorer,
    popularity_scorer,
    protocol,
)
from recsys_bert.hub import ITEM_ENCODER_FOLDER, public_name, push_to_hub, save_item_encoder, write_model_card
from recsys_bert.losses import step_loss
from recsys_bert.metrics import ItemStatistics, paired_bootstrap, per_user, ranking_metrics
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel, load_model, save_model
from recsys_bert.utils import InputError, Interrupted, one_line, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
# the zero-shot mean's recency decays tried on valid (0: the last item alone)
ZERO_SHOT_DECAYS = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0)
# the text skip's weights tried on valid after training (`text_skip_weight` -1), the first of equals kept
TEXT_SKIP_WEIGHTS = (0.0, 0.125, 0.25, 0.5, 1.0)


@dataclass
class TrainerState:
    """What a run has done so far; `trainer_state.json` of every checkpoint."""

    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)  # every validation: step, metrics, seconds since the launch


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


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Loads the data, fine-tunes, evaluates and saves; returns what is written to `metrics.json`."""
    return Trainer(model_args, data_args, args).train()


class Trainer:
    """One training run: set up in `__init__` (data, model, the prepared loaders, optimizer and schedule), run by
    `train`."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments):
        self.output_dir = Path(args.output_dir)
        check_output_dir(self.output_dir)
        if args.push_to_hub and not args.hub_model_id:
            raise InputError("push_to_hub: set hub_model_id (e.g. me/recsys-bert-movielens)")
        self.accelerator = accelerator = Accelerator(
            cpu=not has_accelerator(),  # so that torchrun on CPUs starts a gloo process group
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        configure_logging(accelerator)
        args = dataclasses.replace(args, mixed_precision=accelerator.mixed_precision)  # recorded as run, not as asked
        if data_args.data_format == "generic" and data_args.items and not data_args.text_template:
            template = default_template(data_args.items, data_args.item_id_column)
            data_args = dataclasses.replace(data_args, text_template=template)  # config.yaml says which
            if accelerator.is_main_process:
                logger.info("text_template not set: %r (every column of %s but the id)", template, data_args.items)
        self.model_args, self.data_args, self.args = model_args, data_args, args
        set_seed(args.seed)
        start = time.perf_counter()

        # ---- the model to continue from (init_from): its architecture, weights and tokenizer ----
        initial = None
        if args.init_from:
            initial, self.tokenizer = load_model(args.init_from)
            self.model_args = model_args = loaded_model_args(initial.config, model_args, args.init_from)
        else:
            self.tokenizer = load_tokenizer(model_args.encoder_name_or_path or default_encoder_path())

        # ---- data: loaded and tokenized once, by the main process first (the others read its cache) ----
        with accelerator.main_process_first():
            self.data = data = load_data(data_args, max_history=model_args.max_history, seed=args.seed)
            items = tokenize_items(data.items, self.tokenizer, model_args.max_item_tokens)
        if accelerator.is_main_process:
            logger.info("Skipped while loading %s: %s", data.name, format_skipped(data.skipped).replace("\n", "; "))
        _check_metric_name(args, data)
        if len(data.train) == 0:
            raise InputError(f"{data.name}: no training rows (see what was skipped above); nothing to train on")
        self.catalogue = Catalogue.from_items(items, self.tokenizer.pad_token_id)

        # the head trains without the text skip; the skip is added after training (`_text_skip`)
        self.text_skip_weight = model_args.text_skip_weight
        if self.text_skip_weight < 0 and self.text_skip_weight != -1:
            raise InputError(f"text_skip_weight: {self.text_skip_weight} is negative (-1: chosen on valid)")
        if initial is None:
            self.config = config = RecsysBertConfig(**{**vars(model_args), "text_skip_weight": 0.0})
            model = RecsysBertModel.from_encoder(config).to(accelerator.device)
        else:  # the saved model says what it was updated from, a chain of updates in order
            self.config = config = initial.config
            record = update_record(args.init_from, initial, data, data_args)
            config.updated_from = [*(config.updated_from or []), record]
            config.text_skip_weight = 0.0
            initial.set_trainable()  # from_pretrained leaves every parameter trainable
            model = initial.to(accelerator.device)
        if len(data.valid) == 0 and accelerator.is_main_process:
            logger.info("No validation rows (valid_since = test_since): the model after the last step is kept")
        self.catalogue.compute_frozen_states(
            model, accelerator, args.per_device_eval_batch_size, cache_dir=cache_root() / "frozen-states"
        )

        # ---- prepare, then the number of steps of the sharded loader, then the schedule ----
        self.collator = TrainCollator(self.catalogue, config, args, data.held_out_items)
        train_loader = DataLoader(
            data.train,
            batch_size=args.per_device_train_batch_size,
            shuffle=True,
            collate_fn=self.collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )
        optimizer = torch.optim.AdamW(parameter_groups(model, args), lr=args.learning_rate)
        # the loader's batches stay on the CPU: the step's negatives and unique items are gathered there
        self.model, self.optimizer, self.train_loader = accelerator.prepare(
            model, optimizer, train_loader, device_placement=[True, True, False]
        )
        # Accelerate also steps on an epoch's last, partial window of micro-batches
        self.steps_per_epoch = max(1, math.ceil(len(self.train_loader) / args.gradient_accumulation_steps))
        self.max_steps = (
            args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * self.steps_per_epoch)
        )
        # eval_steps -1: validate about once per epoch (and at the end), whatever the data's size
        self.eval_steps = args.eval_steps if args.eval_steps >= 0 else self.steps_per_epoch
        scheduler = get_scheduler(
            args.lr_scheduler_type,
            self.optimizer,  # the prepared scheduler steps once per process per step
            num_warmup_steps=int(args.warmup_ratio * self.max_steps) * accelerator.num_processes,
            num_training_steps=self.max_steps * accelerator.num_processes,
        )
        self.scheduler = accelerator.prepare(scheduler)
        eval_collator = EvalCollator(
            config.max_history,
            catalogue=self.catalogue if config.user_tower == "text" else None,
            max_user_tokens=config.max_user_tokens,
        )
        batch_size = args.per_device_eval_batch_size
        self.valid_loader = eval_loader(data.valid, eval_collator, batch_size, accelerator)
        self.test_loader = eval_loader(data.test, eval_collator, batch_size, accelerator)
        self.summary = self._summary(start)
        self.state = TrainerState()
        self.baseline_ranks: dict[str, dict] = {}
        self.item_statistics: ItemStatistics | None = None  # full ranking: set by `train`, before any evaluation

    def _summary(self, start: float) -> dict:
        """The run's size and setting, logged at the start and written to `metrics.json`."""
        unwrapped, args, data = self.accelerator.unwrap_model(self.model), self.args, self.data
        return {
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
            * self.accelerator.num_processes
            * args.gradient_accumulation_steps,
            "max_steps": self.max_steps,
            "eval_steps": self.eval_steps,
            "max_train_minutes": args.max_train_minutes,
            "processes": self.accelerator.num_processes,
            "distributed_type": self.accelerator.distributed_type.value,
            "mixed_precision": self.accelerator.mixed_precision,
            "setup_seconds": round(time.perf_counter() - start, 1),
        }

    def _evaluate(self, scorer, loader, description: str) -> tuple[dict, dict]:
        """Both protocols' metrics (MIND: impression metrics) and their per-user target ranks."""
        return evaluate(scorer, loader, self.accelerator, self.args.eval_ks, description, return_ranks=True,
                        items=self.item_statistics)  # fmt: skip

    def _selected(self, metrics: dict) -> dict:
        """The metrics of the protocol that chooses the best model (`exclude_history`)."""
        return metrics if self.data.is_impressions else metrics[protocol(self.args.exclude_history)]

    def _log_metrics(self, split: str, metrics: dict, step: int) -> None:
        if self.data.is_impressions:
            self.accelerator.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)
        else:
            flat = {}
            for name in PROTOCOLS:
                values = dict(metrics[name])
                values |= values.pop("beyond_accuracy", {})  # TensorBoard takes scalars
                flat |= {f"{split}/{name}/{k}": v for k, v in values.items()}
            self.accelerator.log(flat, step=step)

    # ---- the run ----

    def train(self) -> dict:
        accelerator, args = self.accelerator, self.args
        if accelerator.is_main_process:
            logger.info("Run: %s", json.dumps(self.summary, ensure_ascii=False))
        scalars = (int, float, str, bool)
        settings = settings_dict(self.model_args, self.data_args, args)
        accelerator.init_trackers("train", config={k: v for k, v in settings.items() if isinstance(v, scalars)})
        # the untrained encoder's item vectors: the zero-shot baseline's, and the ruler of every list's diversity
        vectors = self._zero_shot_vectors() if args.run_baselines or not self.data.is_impressions else None
        if not self.data.is_impressions:  # impressions have no top-K lists
            self.item_statistics = item_statistics(self.data, self.data_args, vectors)
        skip_decay_unset = self.text_skip_weight != 0 and self.config.text_skip_decay is None
        decay = self._zero_shot_decay(vectors) if args.run_baselines or skip_decay_unset else 1.0
        if skip_decay_unset:  # the text skip's history mean weighs the history as the best zero-shot mean does
            self.config.text_skip_decay = decay
        baselines = self._baselines(vectors, decay) if args.run_baselines else {}
        if args.resume_from_checkpoint:
            self._resume(args.resume_from_checkpoint)
        loop_start = time.perf_counter()
        self._loop(loop_start)
        self.summary["train_seconds"] = round(time.perf_counter() - loop_start, 1)  # steps and validations
        return self._finish(baselines)

    def _zero_shot_vectors(self) -> torch.Tensor:
        accelerator = self.accelerator
        with whole_parameters(self.model):
            return zero_shot_item_vectors(
                accelerator.unwrap_model(self.model), self.catalogue, accelerator, self.args.per_device_eval_batch_size
            )

    def _baselines(self, vectors: torch.Tensor, decay: float) -> dict:
        """Popularity and the untrained encoder (zero-shot: user = recency-weighted mean of the history's item
        `vectors`, the `decay` chosen on valid) on test, in both protocols, as the model is; their per-user ranks
        kept for the paired comparison with the model."""
        data, accelerator = self.data, self.accelerator
        popularity = popularity_scorer(data.item_counts_before("test"), accelerator.device)  # valid is known too
        baselines = {}
        for name, scorer in (("popularity", popularity), ("zero_shot", mean_history_scorer(vectors, decay))):
            baselines[name], self.baseline_ranks[name] = self._evaluate(scorer, self.test_loader, name)
        baselines["zero_shot"]["decay"] = decay
        return baselines

    def _zero_shot_decay(self, vectors: torch.Tensor) -> float:
        """The zero-shot mean's recency decay with the best valid `metric_for_best_model` (1 = the plain mean)."""
        if self.data.is_impressions or not len(self.data.valid):
            return 1.0
        found = {}
        for decay in ZERO_SHOT_DECAYS:
            scorer = mean_history_scorer(vectors, decay)
            metrics = evaluate(scorer, self.valid_loader, self.accelerator, self.args.eval_ks, f"zero-shot {decay}")
            found[decay] = self._selected(metrics)[self.args.metric_for_best_model]
        logger.info(
            "Zero-shot recency decay on valid: %s", json.dumps({str(d): round(v, 4) for d, v in found.items()})
        )
        return max(found, key=found.get)

    def _resume(self, which: str) -> None:
        checkpoint = find_checkpoint(self.output_dir, which)
        if checkpoint is None:
            logger.info("No complete checkpoint in %s: starting from scratch", self.output_dir)
            return
        self.state = TrainerState(**load_checkpoint(self.accelerator, checkpoint, self.output_dir))
        logger.info("Resumed from %s at step %d", checkpoint, self.state.global_step)

    def _loop(self, loop_start: float) -> None:
        accelerator, args, state = self.accelerator, self.args, self.state
        counts = torch.as_tensor(self.data.train_item_counts, dtype=torch.float64) + 1.0  # +1: items never a target
        if self.data.held_out_items is not None:
            counts[torch.as_tensor(self.data.held_out_items)] = 0.0  # never a candidate: log 0 = -inf
        self.item_log_frequency = None
        if args.logq_correction:
            self.item_log_frequency = (counts / counts.sum()).log().float().to(accelerator.device)  # (items,)
        self.progress = tqdm(total=self.max_steps, initial=state.global_step, desc="Training",
                             disable=not accelerator.is_local_main_process)  # fmt: skip
        self.window = {"loss": torch.zeros((), device=accelerator.device), "batches": 0, "samples": 0,
                       "start": time.perf_counter()}  # fmt: skip
        first_epoch = state.global_step // self.steps_per_epoch
        num_epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        stop = state.global_step >= self.max_steps
        with StopRequest() as stop_request:
            for epoch in range(first_epoch, num_epochs):
                if stop:
                    break
                self.model.train()
                self.train_loader.set_epoch(epoch)
                skip = (state.global_step - epoch * self.steps_per_epoch) * args.gradient_accumulation_steps
                loader = accelerator.skip_first_batches(self.train_loader, skip) if skip > 0 else self.train_loader
                for micro_step, batch in enumerate(loader, start=skip):
                    # dropout masks depend only on (seed, process, epoch, micro-step): a resumed run draws the same
                    torch.manual_seed(hash((args.seed, accelerator.process_index, epoch, micro_step)) % 2**63)
                    self._micro_step(batch, epoch, micro_step)
                    if not accelerator.sync_gradients:
                        continue
                    state.global_step += 1
                    self.progress.update(1)
                    stop = self._after_step(state.global_step, loop_start)
                    # after the step's validation and checkpoint: a signal on an evaluation step keeps it
                    if stop_request.requested(accelerator):
                        self._stop(stop_request.signum or signal.SIGTERM)
                    if stop:
                        break
        self.progress.close()

    def _micro_step(self, batch: dict, epoch: int, micro_step: int) -> None:
        accelerator, args = self.accelerator, self.args
        first_row = accelerator.process_index * len(batch["positive_ids"])  # this process's rows in the global batch
        negatives = self.collator.negatives(batch, epoch, micro_step, first_row)
        batch = send_to_device(self.collator.step_inputs(batch, negatives), accelerator.device, non_blocking=True)
        with accelerator.accumulate(self.model):
            negatives = {"in_batch": args.in_batch_negatives, "impressions": self.data.is_impressions}
            temperature = self.config.score_temperature
            loss = step_loss(self.model, batch, temperature, self.item_log_frequency, **negatives)
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        self.window["loss"] += loss.detach()
        self.window["batches"] += 1
        self.window["samples"] += len(batch["positive_ids"])

    def _after_step(self, step: int, loop_start: float) -> bool:
        """Logging, validation and checkpoint after optimizer step `step`; True when training should stop."""
        accelerator, args, state = self.accelerator, self.args, self.state
        if step % args.logging_steps == 0 or step == self.max_steps:
            self._log(step)
        out_of_time = args.max_train_minutes > 0 and any_process(
            accelerator, time.perf_counter() - loop_start >= 60 * args.max_train_minutes
        )
        if out_of_time:
            logger.info("Time budget of %s minutes spent at step %d", args.max_train_minutes, step)
        stop = step >= self.max_steps or out_of_time
        if ((self.eval_steps > 0 and step % self.eval_steps == 0) or stop) and len(self.data.valid):
            self._validate(step, loop_start)
            patience = args.early_stopping_patience
            if patience and state.evals_without_improvement >= patience:
                logger.info("Early stopping at step %d (best at step %s)", step, state.best_step)
                stop = True
        if args.save_steps > 0 and step % args.save_steps == 0:
            self._checkpoint()
        return stop

    def _log(self, step: int) -> None:
        accelerator, window = self.accelerator, self.window
        elapsed = time.perf_counter() - window["start"]
        logs = {
            "train/loss": accelerator.reduce(window["loss"], reduction="mean").item() / window["batches"],
            "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/samples_per_second": window["samples"] * accelerator.num_processes / max(elapsed, 1e-9),
            "train/epoch": step / self.steps_per_epoch,
        }
        accelerator.log(logs, step=step)
        self.progress.set_postfix(loss=f"{logs['train/loss']:.4f}")
        window["loss"].zero_()
        window.update(batches=0, samples=0, start=time.perf_counter())

    def _stop(self, signum: int) -> None:
        """A signal arrived: checkpoint (unless this step wrote one) and stop with `Interrupted`."""
        if not (self.args.save_steps > 0 and self.state.global_step % self.args.save_steps == 0):
            self._checkpoint()
        self.progress.close()
        step = self.state.global_step
        raise Interrupted(
            f"stopped by {signal.Signals(signum).name} at step {step}: checkpoint saved in "
            f"{self.output_dir / f'{CHECKPOINT_PREFIX}{step}'}; continue with --resume_from_checkpoint latest",
            128 + signum,
        )

    def _checkpoint(self) -> None:
        state = dataclasses.asdict(self.state)
        save_checkpoint(self.accelerator, self.output_dir, self.state.global_step, state, self.args.save_total_limit)

    def _validate(self, step: int, loop_start: float) -> None:
        """Validation metrics at `step`, recorded in the state; the best model so far saved to `best_model/`."""
        accelerator, args, state = self.accelerator, self.args, self.state
        unwrapped = accelerator.unwrap_model(self.model)
        with whole_parameters(self.model):
            item_vectors = self.catalogue.item_vectors(unwrapped, accelerator, args.per_device_eval_batch_size)
            metrics, _ = self._evaluate(model_scorer(unwrapped, item_vectors, accelerator), self.valid_loader,
                                        "Validating")  # fmt: skip
        self.model.train()
        self._log_metrics("valid", metrics, step)
        value = self._selected(metrics)[args.metric_for_best_model]
        state.history.append({"step": step, "metrics": metrics, "seconds": round(time.perf_counter() - loop_start, 1)})
        if state.best_metric is not None and value <= state.best_metric:
            state.evals_without_improvement += 1
            logger.info("Step %d: valid %s = %.4f (best %.4f at step %d)", step, args.metric_for_best_model, value,
                        state.best_metric, state.best_step)  # fmt: skip
            return
        state.best_metric, state.best_step, state.evals_without_improvement = value, step, 0
        logger.info("Step %d: valid %s = %.4f (best)", step, args.metric_for_best_model, value)
        state_dict = accelerator.get_state_dict(self.model)  # every process: FSDP gathers its shards
        if accelerator.is_main_process:
            save_model(unwrapped, self.tokenizer, self.output_dir / BEST_MODEL_FOLDER, state_dict)
        accelerator.wait_for_everyone()

    def _finish(self, baselines: dict) -> dict:
        """The best model on test, in a plain model (not sharded by FSDP); everything written atomically."""
        accelerator, args, state, output_dir = self.accelerator, self.args, self.state, self.output_dir
        best_dir = output_dir / BEST_MODEL_FOLDER
        best_weights = best_dir / "model.safetensors"
        state_dict = load_file(best_weights) if best_weights.exists() else accelerator.get_state_dict(self.model)
        best_model = RecsysBertModel(self.config)
        best_model.load_state_dict(state_dict)
        # what config.json publishes: a local encoder folder by its name (the encoder itself is in the weights)
        best_model.config.encoder_name_or_path = public_name(self.config.encoder_name_or_path)
        best_model.to(accelerator.device)
        valid_metrics = next((h["metrics"] for h in state.history if h["step"] == state.best_step), {})
        text_skip, item_vectors = self._text_skip(best_model, valid_metrics)
        valid_metrics = text_skip.pop("valid_metrics")  # the saved model's: with its text skip
        scorer = model_scorer(best_model, item_vectors, accelerator)
        test_metrics, test_ranks = self._evaluate(scorer, self.test_loader, "Test")
        results = {
            "valid": valid_metrics,
            "text_skip": text_skip,
            "test": test_metrics,
            "baselines": baselines,
            "comparisons": self._comparisons(test_ranks),
            **({"test_cold_items": self._cold_items(test_ranks)} if self.data.held_out_items is not None else {}),
            "history": state.history,  # every validation: step, seconds since this launch's first step, metrics
            "protocol": {
                "data": self.data.name,
                "ranking": "impressions" if self.data.is_impressions else "full catalogue",
                "items": len(self.data.items),
                "history_excluded": bool(args.exclude_history),  # the protocol that chose the best model
                "ties": "broken against the target",
                "best_step": state.best_step,
                "steps": state.global_step,
                "metric_for_best_model": args.metric_for_best_model,
            },
            "run": self.summary,
        }
        self._log_metrics("test", test_metrics, state.global_step)
        if accelerator.is_main_process:
            save_model(best_model, self.tokenizer, output_dir)
            write_json_atomic(output_dir / "metrics.json", results)
            if test_ranks:  # per-user target ranks (not MIND), for paired comparisons with peers run elsewhere
                write_json_atomic(output_dir / "test_ranks.json", self._ranks_record(test_ranks))
            settings = settings_dict(self.model_args, self.data_args, args)
            config_yaml = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)
            write_text_atomic(output_dir / "config.yaml", config_yaml)
            shutil.rmtree(best_dir, ignore_errors=True)
            save_item_encoder(best_model, self.tokenizer, output_dir / ITEM_ENCODER_FOLDER)
            write_model_card(output_dir, args.hub_model_id)
            for name, metrics in [("", test_metrics)] if self.data.is_impressions else test_metrics.items():
                shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
                logger.info("Test%s: %s", f" ({name.replace('_', ' ')})" if name else "", json.dumps(shown))
            if args.push_to_hub:
                self._push()
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return results

    def _text_skip(self, model: RecsysBertModel, head_valid: dict) -> tuple[dict, torch.Tensor]:
        """Adds the text skip to the trained `model` (its config): the asked weight, or with -1 the one of
        `TEXT_SKIP_WEIGHTS` with the best valid `metric_for_best_model` (`head_valid`: the head's own metrics, at
        weight 0). Returns what `metrics.json` records, with the valid metrics at the weight (`valid_metrics`), and
        the catalogue's item vectors at the weight. The catalogue is encoded once: a weight only scales the skip
        part."""
        args, asked = self.args, self.text_skip_weight
        model.config.text_skip_weight = 1.0
        full = self.catalogue.item_vectors(model, self.accelerator, args.per_device_eval_batch_size)  # (items, d + h)
        head_width = full.shape[1] - model.encoder.config.hidden_size

        def vectors_at(weight: float) -> torch.Tensor:
            return torch.cat([full[:, :head_width], weight**0.5 * full[:, head_width:]], dim=1) if weight else (
                full[:, :head_width])  # fmt: skip

        can_validate = bool(len(self.data.valid) and head_valid)
        found, metrics_of = {}, {0.0: head_valid}
        if asked < 0 and can_validate:
            found[0.0] = self._selected(head_valid)[args.metric_for_best_model]
        for weight in (TEXT_SKIP_WEIGHTS[1:] if asked < 0 else [asked] if asked > 0 else []) if can_validate else []:
            model.config.text_skip_weight = weight
            scorer = model_scorer(model, vectors_at(weight), self.accelerator)
            metrics_of[weight], _ = self._evaluate(scorer, self.valid_loader, f"Text skip {weight}")
            found[weight] = self._selected(metrics_of[weight])[args.metric_for_best_model]
        # the first of equals, the smaller weight; -1 with no validation to choose on: no skip
        weight = (max(found, key=found.get) if found else 0.0) if asked < 0 else asked
        model.config.text_skip_weight = self.config.text_skip_weight = weight
        if not weight:
            model.config.text_skip_decay = self.config.text_skip_decay = None
        if self.accelerator.is_main_process:
            shown = json.dumps({str(w): round(v, 4) for w, v in found.items()})
            logger.info("Text skip: weight %g, recency decay %s (valid %s by weight: %s)", weight,
                        model.config.text_skip_decay, args.metric_for_best_model, shown)  # fmt: skip
        record = {"weight": weight, "decay": model.config.text_skip_decay, "valid_by_weight": found,
                  "valid_metrics": metrics_of.get(weight, {})}  # fmt: skip
        return record, vectors_at(weight)

    def _cold_items(self, test_ranks: dict) -> dict:
        """Test on the users whose target was held out of training (`cold_item_fraction`), the model's and the
        baselines' metrics in both protocols."""
        targets = self.data.test.data.column("target").to_numpy()
        cold = np.isin(targets, self.data.held_out_items)  # (test users,)

        def subset(ranks: dict) -> dict:
            return {name: ranking_metrics(values[cold], self.args.eval_ks) for name, values in ranks.items()}

        found = {"items": len(self.data.held_out_items), "users": int(cold.sum())}
        if cold.any():
            baselines = {name: subset(ranks) for name, ranks in self.baseline_ranks.items() if ranks}
            found |= {**subset(test_ranks), "baselines": baselines}
        return found

    def _ranks_record(self, test_ranks: dict) -> dict:
        """`test_ranks.json`: each test user's target rank in both protocols, the model's and the baselines', in the
        order of `user_id`."""

        def lists(ranks: dict) -> dict:
            return {name: values.tolist() for name, values in ranks.items()}

        baselines = {name: lists(ranks) for name, ranks in self.baseline_ranks.items() if ranks}
        return {"user_id": list(self.data.test["user_id"]), **lists(test_ranks), "baselines": baselines}

    def _comparisons(self, test_ranks: dict) -> dict:
        """The model against each baseline on the same test users: the mean per-user difference of
        `metric_for_best_model` and its paired bootstrap 95% interval, in both protocols."""
        metric = self.args.metric_for_best_model
        return {
            baseline: {
                name: {"metric": metric, **paired_bootstrap(per_user(test_ranks[name], metric),
                                                            per_user(ranks[name], metric), seed=self.args.seed)}
                for name in PROTOCOLS
            }
            for baseline, ranks in self.baseline_ranks.items()
            if ranks  # MIND's impressions: no per-user ranks
        }  # fmt: skip

    def _push(self) -> None:
        args, output_dir = self.args, self.output_dir
        try:
            logger.info("Pushed to the Hub: %s", push_to_hub(output_dir, args.hub_model_id, args.hub_private))
        except Exception as err:  # whatever failed, the trained model is saved: say how to push it again
            raise InputError(
                f"push to {args.hub_model_id} failed ({type(err).__name__}: {one_line(err)}); the model is saved in "
                f"{output_dir}: push it with python -m recsys_bert.hub {output_dir} --hub_model_id {args.hub_model_id}"
            ) from None


def loaded_model_args(config: RecsysBertConfig, model_args: ModelArguments, source: str) -> ModelArguments:
    """The `ModelArguments` of a model to continue from (`init_from`). A setting given with another value than its
    default and the model's own is an error: the architecture is the model's."""
    defaults, conflicts = ModelArguments(), []
    for f in dataclasses.fields(ModelArguments):
        given, own = getattr(model_args, f.name), getattr(config, f.name)
        if f.name == "encoder_name_or_path":  # saved models keep a local encoder folder by its name
            given = public_name(given)
        if given != getattr(defaults, f.name) and given != own:
            conflicts.append(f"{f.name} {given!r} (the model's: {own!r})")
    if conflicts:
        raise InputError(
            f"init_from {source}: the architecture is the model's own; drop or match: {'; '.join(conflicts)}"
        )
    return ModelArguments(**{f.name: getattr(config, f.name) for f in dataclasses.fields(ModelArguments)})


def update_record(source: str, model: RecsysBertModel, data: RecData, data_args: DataArguments) -> dict:
    """What an update (`init_from`) continued from, for the saved config's `updated_from`: the model's public name
    (a local folder's last part), its revision (the Hub commit, else a short sha256 of the weights) and the period
    of the new training targets, [first, last] as ISO dates (None where the data has no times)."""
    revision = getattr(model.config, "_commit_hash", None)  # set by from_pretrained for a Hub model
    if revision is None:
        digest = hashlib.sha256()
        for path in sorted(Path(source).glob("model*.safetensors")):
            with open(path, "rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
        revision = f"sha256:{digest.hexdigest()[:16]}"
    period = None
    if "timestamp" in data.train.column_names:
        times = data.train.data.column("timestamp").to_numpy()
        if data_args.train_since is not None:  # the new targets, not the replayed ones
            times = times[times >= parse_time(data_args.train_since, "train_since")]
        if len(times):
            period = [iso_date(times.min()), iso_date(times.max())]
    record = {"model": public_name(source), "revision": revision, "data_period": period}
    return record | ({"replay_fraction": data_args.replay_fraction} if data_args.replay_fraction else {})


def iso_date(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).date().isoformat()


def load_tokenizer(name_or_path: str):
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{name_or_path}: can't load a tokenizer from it ({one_line(err)})") from None


def check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise InputError(f"{output_dir}: output folder can't be written ({err.strerror})") from None


def _check_metric_name(args: TrainingArguments, data: RecData) -> None:
    """Fails before training when `metric_for_best_model` is not a metric that validation reports."""
    if data.is_impressions:
        names = ["auc", "mrr", "ndcg@5", "ndcg@10"]
    else:
        names = [f"{m}@{k}" for k in args.eval_ks for m in ("ndcg", "recall", "precision", "mrr")] + ["mrr"]
    if args.metric_for_best_model not in names:
        raise InputError(f"metric_for_best_model: {args.metric_for_best_model!r} is not one of {', '.join(names)}")


def parameter_groups(model: RecsysBertModel, args: TrainingArguments) -> list[dict]:
    """Encoder layers at `encoder_learning_rate`, the new layers at `learning_rate`; no decay on biases and norms."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = args.encoder_learning_rate if name.startswith("encoder.") else args.learning_rate
        decay = 0.0 if param.dim() < 2 else args.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def item_statistics(data: RecData, data_args: DataArguments, vectors: torch.Tensor) -> ItemStatistics:
    """What the beyond-accuracy metrics of every evaluation measure against: training counts and users per item,
    the zero-shot `vectors` (one ruler of diversity for the model and every baseline), the categories."""
    users, num_users = training_item_users(data)
    categories = item_categories(data_args, data.items.data.table.column("item_id").to_numpy())
    vectors = vectors.float().cpu().numpy()
    return ItemStatistics(data.train_item_counts, users, num_users, vectors, categories)


def training_item_users(data: RecData) -> tuple[np.ndarray, int]:
    """How many distinct users interacted with each item in training `(items,)`, and how many users have a
    training interaction: every training row's history and target, and every valid row's history (all training
    interactions of its user, for users without a training row too)."""
    num_items = len(data.items)
    users, items = [], []
    for table in (data.train.data.table, data.valid.data.table):
        row_users = table.column("user_id").to_numpy()
        lengths = pc.list_value_length(table.column("history")).to_numpy()
        users.append(np.repeat(row_users, lengths))
        items.append(pc.list_flatten(table.column("history")).to_numpy())
        if table is data.train.data.table:
            users.append(row_users)
            items.append(table.column("target").to_numpy())
    codes = pd.factorize(np.concatenate(users))[0]
    pairs = np.unique(codes.astype(np.int64) * num_items + np.concatenate(items).astype(np.int64))  # (user, item)
    return np.bincount(pairs % num_items, minlength=num_items), len(np.unique(pairs // num_items))


def item_categories(data_args: DataArguments, item_ids: np.ndarray) -> np.ndarray | None:
    """p(category | item) `(items, categories)` for calibration: MovieLens' genres (movies.csv), an item's genres
    weighted equally as in Steck 2018, a movie without genres a row of zeros. None for the other sources: Amazon's
    category paths are part of the item text, not a field of their own (not guessed), MIND has no top-K lists."""
    if data_args.data_format != "movielens":
        return None
    movies = pd.read_csv(Path(data_args.data_dir) / "movies.csv", dtype=str, keep_default_na=False)
    movies = movies.assign(movieId=movies["movieId"].str.strip()).drop_duplicates("movieId")  # the first, as loaded
    genres = movies.assign(genre=movies["genres"].str.strip().str.split("|")).explode("genre")
    genres = genres[~genres["genre"].isin(["", "(no genres listed)"])]
    rows = pd.Index(item_ids).get_indexer(genres["movieId"])
    columns, _ = pd.factorize(genres["genre"])
    categories = np.zeros((len(item_ids), columns.max(initial=-1) + 1))
    categories[rows[rows >= 0], columns[rows >= 0]] = 1.0
    total = categories.sum(axis=1, keepdims=True)
    return np.divide(categories, total, out=categories, where=total > 0)


@torch.no_grad()
def zero_shot_item_vectors(model: RecsysBertModel, catalogue: Catalogue, accelerator: Accelerator, batch_size: int):
    """The untrained encoder's unit item vectors (pooling only, no projection): the zero-shot baseline."""
    was_training = model.training
    model.eval()

    def encode(**features):
        return torch.nn.functional.normalize(model.encode_texts(**features), dim=-1)  # (n, hidden)

    vectors = catalogue.encode(encode, accelerator, batch_size, "Zero-shot items")
    model.train(was_training)
    return vectors.to(accelerator.device)
