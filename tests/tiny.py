"""A tiny random BERT with the real MiniLM tokenizer, for fast tests of every code path."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from recsys_bert.encoders import default_encoder_path


def make_tiny_encoder(path: Path, seed: int = 0, hidden_size: int = 32) -> str:
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
        model = BertModel(config, add_pooling_layer=False)
        with torch.no_grad():  # words, not positions, should dominate: else every text gets nearly the same vector
            model.embeddings.word_embeddings.weight.mul_(25.0)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return str(path)
