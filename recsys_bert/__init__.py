"""recsys-bert: a pretrained BERT encoder turned into a sequential recommender."""

from __future__ import annotations

__version__ = "0.1.0"
