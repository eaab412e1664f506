from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from recsys_bert.encoders import default_encoder_path
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel
from tests.tiny import make_tiny_encoder

TEXTS = ["Toy Story (1995). Adventure, Animation", "Heat (1995). Action, Crime, Thriller", "Up"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny"))


def _tokens(path):
    tokenizer = AutoTokenizer.from_pretrained(path)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("finetune_layers", [0, 1, 2, -1])
def test_cached_frozen_states_give_the_same_vectors(tiny, finetune_layers):
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, finetune_layers=finetune_layers))
    model.eval()
    input_ids, mask = _tokens(tiny)
    direct = model.encode_items(mask, input_ids=input_ids)
    frozen = model.frozen_states(input_ids, mask)
    if finetune_layers < 0:
        assert frozen is None  # nothing frozen, nothing to cache
    else:
        assert torch.allclose(direct, model.encode_items(mask, input_ids=input_ids, frozen_states=frozen), atol=1e-6)
    trainable = {
        name.split(".")[3]
        for name, p in model.named_parameters()
        if p.requires_grad and name.startswith("encoder.encoder")
    }
    assert len(trainable) == (2 if finetune_layers < 0 else finetune_layers)
    assert model.encoder.embeddings.word_embeddings.weight.requires_grad == (finetune_layers < 0)


def test_frozen_layers_stay_in_eval_mode(tiny):
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, finetune_layers=1, dropout=0.5))
    model.train()
    assert not model.encoder.encoder.layer[0].training and model.encoder.encoder.layer[1].training


def test_save_and_load_give_identical_scores(tiny, tmp_path):
    torch.manual_seed(0)
    config = RecsysBertConfig(encoder_name_or_path=tiny, finetune_layers=1, projection_dim=16, user_layers=2)
    model = RecsysBertModel.from_encoder(config).eval()
    input_ids, mask = _tokens(tiny)
    items = model.encode_items(mask, input_ids=input_ids)
    users = model.encode_users(items[torch.tensor([[2, 1], [0, 0]])], torch.tensor([[True, True], [True, False]]))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = RecsysBertModel.from_pretrained(tmp_path).eval()
    items2 = loaded.encode_items(mask, input_ids=input_ids)
    users2 = loaded.encode_users(items2[torch.tensor([[2, 1], [0, 0]])], torch.tensor([[True, True], [True, False]]))
    assert torch.equal(model.score(users, items), loaded.score(users2, items2))
    history = torch.tensor([[2, 1], [0, -1]])
    with torch.no_grad():
        model.repeat_bias.fill_(-0.25)
    model.save_pretrained(tmp_path / "with_bias")
    loaded = RecsysBertModel.from_pretrained(tmp_path / "with_bias").eval()
    assert torch.equal(model.score(users, items, history), loaded.score(users, items, history))
    # a model saved before the repeat bias existed loads with 0: its scores are the plain dot products
    weights = load_file(tmp_path / "with_bias" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "repeat_bias"}, tmp_path / "with_bias" / "model.safetensors")
    older = RecsysBertModel.from_pretrained(tmp_path / "with_bias").eval()
    assert older.repeat_bias.item() == 0.0
    torch.testing.assert_close(older.score(users, items, history), users @ items.T / model.config.score_temperature)


@pytest.mark.parametrize("user_tower", ["attention", "text"])
def test_the_text_skip_adds_beta_times_the_pooled_cosine_to_the_trained_score(tiny, user_tower):
    torch.manual_seed(0)
    plain = RecsysBertModel.from_encoder(
        RecsysBertConfig(encoder_name_or_path=tiny, projection_dim=16, user_tower=user_tower)
    ).eval()
    config = RecsysBertConfig(encoder_name_or_path=tiny, projection_dim=16, user_tower=user_tower,
                              text_skip_weight=0.25, text_skip_decay=0.5)  # fmt: skip
    skip = RecsysBertModel.from_encoder(config).eval()
    skip.load_state_dict(plain.state_dict())  # the same weights: the skip adds no parameter
    input_ids, mask = _tokens(tiny)
    with torch.no_grad():
        items, items_skip = plain.encode_items(mask, input_ids=input_ids), skip.encode_items(mask, input_ids=input_ids)
        pooled = torch.nn.functional.normalize(plain.encode_texts(mask, input_ids=input_ids), dim=-1)  # (3, 32)
        assert items_skip.shape == (3, 16 + 32)
        torch.testing.assert_close(items_skip[:, :16], items)
        if user_tower == "attention":
            history, history_mask = torch.tensor([[2, 1, 0], [1, 0, 0]]), torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
            users = plain.encode_users(items[history], history_mask)
            users_skip = skip.encode_users(items_skip[history], history_mask)
            weights = history_mask * torch.tensor([1.0, 0.5, 0.25])  # the j-th most recent weighs 0.5 ** j
            means = (pooled[history] * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)  # (2, 32)
        else:
            users, users_skip = (
                plain.encode_users(input_ids=input_ids, attention_mask=mask),
                skip.encode_users(input_ids=input_ids, attention_mask=mask),
            )
            means = pooled
        expected = plain.score(users, items) + 0.25 * means @ pooled.T / config.score_temperature
        torch.testing.assert_close(skip.score(users_skip, items_skip), expected)


def test_user_without_history_gets_a_finite_vector(tiny):
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny)).eval()
    users = model.encode_users(torch.randn(2, 3, 32), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(users).all() and torch.allclose(users.norm(dim=-1), torch.ones(2))


@pytest.mark.latest
def test_real_packaged_minilm_loads_offline_and_matches_sentence_transformers():
    model = RecsysBertModel.from_encoder(RecsysBertConfig()).eval()
    assert model.encoder.config.hidden_size == 384 and len(model.encoder.encoder.layer) == 6
    input_ids, mask = _tokens(default_encoder_path())
    ours = model.encode_items(mask, input_ids=input_ids)
    reference = SentenceTransformer(default_encoder_path(), device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert ours[0] @ ours[1] < 0.9  # real weights: different movies, different vectors


def test_a_roberta_encoder_with_its_own_padding_id_caches_exactly(tmp_path):
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, pad_token_id=0)  # fmt: skip
    RobertaModel(roberta, add_pooling_layer=False).save_pretrained(tmp_path / "roberta")
    model = RecsysBertModel.from_encoder(
        RecsysBertConfig(encoder_name_or_path=str(tmp_path / "roberta"), finetune_layers=1)
    ).eval()
    input_ids, mask = _tokens(default_encoder_path())
    cached = model.encode_items(mask, input_ids=input_ids + 2, frozen_states=model.frozen_states(input_ids + 2, mask))
    assert torch.allclose(model.encode_items(mask, input_ids=input_ids + 2), cached, atol=1e-6)


def test_catalogue_of_a_table_on_disk_is_memory_mapped_and_equal_to_one_in_memory():
    import numpy as np

    from recsys_bert.arguments import DataArguments
    from recsys_bert.catalogue import Catalogue
    from recsys_bert.data import load_data, tokenize_items
    from tests.conftest import REPO_ROOT

    data_args = DataArguments(data_format="movielens", data_dir=str(REPO_ROOT / "data" / "ml-latest-small"))
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    items = tokenize_items(load_data(data_args, max_history=20).items, tokenizer, 24)
    assert len(items.data.column("input_ids").chunks) > 1  # so the padding runs chunk by chunk
    mapped = Catalogue.from_items(items, tokenizer.pad_token_id)
    in_memory = Catalogue(items["input_ids"], tokenizer.pad_token_id)
    assert isinstance(mapped.input_ids, np.memmap) and not isinstance(in_memory.input_ids, np.memmap)
    np.testing.assert_array_equal(mapped.input_ids, in_memory.input_ids)
    np.testing.assert_array_equal(mapped.lengths, in_memory.lengths)
    some = np.array([5, 0, 9000, 17])
    for got, expected in zip(mapped.tokens(some), in_memory.tokens(some)):
        assert torch.equal(got, expected) and got.dtype == torch.long
    histories = [some, some[:1]]
    for got, expected in zip(mapped.history_text_tokens(histories, 40), in_memory.history_text_tokens(histories, 40)):
        assert torch.equal(got, expected)
    again = Catalogue.from_items(items, tokenizer.pad_token_id)  # the second time: the file, not a new padding
    assert again.input_ids.filename == mapped.input_ids.filename


@pytest.mark.parametrize("finetune_layers", [1, -1])
def test_a_steps_items_in_length_sorted_sub_batches_equal_one_padded_batch(tiny, finetune_layers):
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, finetune_layers=finetune_layers))
    model.eval()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 40, (600,), generator=generator)  # (items,), more than one sub-batch
    mask = (torch.arange(40)[None, :] < lengths[:, None]).long()  # (items, 40)
    input_ids = torch.randint(1000, 20000, (600, 40), generator=generator) * mask
    frozen = model.frozen_states(input_ids, mask)  # None when every layer trains
    whole = model.encode_items(mask, input_ids=input_ids, frozen_states=frozen)
    split = model._encode_step_items(mask, input_ids, frozen)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)


def test_users_in_length_sorted_sub_batches_equal_one_padded_batch(tiny):
    config = RecsysBertConfig(encoder_name_or_path=tiny, projection_dim=16, user_layers=2, text_skip_weight=0.25)
    model = RecsysBertModel.from_encoder(config).eval()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 50, (100,), generator=generator)  # (users,), some with no history, several sub-batches
    mask = torch.arange(50)[None, :] < lengths[:, None]  # (users, 50)
    mask[::7, 0] = False  # a hole before the last item: the history still counts to its last item
    vectors = torch.nn.functional.normalize(torch.randn(100, 50, 16 + 32, generator=generator), dim=-1)
    split = model.encode_users(vectors, mask)  # (users, 16 + 32)
    whole = model._attend(vectors[..., :16], mask)  # (users, 16) the tower on every user at the full width
    torch.testing.assert_close(split[:, :16], whole, atol=1e-5, rtol=0)


def test_an_encoder_stored_in_float16_trains_with_float32_weights(tiny, tmp_path):
    """A half-precision checkpoint (like the fp16 MiniLM copy used on GPUs) still gives float32 master weights."""
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny).half().save_pretrained(tmp_path)
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=str(tmp_path), finetune_layers=-1))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_bf16_model_takes_the_catalogues_float32_item_vectors(tiny):
    """DeepSpeed (and FSDP2's gathered parameters) compute in bf16 without autocast; evaluation hands the user tower
    the catalogue's float32 item vectors."""
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny)).eval()
    history, mask = torch.randn(2, 3, 32), torch.ones(2, 3, dtype=torch.bool)
    expected = model.encode_users(history, mask)
    users = model.to(torch.bfloat16).encode_users(history, mask)
    assert users.dtype == torch.bfloat16 and torch.allclose(users.float(), expected, atol=0.05)


def test_an_encoder_that_needs_its_own_code_is_refused_without_running_it(tiny, tmp_path):
    """No trust_remote_code, and no terminal prompt that would run the code on 'y': a one-line error instead."""
    import json
    import shutil

    from recsys_bert.utils import InputError

    shutil.copytree(tiny, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    auto_map = {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
    config.update(model_type="custom_bert", auto_map=auto_map)
    (tmp_path / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code_ran"
    (tmp_path / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('')\n")
    with pytest.raises(InputError, match="custom code"):
        RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=str(tmp_path)))
    assert not marker.exists()


@pytest.mark.latest
def test_config_names_stay_clear_of_what_transformers_reserves(tmp_path):
    """transformers 5.24 refuses to save a config that holds a generation parameter (`temperature` was one): no
    field of ours is a generation parameter or a `PretrainedConfig` attribute, and the old name still loads."""
    import dataclasses
    import inspect
    import json

    from transformers import GenerationConfig, PretrainedConfig

    from recsys_bert.arguments import ModelArguments

    reserved = set(GenerationConfig().to_dict()) | set(vars(PretrainedConfig())) | set(dir(PretrainedConfig))
    ours = set(inspect.signature(RecsysBertConfig.__init__).parameters) - {"self", "kwargs"}
    assert ours >= {f.name for f in dataclasses.fields(ModelArguments)}
    assert not ours & reserved, ours & reserved
    RecsysBertConfig(encoder={"model_type": "bert"}).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("score_temperature")
    (tmp_path / "config.json").write_text(json.dumps({**saved, "temperature": 0.2}))  # as models were saved before
    old = RecsysBertConfig.from_pretrained(tmp_path)
    assert old.score_temperature == 0.2 and not hasattr(old, "temperature")
    old.save_pretrained(tmp_path / "again")
    assert "temperature" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_the_public_api_and_automodel_after_importing_recsys_bert(tiny, tmp_path):
    """`import recsys_bert` is all transformers' Auto classes need; the package's front door names the API."""
    import subprocess
    import sys

    import recsys_bert

    assert {"RecsysBertModel", "RecsysBertConfig", "load_model", "save_model"} <= set(recsys_bert.__all__)
    model = recsys_bert.RecsysBertModel.from_encoder(recsys_bert.RecsysBertConfig(encoder_name_or_path=tiny))
    model.save_pretrained(tmp_path)
    code = (
        "import sys, recsys_bert\n"
        "from transformers import AutoConfig, AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path)!r})\n"
        "assert type(model) is recsys_bert.RecsysBertModel, type(model)\n"
        f"assert type(AutoConfig.from_pretrained({str(tmp_path)!r})) is recsys_bert.RecsysBertConfig\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_frozen_vectors_are_kept_on_disk_for_the_next_run_on_the_same_catalogue(tiny, tmp_path):
    """The wholly frozen encoder's item vectors: computed once, read back equal by a later run; other weights or
    other texts make another key, and a partly trained encoder's states are never written."""
    from accelerate import Accelerator

    from recsys_bert.catalogue import Catalogue
    from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel

    accelerator = Accelerator(cpu=True)
    catalogue = Catalogue([[101, 7 + i, 102] for i in range(12)], pad_token_id=0)
    model = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, finetune_layers=0)).eval()
    catalogue.compute_frozen_states(model, accelerator, batch_size=5, cache_dir=tmp_path)
    written = list(tmp_path.glob("*.safetensors"))
    assert len(written) == 1 and catalogue.frozen_states.shape == (12, model.config.encoder["hidden_size"])
    again = Catalogue([[101, 7 + i, 102] for i in range(12)], pad_token_id=0)

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again instead of reading the cache")

    again.encode = no_encoding
    again.compute_frozen_states(model, accelerator, batch_size=5, cache_dir=tmp_path)
    torch.testing.assert_close(again.frozen_states, catalogue.frozen_states, rtol=0, atol=0)
    model.save_pretrained(tmp_path / "saved")  # an update (init_from) reads the vectors of the model it continues
    again.compute_frozen_states(RecsysBertModel.from_pretrained(tmp_path / "saved"), accelerator, 5, tmp_path)
    torch.testing.assert_close(again.frozen_states, catalogue.frozen_states, rtol=0, atol=0)
    other_texts = Catalogue([[101, 8 + i, 102] for i in range(12)], pad_token_id=0)
    other_texts.compute_frozen_states(model, accelerator, batch_size=5, cache_dir=tmp_path)
    with torch.no_grad():
        next(model.encoder.parameters()).add_(0.01)
    catalogue.compute_frozen_states(model, accelerator, batch_size=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    top = RecsysBertModel.from_encoder(RecsysBertConfig(encoder_name_or_path=tiny, finetune_layers=1)).eval()
    catalogue.compute_frozen_states(top, accelerator, batch_size=5, cache_dir=tmp_path)
    assert catalogue.frozen_states.dim() == 3 and len(list(tmp_path.glob("*.safetensors"))) == 3
