"""recsys-bert: a pretrained text encoder (BERT and its family) turned into a sequential recommender.

import recsys_bert
from transformers import AutoModel

model = AutoModel.from_pretrained("runs/movielens")  # a RecsysBertModel, once recsys_bert is imported
"""

from __future__ import annotations

from recsys_bert.arguments import DataArguments, ModelArguments, RecommendArguments, TrainingArguments
from recsys_bert.modeling import RecsysBertConfig, RecsysBertModel, load_model, save_model
from recsys_bert.recommender import Recommender
from recsys_bert.utils import InputError

__version__ = "0.1.0"

__all__ = [
    "DataArguments",
    "InputError",
    "ModelArguments",
    "RecommendArguments",
    "Recommender",
    "RecsysBertConfig",
    "RecsysBertModel",
    "TrainingArguments",
    "load_model",
    "save_model",
]
