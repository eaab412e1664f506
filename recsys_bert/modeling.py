"""The recommender: one text encoder embeds item texts; a user tower turns a history into a vector.

API split the way training, evaluation and serving need it:
- `encode_items`: item tokens (or their cached frozen states) -> item vectors.
- `encode_users`: history item vectors ('attention' tower) or the history's concatenated tokens ('text' tower)
  -> user vectors.
- `score`: (dot(user, item) + repeat bias if the item is in the user's history) / score_temperature, the logits of
  the softmax over candidates.

The text skip (`text_skip_weight` β > 0) adds to the trained score β times the untrained-style one: the cosine of the
item's pooled encoder output with the recency-weighted mean (`text_skip_decay`) of the history's. Both parts live in
one vector, `[unit head vector, √β · unit pooled vector]` for items and `[unit user vector, √β · mean of the history's
pooled parts]` for users, so a single dot product scores both (ranking, caches and indexes are unchanged). The
trainer adds it after training (the head trains alone): an ensemble of the trained and the untrained view.

`finetune_layers` splits the encoder (`recsys_bert.encoders`) into a frozen lower part, whose output for every item
can be computed once and cached (`frozen_states`), and a trained upper part that runs each step. Also here: saving a
model with its tokenizer, and loading a saved one (`load_model`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from recsys_bert import encoders
from recsys_bert.utils import InputError, move_files_into, one_line

STEP_SUB_BATCH = 256  # items per length-sorted sub-batch of a training step's trained encoder layers
USER_SUB_BATCH = 32  # users per length-sorted sub-batch of the attention user tower


class RecsysBertConfig(PretrainedConfig):
    """Configuration of [`RecsysBertModel`]; the fields are those of `recsys_bert.arguments.ModelArguments`.

    Args:
        encoder (`dict`, *optional*): the encoder's own config (`to_dict()`), so a saved model rebuilds it offline.
        updated_from (`list[dict]`, *optional*): the models this one was updated from (`train.py --init_from`), oldest
            first, each `{"model", "revision", "data_period"}` (`recsys_bert.trainer.update_record`).

    Field names stay clear of what transformers reserves in a `PretrainedConfig` (its own attributes and the
    generation parameters, which `save_pretrained` refuses): the score's temperature is `score_temperature`, and a
    config saved under the old name `temperature` loads into it.
    """

    model_type = "recsys_bert"

    def __init__(
        self,
        encoder: dict | None = None,
        encoder_name_or_path: str | None = None,
        pooling: str | None = "mean",
        projection_dim: int = 0,
        user_tower: str = "attention",
        user_layers: int = 1,
        user_heads: int = 4,
        max_history: int = 50,
        max_item_tokens: int = 32,
        max_user_tokens: int = 256,
        score_temperature: float = 0.05,
        finetune_layers: int = 0,
        dropout: float = 0.1,
        text_skip_weight: float = 0.0,
        text_skip_decay: float | None = None,
        updated_from: list[dict] | None = None,
        **kwargs,
    ):
        if "temperature" in kwargs:  # a model saved before the rename
            score_temperature = kwargs.pop("temperature")
        self.encoder = encoder
        self.encoder_name_or_path = encoder_name_or_path
        self.pooling = pooling
        self.projection_dim = projection_dim
        self.user_tower = user_tower
        self.user_layers = user_layers
        self.user_heads = user_heads
        self.max_history = max_history
        self.max_item_tokens = max_item_tokens
        self.max_user_tokens = max_user_tokens
        self.score_temperature = score_temperature
        self.finetune_layers = finetune_layers
        self.dropout = dropout
        self.text_skip_weight = text_skip_weight
        self.text_skip_decay = text_skip_decay
        self.updated_from = updated_from
        super().__init__(**kwargs)
        if pooling not in ("mean", "cls", None):  # None: the encoder's own, set by `from_encoder`
            raise InputError(f"model config, field 'pooling': {pooling!r} is not 'mean' or 'cls'")
        if user_tower not in ("attention", "text"):
            raise InputError(f"model config, field 'user_tower': {user_tower!r} is not 'attention' or 'text'")
        if text_skip_weight < 0:
            raise InputError(f"model config, field 'text_skip_weight': {text_skip_weight} is negative")
        if text_skip_decay is not None and not 0 <= text_skip_decay <= 1:
            raise InputError(f"model config, field 'text_skip_decay': {text_skip_decay} not in 0..1")


@dataclass
class RecsysBertOutput(ModelOutput):
    """What a training step needs: the vectors of the users, their positives and the negatives."""

    user_vectors: torch.Tensor | None = None  # (batch, dim)
    positive_vectors: torch.Tensor | None = None  # (batch, dim)
    negative_vectors: torch.Tensor | None = None  # (negatives, dim) shared, or (batch, negatives, dim) per sample
    repeat_bias: torch.Tensor | None = None  # (1,) the learned score offset of items already in the history


class AdditiveAttention(nn.Module):
    """Additive attention pooling (NRMS / PLM-NR): weights = softmax(w . tanh(W h))."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, 1, bias=False)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.query(torch.tanh(self.proj(hidden))).squeeze(-1)  # (batch, length)
        weights = weights.masked_fill(~mask, torch.finfo(weights.dtype).min).softmax(dim=-1)
        return torch.einsum("bl,bld->bd", weights, hidden)  # (batch, dim)


class RecsysBertModel(PreTrainedModel):
    config_class = RecsysBertConfig
    base_model_prefix = "recsys_bert"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: RecsysBertConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoders.encoder_from_config(config.encoder) if encoder is None else encoder
        num_layers = len(encoders.layers(self.encoder))
        if not -1 <= config.finetune_layers <= num_layers:
            raise InputError(
                f"model config, field 'finetune_layers': {config.finetune_layers} not in -1..{num_layers}"
            )
        encoders.check_split(self.encoder, self.num_frozen_layers)
        hidden = self.encoder.config.hidden_size
        dim = config.projection_dim or hidden
        self.projection = (
            nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, dim))
            if config.projection_dim
            else nn.Identity()
        )
        if config.user_tower == "attention":
            self.user_token = nn.Parameter(torch.zeros(dim))
            self.recency_embeddings = nn.Embedding(config.max_history + 1, dim)  # 0 = the user token, 1 = most recent
            layer = nn.TransformerEncoderLayer(
                dim, config.user_heads, 4 * dim, config.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.user_encoder = nn.TransformerEncoder(layer, config.user_layers, enable_nested_tensor=False)
            self.user_pooling = AdditiveAttention(dim)
        # how much more (or less) likely a user is to pick an item again than its vector alone says, in cosine
        # units, learned from the training targets: repeat purchases are rare in most shops, repeat listens common
        self.repeat_bias = nn.Parameter(torch.zeros(1))
        self.set_trainable()
        self.post_init()
        # what FSDP's auto wrap (configs/accelerate/fsdp.yaml) makes its own unit, whatever the encoder: each layer
        self._no_split_modules = [type(encoders.layers(self.encoder)[0]).__name__]

    @classmethod
    def from_encoder(cls, config: RecsysBertConfig) -> RecsysBertModel:
        """A new recommender around the pretrained encoder `config.encoder_name_or_path` (default: the packaged
        MiniLM); `config.pooling` None takes the encoder's own sentence-transformers pooling, else mean."""
        path = config.encoder_name_or_path or encoders.default_encoder_path()
        encoder = encoders.load_encoder(path)
        if config.pooling is None:
            config.pooling = encoders.sentence_transformers_pooling(path) or "mean"
        config.encoder = encoder.config.to_dict()
        return cls(config, encoder=encoder)

    def set_trainable(self) -> None:
        """Only the top `finetune_layers` encoder layers train (every parameter of the encoder with -1), and the new
        layers; `from_pretrained` makes every parameter trainable again, so a loaded model calls this to train."""
        self.requires_grad_(True)
        self.encoder.requires_grad_(self.config.finetune_layers < 0)
        self.trained_layers().requires_grad_(True)

    def _init_weights(self, module):
        # only the new layers: the encoder keeps its pretrained weights
        if module is self.encoder or any(module is m for m in self.encoder.modules()):
            return
        if module is self:  # 0 = no opinion on repeats (also for a saved model from before the term existed)
            nn.init.zeros_(module.repeat_bias)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ----- the encoder, split at finetune_layers -----

    @property
    def num_frozen_layers(self) -> int:
        num_layers = len(encoders.layers(self.encoder))
        finetune = self.config.finetune_layers
        return num_layers if finetune == 0 else 0 if finetune < 0 else num_layers - finetune

    def trained_layers(self) -> nn.ModuleList:
        """The encoder layers that train (none with `finetune_layers` 0, all with -1)."""
        return encoders.layers(self.encoder)[self.num_frozen_layers :]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.finetune_layers >= 0:  # frozen parts never drop out, so their cached output is exact
            self.encoder.eval()
            self.trained_layers().train(mode)
        return self

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (n, tokens, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (n, hidden)

    @torch.no_grad()
    def frozen_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """What the frozen lower part makes of tokens; cacheable, since it never changes.

        Returns:
            `(n, hidden)` pooled vectors when the whole encoder is frozen (`finetune_layers=0`), `(n, tokens, hidden)`
            hidden states entering the first trained layer when only the top layers train, `None` when every layer
            trains.
        """
        if self.config.finetune_layers < 0:
            return None
        hidden = encoders.lower_states(self.encoder, input_ids, attention_mask, self.num_frozen_layers)
        return self._pool(hidden, attention_mask) if self.config.finetune_layers == 0 else hidden

    def encode_texts(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        frozen_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled encoder output `(n, hidden)` of tokenized texts, from the tokens or their cached frozen states (the
        tokens are needed too unless the whole encoder is frozen)."""
        if self.config.finetune_layers == 0:
            return self.frozen_states(input_ids, attention_mask) if frozen_states is None else frozen_states
        if frozen_states is None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            hidden = encoders.upper_output(
                self.encoder, frozen_states, input_ids, attention_mask, self.num_frozen_layers
            )  # (n, tokens, hidden)
        return self._pool(hidden, attention_mask)

    def encode_items(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        frozen_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Item vectors from item tokens or their cached frozen states: `(n, dim)` unit vectors, or `(n, dim +
        hidden)` with the text skip (each part a unit vector, the second times √β)."""
        pooled = self.encode_texts(attention_mask, input_ids=input_ids, frozen_states=frozen_states)  # (n, hidden)
        items = F.normalize(self.projection(pooled), dim=-1)  # (n, dim)
        if not self.config.text_skip_weight:
            return items
        skip = self.config.text_skip_weight**0.5 * F.normalize(pooled, dim=-1)  # (n, hidden)
        return torch.cat([items, skip], dim=-1)  # (n, dim + hidden)

    def encode_users(
        self,
        history_vectors: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """User vectors `(batch, dim)`, unit, or `(batch, dim + hidden)` with the text skip (the unit user vector,
        then the recency-weighted mean of the history's skip parts; the 'text' tower: of the history text's).

        Args:
            history_vectors (`(batch, length, dim)` or `(batch, length, dim + hidden)`): 'attention' tower: the
                history's item vectors (`encode_items`), most recent first.
            history_mask (`(batch, length)` bool): which history positions hold an item.
            input_ids, attention_mask (`(batch, tokens)`): 'text' tower: the history's texts, most recent first.
        """
        if self.config.user_tower == "text":
            return self.encode_items(attention_mask, input_ids=input_ids)
        # the catalogue's item vectors are float32; a model computing in bf16 without autocast (DeepSpeed, FSDP2's
        # gathered parameters) takes them in its own dtype
        history_vectors = history_vectors.to(self.user_token.dtype)  # (batch, length, dim [+ hidden])
        dim = self.user_token.shape[0]
        skip = history_vectors[..., dim:]  # (batch, length, hidden) with the text skip, else empty
        history_vectors = history_vectors[..., :dim]  # (batch, length, dim)
        # each user's history ends at its last item: the layers run on no padding beyond a sub-batch's longest
        batch, length = history_mask.shape
        positions = torch.arange(1, length + 1, device=history_mask.device)
        extent = (history_mask * positions).amax(dim=1) if length else positions.new_zeros(batch)  # (batch,)
        users = length_sorted(  # (batch, dim)
            extent,
            USER_SUB_BATCH,
            lambda rows, width: self._attend(history_vectors[rows, :width], history_mask[rows, :width]),
        )
        if not self.config.text_skip_weight:
            return users
        decay = 1.0 if self.config.text_skip_decay is None else self.config.text_skip_decay
        return torch.cat([users, recency_mean(skip, history_mask, decay)], dim=-1)  # (batch, dim + hidden)

    def _attend(self, history_vectors: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """The attention tower on `(batch, length, dim)` history vectors: `(batch, dim)` unit user vectors."""
        batch, length, dim = history_vectors.shape
        tokens = torch.cat([self.user_token.expand(batch, 1, dim), history_vectors], dim=1)  # (batch, 1 + length, dim)
        positions = torch.arange(length + 1, device=tokens.device)
        hidden = tokens + self.recency_embeddings(positions)  # (batch, 1 + length, dim)
        mask = torch.cat([history_mask.new_ones(batch, 1), history_mask], dim=1)  # (batch, 1 + length)
        hidden = self.user_encoder(hidden, src_key_padding_mask=~mask)  # (batch, 1 + length, dim)
        return F.normalize(self.user_pooling(hidden, mask), dim=-1)  # (batch, dim)

    def _encode_step_items(
        self, attention_mask: torch.Tensor, input_ids: torch.Tensor, frozen_states: torch.Tensor | None
    ) -> torch.Tensor:
        """`encode_items` over a step's unique items in length-sorted sub-batches, each cut to its own longest item:
        the trained layers don't run on the padding that the step's longest item would give every other one."""
        if self.config.finetune_layers == 0 or attention_mask.shape[0] <= STEP_SUB_BATCH:
            return self.encode_items(attention_mask, input_ids=input_ids, frozen_states=frozen_states)
        return length_sorted(  # (items, dim)
            attention_mask.sum(dim=1),
            STEP_SUB_BATCH,
            lambda rows, width: self.encode_items(
                attention_mask[rows, :width],
                input_ids=input_ids[rows, :width],
                frozen_states=None if frozen_states is None else frozen_states[rows, :width],
            ),
        )

    def score(
        self,
        user_vectors: torch.Tensor,
        item_vectors: torch.Tensor,
        history_ids: torch.Tensor | None = None,
        first_item: int = 0,
    ) -> torch.Tensor:
        """Logits `(users, items)`: (dot(user, item) + `repeat_bias` for the user's history items) /
        score_temperature;
        their softmax is the click probability.

        Args:
            user_vectors (`(users, dim)`), item_vectors (`(items, dim)`): from `encode_users` and `encode_items`.
            history_ids (`(users, length)`): the catalogue indices of each user's recent history (-1 = padding), the
                history the user vectors were computed from; `None` leaves the repeat term out. The bias is a part
                of the model and covers what the model sees, the last `max_history` items; excluding the history
                (`--exclude_history`) is a rule on top of the scores and covers the whole history.
            first_item: the catalogue index of `item_vectors`' first row (a chunk of the catalogue).
        """
        logits = (user_vectors / self.config.score_temperature) @ item_vectors.T  # (users, items); users are fewer
        if history_ids is None:
            return logits
        rows, columns = item_positions(history_ids, first_item, logits.shape[1])
        # once per (user, item), however often the item is in the history
        logits[rows, columns] += self.repeat_bias / self.config.score_temperature
        return logits

    def score_candidates(
        self,
        user_vectors: torch.Tensor,
        candidate_vectors: torch.Tensor,
        candidate_ids: torch.Tensor,
        history_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits `(users, n)` of each user's own candidates, the values `score` gives them over the catalogue (up to
        float rounding): for re-scoring an index's candidates, or one user's recommendations by several user vectors.

        Args:
            user_vectors (`(users, dim)`): from `encode_users`.
            candidate_vectors (`(users, n, dim)`): each user's candidates' vectors (`encode_items`).
            candidate_ids (`(users, n)`): their catalogue indices, which the repeat bias looks up in `history_ids`.
            history_ids (`(users, length)`): as for `score` (-1 = padding); `None` leaves the repeat term out.
        """
        logits = torch.einsum("ud,und->un", user_vectors / self.config.score_temperature, candidate_vectors)
        if history_ids is None:
            return logits  # (users, n)
        repeat = (candidate_ids[:, :, None] == history_ids[:, None, :]) & (history_ids[:, None, :] >= 0)
        return logits + repeat.any(dim=2) * (self.repeat_bias / self.config.score_temperature)  # (users, n)

    def forward(
        self,
        item_attention_mask: torch.Tensor,
        item_input_ids: torch.Tensor,
        history_index: torch.Tensor,
        history_mask: torch.Tensor,
        positive_index: torch.Tensor,
        negative_index: torch.Tensor,
        item_frozen_states: torch.Tensor | None = None,
        user_input_ids: torch.Tensor | None = None,
        user_attention_mask: torch.Tensor | None = None,
    ) -> RecsysBertOutput:
        """One training step's vectors. Every item of the step (candidate or history) is encoded once.

        Args:
            item_attention_mask, item_input_ids (`(unique_items, tokens)`): the step's unique items.
            item_frozen_states: their cached frozen states, where the encoder has a frozen part.
            history_index (`(batch, length)`): each sample's history as rows of the unique items, most recent first.
            history_mask (`(batch, length)` bool): which history positions hold an item.
            positive_index (`(batch,)`): each sample's positive among the unique items.
            negative_index (`(negatives,)` or `(batch, negatives)`): the negatives among the unique items.
            user_input_ids, user_attention_mask (`(batch, tokens)`): the history texts ('text' user tower).
        """
        item_vectors = self._encode_step_items(item_attention_mask, item_input_ids, item_frozen_states)
        if self.config.user_tower == "text":
            user_vectors = self.encode_users(input_ids=user_input_ids, attention_mask=user_attention_mask)
        else:
            user_vectors = self.encode_users(item_vectors[history_index], history_mask)  # (batch, dim)
        return RecsysBertOutput(
            user_vectors=user_vectors,
            positive_vectors=item_vectors[positive_index],  # (batch, dim)
            negative_vectors=item_vectors[negative_index],  # (negatives, dim) or (batch, negatives, dim)
            repeat_bias=self.repeat_bias * 1,  # taken in forward, where FSDP holds the whole parameter
        )


def length_sorted(lengths: torch.Tensor, size: int, run: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """`run(rows, width)` over sub-batches of `size` rows sorted by `lengths` `(n,)`, each cut to its own longest
    (`width`), so nothing runs on the padding the longest row of all would give every other one; the outputs
    `(n, ...)` back in the rows' order."""
    order = lengths.argsort(descending=True, stable=True)
    widths = lengths[order[::size]].tolist()  # each sub-batch's longest, read off the device once
    parts = [run(rows, width) for rows, width in zip(order.split(size), widths)]
    return torch.cat(parts)[order.argsort()]


def recency_mean(vectors: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
    """`(batch, dim)`: the weighted mean of a history's `vectors` `(batch, length, dim)`, most recent first, the j-th
    weighted `decay ** j` (1 = the plain mean); `mask` `(batch, length)` marks the positions that hold an item."""
    ages = torch.arange(vectors.shape[1], device=vectors.device, dtype=vectors.dtype)  # (length,)
    weights = mask.to(vectors.dtype) * decay**ages  # (batch, length)
    return torch.einsum("bl,bld->bd", weights, vectors) / weights.sum(1, keepdim=True).clamp(min=1e-12)


def item_positions(item_index: torch.Tensor, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) positions, in a chunk of `size` items from `start`, of `item_index` `(users, n)` (-1 = none)."""
    local = item_index - start  # (users, n)
    hit = (item_index >= 0) & (local >= 0) & (local < size)
    rows = torch.arange(item_index.shape[0], device=item_index.device)[:, None].expand_as(item_index)
    return rows[hit], local[hit]


def save_model(model: RecsysBertModel, tokenizer, target: Path, state_dict: dict | None = None) -> None:
    """`save_pretrained` (safetensors + JSON config) and the tokenizer, written beside `target` and each file renamed
    into it: a reader never sees a half-written file. `state_dict`: the weights to write when the model holds shards
    of them (FSDP; `Accelerator.get_state_dict` gathers them)."""
    target.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    model.save_pretrained(scratch, state_dict=state_dict)
    tokenizer.save_pretrained(scratch)
    move_files_into(scratch, target)


def load_model(name_or_path: str | Path) -> tuple[RecsysBertModel, object]:
    """A trained model (eval mode) and its tokenizer from a local folder or a Hub id; weights from safetensors only.

    `AutoModel.from_pretrained(name_or_path)` gives the same model once `recsys_bert` is imported.
    """
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a recsys-bert model folder (no config.json; train.py writes one)")
        if not any(path.glob("model*.safetensors")):
            raise InputError(f"{path}: no model.safetensors in the folder (the weights are missing)")
    try:
        model = RecsysBertModel.from_pretrained(str(name_or_path), use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{name_or_path}: can't load the model ({one_line(err)})") from None
    return model.eval(), tokenizer


AutoConfig.register("recsys_bert", RecsysBertConfig)
AutoModel.register(RecsysBertConfig, RecsysBertModel)
