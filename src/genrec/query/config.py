"""The `query` section of a recipe: the query model trained by `genrec train-query` and used by `genrec search`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueryConfig:
    seed: int = 0  # query sampling, the held-out split and the model's initialisation
    held_out: int = 2000  # items whose held-out query (a template never trained on) measures the model
    train_windows: int = 2  # partial-title queries per item (contiguous word windows), besides the full title
    max_tokens: int = 32  # query tokens read by the encoder (longer queries are cut)
    lm: str = ""  # "": the default query model (frozen sentence-encoder token states + a small decoder);
    #               else a Hugging Face causal LM name or directory, fine-tuned with semantic-ID tokens added
    lora_rank: int = 0  # lm only: > 0 fine-tunes LoRA adapters of this rank (needs peft) instead of all weights
    pooled_match: str = "max"  # default model: also score each child by the query's pooled vector: "mean" (cosine
    #                             with its items' mean text), "max" (best cosine with any of its items), "none"
    d_model: int = 256  # default model: decoder width
    num_layers: int = 2  # default model: decoder layers
    num_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    epochs: int = 8
    batch_size: int = 256
    lr: float = 1e-3
    beam_size: int = 20  # search beam (>= the k asked for; a wider beam searches wider and keeps the best k)
    candidates: int = 50  # personalised search: the query model's candidates re-ranked with the recommender
    history_weight: float = -1.0  # personalised search: weight of the recommender's log-probability (< 0: chosen
    #                               on validation users by `genrec train-query`)
    num_threads: int = 0  # torch threads while training (0: torch's default)
