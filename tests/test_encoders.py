"""Every encoder family sentence-transformers users use, each as a tiny random model with the MiniLM tokenizer:
item vectors equal `SentenceTransformer.encode` of the same folder, the cached lower layers give exactly what the
whole encoder gives, and `finetune_layers N` trains the top N layers and nothing else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoModel, AutoTokenizer

from recsys_bert import encoders
from recsys_bert.encoders import default_encoder_path
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel
from recsys_bert.utils import InputError
from tests.conftest import REPO_ROOT

TEXTS = [
    "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy. pixar, fun",
    "Heat (1995). Action, Crime, Thriller",
    "Up",
    "A very long description of a film " * 6,
]
SIZE = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
ARCHITECTURES = {
    "bert": {**SIZE},
    "roberta": {**SIZE, "pad_token_id": 0, "max_position_embeddings": 514},
    "xlm-roberta": {**SIZE, "pad_token_id": 0, "max_position_embeddings": 514},
    "electra": {**SIZE, "embedding_size": 16},
    "mpnet": {**SIZE, "pad_token_id": 0, "max_position_embeddings": 514},
    "distilbert": {"dim": 32, "n_layers": 3, "n_heads": 2, "hidden_dim": 64},
    "deberta-v2": {
        **SIZE,
        "relative_attention": True,
        "pos_att_type": ["p2c", "c2p"],
        "position_biased_input": False,
        "max_relative_positions": -1,
        "position_buckets": 16,
        "norm_rel_ebd": "layer_norm",
        "share_att_key": True,
    },  # fmt: skip
    "modernbert": {
        **SIZE,
        "local_attention": 8,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        "pad_token_id": 0,
        "bos_token_id": 101,
        "eos_token_id": 102,
        "cls_token_id": 101,
        "sep_token_id": 102,
    },  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def encoder_folder(request, tmp_path_factory) -> str:
    """A tiny random encoder of one family, saved with the real MiniLM tokenizer (as a Hub checkpoint would be)."""
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    config = AutoConfig.for_model(request.param, vocab_size=tokenizer.vocab_size, **ARCHITECTURES[request.param])
    model = AutoModel.from_config(config)
    with torch.no_grad():  # words, not positions, should dominate the vectors, as in a trained encoder
        model.get_input_embeddings().weight.mul_(25.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _tokens(folder: str, max_length: int = 32) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@pytest.mark.latest
@pytest.mark.parametrize("finetune_layers", [0, 1, 3, -1])
def test_item_vectors_equal_sentence_transformers_and_the_cache_changes_nothing(encoder_folder, finetune_layers):
    config = RecsysBertConfig(encoder_name_or_path=encoder_folder, finetune_layers=finetune_layers, pooling=None)
    model = RecsysBertModel.from_encoder(config).eval()
    assert model.config.pooling == "mean"  # a plain checkpoint: sentence-transformers' default too
    tokens = _tokens(encoder_folder)
    with torch.no_grad():
        direct = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])  # (texts, hidden)
        frozen = model.frozen_states(tokens["input_ids"], tokens["attention_mask"])
        cached = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"], frozen_states=frozen)
    reference = SentenceTransformer(encoder_folder, device="cpu")
    reference.max_seq_length = 32
    expected = reference.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(direct, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached, direct, atol=1e-6, rtol=0)
    assert (frozen is None) == (finetune_layers < 0)


@pytest.mark.parametrize("finetune_layers", [1, 2])
def test_finetune_layers_trains_the_top_layers_and_nothing_else(encoder_folder, finetune_layers):
    model = RecsysBertModel.from_encoder(
        RecsysBertConfig(encoder_name_or_path=encoder_folder, finetune_layers=finetune_layers)
    )
    layers = encoders.layers(model.encoder)
    top = {id(p) for layer in layers[len(layers) - finetune_layers :] for p in layer.parameters()}
    trainable = {id(p) for p in model.encoder.parameters() if p.requires_grad}
    assert trainable == top and top
    before = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    tokens = _tokens(encoder_folder)
    model.train()
    frozen = model.frozen_states(tokens["input_ids"], tokens["attention_mask"])
    vectors = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"], frozen_states=frozen)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    (vectors @ vectors.T).triu(1).sum().backward()
    optimizer.step()
    changed = {name for name, p in model.encoder.named_parameters() if not torch.equal(p, before[name])}
    top_names = {name for name, p in model.encoder.named_parameters() if id(p) in top}
    assert changed and changed <= top_names
    # the cache stays what the (untouched) lower layers give
    model.eval()
    torch.testing.assert_close(model.frozen_states(tokens["input_ids"], tokens["attention_mask"]), frozen)


def test_a_saved_model_of_each_family_reloads_to_identical_vectors(encoder_folder, tmp_path):
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=encoder_folder, finetune_layers=1))
    model.save_pretrained(tmp_path)
    loaded = RecsysBertModel.from_pretrained(tmp_path).eval()
    tokens = _tokens(encoder_folder)
    with torch.no_grad():
        expected = model.eval().encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])
        got = loaded.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])
    assert torch.equal(got, expected)
    assert type(encoders.layers(model.encoder)[0]).__name__ in model._no_split_modules  # FSDP's unit


def test_pooling_follows_the_sentence_transformers_config(tmp_path):
    """A sentence-transformers folder that pools by CLS (as BAAI/bge-* do) gets CLS pooling unless told otherwise."""
    SentenceTransformer(default_encoder_path(), device="cpu").save(str(tmp_path))
    pooling = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    pooling = {key: value for key, value in pooling.items() if not key.startswith("pooling_mode")}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode": "cls"}))
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=str(tmp_path), pooling=None)).eval()
    assert model.config.pooling == "cls"
    tokens = _tokens(str(tmp_path))
    with torch.no_grad():
        ours = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"])
    reference = SentenceTransformer(str(tmp_path), device="cpu")
    reference.max_seq_length = 32  # the model's max_item_tokens
    torch.testing.assert_close(ours, reference.encode(TEXTS, convert_to_tensor=True), atol=1e-5, rtol=0)
    assert RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=str(tmp_path))).config.pooling == "mean"
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode": "max"}))
    with pytest.raises(InputError, match="pooling is 'max'.*--pooling"):
        RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=str(tmp_path), pooling=None))


def test_an_encoder_without_one_list_of_its_layers_is_a_clear_error():
    from types import SimpleNamespace

    class TwoBlocks(torch.nn.Module):  # the layers as separate attributes: nothing to split at
        config = SimpleNamespace(num_hidden_layers=2)

        def __init__(self):
            super().__init__()
            self.first, self.second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

    with pytest.raises(InputError, match="TwoBlocks: no single list of its 2 layers found"):
        encoders.layer_list(TwoBlocks())


MPNET = Path(os.environ.get("RECSYS_BERT_MPNET") or REPO_ROOT / ".cache" / "all-mpnet-base-v2")


@pytest.mark.slow
@pytest.mark.skipif(
    not (MPNET / "model.safetensors").is_file(),
    reason=f"all-mpnet-base-v2 not found at {MPNET}: python benchmarks/fetch_mpnet.py fetches it (440 MB)",
)
@pytest.mark.latest
def test_real_all_mpnet_base_v2_matches_sentence_transformers_split_or_whole():
    tokens = _tokens(str(MPNET), max_length=64)
    expected = SentenceTransformer(str(MPNET), device="cpu").encode(TEXTS, convert_to_tensor=True)
    for finetune_layers in (0, 1, -1):
        config = RecsysBertConfig(encoder_name_or_path=str(MPNET), finetune_layers=finetune_layers, pooling=None,
                                  max_item_tokens=64)  # fmt: skip
        model = RecsysBertModel.from_encoder(config).eval()
        with torch.no_grad():
            frozen = model.frozen_states(tokens["input_ids"], tokens["attention_mask"])
            ours = model.encode_items(tokens["attention_mask"], input_ids=tokens["input_ids"], frozen_states=frozen)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
