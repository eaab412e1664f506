"""Run by `tests/test_distributed.py` under `torchrun --nproc_per_node 2` (gloo, CPUs): the model sharded with FSDP2 as
`configs/accelerate/fsdp.yaml` shards it (each encoder layer on its own, then the root), against the same model whole.

Accelerate enables FSDP only on accelerators, so this applies torch's `fully_shard` itself; what it checks is the
project's side: evaluation and catalogue encoding under `whole_parameters`, before any training step (the zero-shot
baseline's case) and after one, the gathered state dict that `save_model` writes, and a training step through the
root after evaluation.

    torchrun --nproc_per_node 2 tests/fsdp_check.py ITEMS.csv LOG.csv TINY_ENCODER OUT.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_bert.arguments import DataArguments, TrainingArguments  # noqa: E402
from recsys_bert.catalogue import Catalogue  # noqa: E402
from recsys_bert.collators import EvalCollator, TrainCollator  # noqa: E402
from recsys_bert.data import load_data, tokenize_items  # noqa: E402
from recsys_bert.distributed import whole_parameters  # noqa: E402
from recsys_bert.evaluation import eval_loader, evaluate, model_scorer  # noqa: E402
from recsys_bert.losses import step_loss  # noqa: E402
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel  # noqa: E402


def main() -> None:
    items_csv, log_csv, encoder, out = sys.argv[1:5]
    accelerator = Accelerator(cpu=True)
    data = load_data(
        DataArguments(items=items_csv, interactions=log_csv, text_template="{title}. {genres}"), max_history=20
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder)
    catalogue = Catalogue.from_items(tokenize_items(data.items, tokenizer, 16), tokenizer.pad_token_id)
    config = RecsysBertConfig(encoder_name_or_path=encoder, finetune_layers=-1, projection_dim=32, max_history=20,
                              max_item_tokens=16, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    whole = RecsysBertModel.from_encoder(config).eval()
    sharded = copy.deepcopy(whole)
    wrapped = set(sharded._no_split_modules)  # what accelerate's TRANSFORMER_BASED_WRAP wraps: each encoder layer
    for layer in [module for module in sharded.modules() if type(module).__name__ in wrapped]:
        fully_shard(layer)
    fully_shard(sharded)
    loader = eval_loader(data.test, EvalCollator(config.max_history), 16, accelerator)

    def metrics(model, wrapped):
        with whole_parameters(wrapped):
            vectors = catalogue.item_vectors(model, accelerator, 32)  # (items, dim)
            return vectors, evaluate(model_scorer(model, vectors, accelerator), loader, accelerator, [10])

    results = {}
    # before any training step: the zero-shot baseline's situation (the encoder layers must not become the root)
    vectors_whole, metrics_whole = metrics(whole, whole)
    vectors_sharded, metrics_sharded = metrics(sharded, sharded)
    untrained_vectors = vectors_whole
    results["before"] = {
        "max_abs_diff": (vectors_whole - vectors_sharded).abs().max().item(),
        "metrics_equal": metrics_whole == metrics_sharded,
    }
    # one training step of each, through the root's forward, on the same batch
    rows = [data.train[i] for i in range(16)]
    batch = TrainCollator(catalogue, config, TrainingArguments(num_negatives=8)).collate_step(rows)
    counts = torch.as_tensor(data.train_item_counts, dtype=torch.float64) + 1.0
    for model in (whole, sharded):
        model.eval()  # gradients without dropout: both models take the very same step
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = step_loss(model, batch, config.score_temperature, (counts / counts.sum()).log().float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        results.setdefault("loss", []).append(loss.item())
    vectors_whole, metrics_whole = metrics(whole, whole)
    vectors_sharded, metrics_sharded = metrics(sharded, sharded)
    results["after"] = {
        "max_abs_diff": (vectors_whole - vectors_sharded).abs().max().item(),
        "metrics_whole": metrics_whole,
        "metrics_sharded": metrics_sharded,  # float noise of the sharded step can reorder a near tie
        "moved": (vectors_whole - untrained_vectors).abs().max().item(),  # the step did change the model
    }
    # the weights save_model writes: gathered from the shards, equal to the whole model's
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if accelerator.is_main_process:
        reference = whole.state_dict()
        results["state_dict_keys_equal"] = sorted(full) == sorted(reference)
        results["state_dict_max_abs_diff"] = max((full[k] - reference[k]).abs().max().item() for k in reference)
        results["processes"] = accelerator.num_processes
        results["sharded_parameter_type"] = type(next(sharded.parameters())).__name__
        Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
