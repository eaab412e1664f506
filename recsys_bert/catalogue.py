"""The item catalogue: every item's tokens (tokenized once), the cache of their frozen encoder states, and the
features of any set of items a batch needs."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from recsys_bert.modeling import RecsysBertModel
from recsys_bert.utils import atomic_path

logger = logging.getLogger(__name__)


class Catalogue:
    """All items' tokens as one padded array; rows are internal item indices.

    Args:
        input_ids: per item, its token ids (with special tokens, already truncated).
        pad_token_id: the tokenizer's padding id.
    """

    def __init__(self, input_ids: list[list[int]], pad_token_id: int):
        self.lengths = np.array([len(ids) for ids in input_ids], dtype=np.int64)  # (items,)
        width = int(self.lengths.max()) if len(input_ids) else 1
        self.input_ids = np.full((len(input_ids), width), pad_token_id, dtype=np.int32)  # (items, tokens)
        if len(input_ids):
            self.input_ids[np.arange(width)[None, :] < self.lengths[:, None]] = np.concatenate(input_ids)
        self.pad_token_id = pad_token_id
        self.frozen_states: torch.Tensor | None = None  # (items, hidden) or (items, tokens, hidden), on the CPU

    @classmethod
    def from_items(cls, items: datasets.Dataset, pad_token_id: int) -> Catalogue:
        """The catalogue of a tokenized item table (`tokenize_items`). For a table on disk, its tokens are padded
        chunk by chunk into a memory-mapped file beside the table's cache files, so they are never all in RAM."""
        column = items.data.column("input_ids")
        if not items.cache_files or items._indices is not None:
            return cls(column.to_pylist(), pad_token_id)
        lengths = pc.list_value_length(column).to_numpy().astype(np.int64)  # (items,)
        width = max(int(lengths.max()) if len(lengths) else 1, 1)
        folder = Path(items.cache_files[0]["filename"]).parent
        path = folder / f"padded-input-ids-{items._fingerprint}-{pad_token_id}.npy"
        if not path.is_file():
            with atomic_path(path) as tmp:  # processes building it at once write the same bytes
                padded = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int32, shape=(len(items), width))
                row = 0
                for chunk in column.chunks:  # (chunk items, width) at a time
                    block = np.full((len(chunk), width), pad_token_id, dtype=np.int32)
                    in_item = np.arange(width)[None, :] < lengths[row : row + len(chunk), None]
                    block[in_item] = chunk.flatten().to_numpy()
                    padded[row : row + len(chunk)] = block
                    row += len(chunk)
                padded.flush()
                del padded
        catalogue = cls([], pad_token_id)
        catalogue.lengths, catalogue.input_ids = lengths, np.load(path, mmap_mode="r")  # (items,), (items, tokens)
        return catalogue

    def __len__(self) -> int:
        return len(self.lengths)

    def tokens(self, item_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `attention_mask` `(len(item_ids), tokens)`, cut to the longest of these items."""
        width = int(self.lengths[item_ids].max()) if len(item_ids) else 1
        input_ids = torch.from_numpy(self.input_ids[item_ids, :width]).long()  # (n, width)
        attention_mask = (torch.arange(width)[None, :] < torch.from_numpy(self.lengths[item_ids])[:, None]).long()
        return input_ids, attention_mask

    def features(self, item_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """What `RecsysBertModel.encode_items` takes for these items: their tokens, and their cached frozen states
        when there are any."""
        input_ids, attention_mask = self.tokens(item_ids)  # (n, width)
        features = {"attention_mask": attention_mask, "input_ids": input_ids}
        if self.frozen_states is not None and self.frozen_states.dim() == 2:
            features["frozen_states"] = self.frozen_states[item_ids]  # (n, hidden)
        elif self.frozen_states is not None:
            features["frozen_states"] = self.frozen_states[item_ids, : input_ids.shape[1]]  # (n, width, hidden)
        return features

    def history_text_tokens(self, histories: list[np.ndarray], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The 'text' user tower's input: [CLS] text_1 [SEP] text_2 [SEP] ... most recent first, cut at max_tokens.

        Args:
            histories: per user, item ids most recent first.
        """
        cls, sep = self.input_ids[0, 0], self.input_ids[0, self.lengths[0] - 1]  # every item's first and last token
        rows = []
        for history in histories:
            pieces = [self.input_ids[item, 1 : self.lengths[item]] for item in history]  # each ends with [SEP]
            ids = np.concatenate([[cls], *pieces])[:max_tokens] if pieces else np.array([cls, sep])
            ids[-1] = sep
            rows.append(ids)
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (users, width)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.from_numpy(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask

    def length_sorted_batches(self, item_ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """`item_ids` in batches of similar length (little padding), longest first."""
        order = item_ids[np.argsort(-self.lengths[item_ids], kind="stable")]
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    @torch.no_grad()
    def compute_frozen_states(
        self, model: RecsysBertModel, accelerator: Accelerator, batch_size: int = 256, cache_dir: Path | None = None
    ) -> None:
        """Runs the model's frozen lower part once over every item (items split across processes) and keeps it.

        Args:
            cache_dir: where the pooled vectors of a wholly frozen encoder (`finetune_layers=0`) are also kept, under
                a key of the items' tokens, the encoder's weights and the device and precision that computed them, so
                that a later run on the same catalogue (another seed, another head) reads them instead.
        """
        self.frozen_states = None
        if model.config.finetune_layers < 0:
            return
        path = None
        if cache_dir is not None and model.config.finetune_layers == 0:
            path = Path(cache_dir) / f"{self._states_key(model, accelerator)}.safetensors"
        found = broadcast_object_list([path is not None and path.is_file()])[0]  # every process as the main one
        if found:
            self.frozen_states = load_file(path)["frozen_states"]
            logger.info("Frozen encoder vectors of %d items read from %s", len(self), path)
            return
        self.frozen_states = self.encode(model.frozen_states, accelerator, batch_size, "Caching frozen states")
        if path is not None and accelerator.is_main_process:
            with atomic_path(path) as tmp:
                save_file({"frozen_states": self.frozen_states.contiguous()}, tmp)

    def _states_key(self, model: RecsysBertModel, accelerator: Accelerator) -> str:
        """sha256 of what the frozen vectors depend on: tokens, encoder weights and config, pooling, device and
        precision. The config as JSON with sorted keys, so that a saved and reloaded model (an update's `init_from`,
        whose `id2label` keys came back as strings) finds the vectors of the model it was saved from."""
        digest = hashlib.sha256()
        settings = [model.config.pooling, json.loads(json.dumps(model.config.encoder, default=str)),
                    accelerator.device.type, str(accelerator.mixed_precision), list(self.input_ids.shape)]  # fmt: skip
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for start in range(0, len(self.input_ids), 100_000):  # a memory-mapped catalogue: 100,000 items at a time
            digest.update(np.ascontiguousarray(self.input_ids[start : start + 100_000]).tobytes())
        for name, tensor in model.encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:32]

    @torch.no_grad()
    def encode(self, fn, accelerator: Accelerator, batch_size: int = 256, description: str = "Encoding items"):
        """`fn(**features)` over every item in length-sorted batches, each process every `world`-th batch, gathered in
        item order. The batches are those of a single process, so the outputs don't depend on the number of processes.

        Args:
            fn: takes `attention_mask`, `input_ids` and, once cached, `frozen_states` (what `features` gives) and
                returns `(n, ...)` per-item outputs, e.g. `model.encode_items`.

        Returns:
            `(items, ...)` float32 on the CPU; 3-D outputs padded to the catalogue's token width.
        """
        world, rank = accelerator.num_processes, accelerator.process_index
        outputs, order = [], []
        batches = self.length_sorted_batches(np.arange(len(self)), batch_size)[rank::world]
        for item_ids in tqdm(batches, desc=description, disable=not accelerator.is_local_main_process, leave=False):
            features = {key: value.to(accelerator.device) for key, value in self.features(item_ids).items()}
            with accelerator.autocast():
                out = fn(**features).float()  # (n, hidden) or (n, width, hidden)
            if out.dim() == 3:  # pad to the catalogue's width so all batches stack
                out = torch.nn.functional.pad(out, (0, 0, 0, self.input_ids.shape[1] - out.shape[1]))
            outputs.append(out.cpu())
            order.append(torch.from_numpy(item_ids))
        if not outputs:  # more processes than items
            probe = fn(**{k: v.to(accelerator.device) for k, v in self.features(np.arange(1)).items()})
            outputs.append(probe.float().cpu()[:0])
            order.append(torch.empty(0, dtype=torch.long))
        local, local_ids = torch.cat(outputs), torch.cat(order)  # (mine, ...), (mine,)
        if world > 1:
            local = accelerator.pad_across_processes(local.to(accelerator.device), dim=0, pad_index=0)
            local_ids = accelerator.pad_across_processes(local_ids.to(accelerator.device), dim=0, pad_index=-1)
            local, local_ids = accelerator.gather(local).cpu(), accelerator.gather(local_ids).cpu()
        result = torch.empty((len(self), *local.shape[1:]), dtype=local.dtype)  # (items, ...)
        keep = local_ids >= 0
        result[local_ids[keep]] = local[keep]
        return result

    @torch.no_grad()
    def item_vectors(self, model: RecsysBertModel, accelerator: Accelerator, batch_size: int = 256) -> torch.Tensor:
        """Unit vectors `(items, dim)` of the whole catalogue (eval mode), on the accelerator's device."""
        was_training = model.training
        model.eval()
        vectors = self.encode(model.encode_items, accelerator, batch_size)
        model.train(was_training)
        return vectors.to(accelerator.device)
