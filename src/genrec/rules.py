"""Cross-setting invariants of a recipe that no single field can check, run when a config is loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genrec.errors import ConfigError

if TYPE_CHECKING:
    from genrec.config import Config


def validate(cfg: Config) -> None:
    """Cross-setting invariants that no single field can check."""
    m, e, d, t, q, c = cfg.model, cfg.evaluate, cfg.data, cfg.train, cfg.quantize, cfg.collab
    g, s = m.tiger, m.sasrec
    choices = {
        "data.format": (d.format, ("p5", "amazon2014", "table")),
        "data.split": (d.split, ("leave_one_out", "temporal")),
        "data.cold_items_by": (d.cold_items_by, ("random", "newest")),
        "quantize.method": (q.method, ("rqkmeans", "rqvae", "random")),
        "quantize.inputs": (q.inputs, ("auto", "text", "collab", "text+collab")),
        "model.kind": (m.kind, ("tiger", "sasrec")),
        "model.tiger.item_tokens": (g.item_tokens, ("codes", "sum")),
        "model.tiger.dense_item": (g.dense_item, ("text", "text+codes")),
        "model.sasrec.positions_from": (s.positions_from, ("first", "last")),
        "train.dtype": (t.dtype, ("float32", "bfloat16")),
        "train.target_weights": (t.target_weights, ("batch", "equal")),
        "train.batch_order": (t.batch_order, ("length", "random")),
        "evaluate.dtype": (e.dtype, ("auto", "float32", "bfloat16")),
        "query.pooled_match": (cfg.query.pooled_match, ("none", "mean", "max")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if d.format == "table" and not d.interactions:
        raise ConfigError("data.format=table needs data.interactions=<path to CSV or Parquet>")
    if d.min_rating and not d.rating_column:
        raise ConfigError(f"data.min_rating={d.min_rating} needs data.rating_column=<the column of ratings>")
    if len({d.user_column, d.item_column, d.time_column}) < 3 or not d.user_column or not d.item_column:
        raise ConfigError("data.user_column, data.item_column and data.time_column must be three different, "
                          "non-empty column names")
    if not 0 < d.valid_fraction < 1 or not 0 < d.test_fraction < 1 or d.valid_fraction + d.test_fraction >= 1:
        raise ConfigError("data.valid_fraction and data.test_fraction must be in (0, 1) and sum to less than 1")
    if not 0 <= d.cold_items < 1:
        raise ConfigError(f"data.cold_items is the share of items held out as new, in [0, 1); got {d.cold_items}")
    positive = {"data.max_history": d.max_history, "quantize.num_levels": q.num_levels,
                "quantize.latent_dim": q.latent_dim, "quantize.hidden_dim": q.hidden_dim, "quantize.steps": q.steps,
                "quantize.batch_size": q.batch_size, "quantize.reseed_every": q.reseed_every,
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
    if q.num_levels > 25:
        raise ConfigError(f"quantize.num_levels={q.num_levels}: semantic IDs are written with one letter per level "
                          f"and the extra level, so at most 25 levels")
    if q.codebook_size < 2:
        raise ConfigError(f"quantize.codebook_size must be at least 2 (one code per level tells no items apart), "
                          f"got {q.codebook_size}")
    if s.d_model % s.num_heads:
        raise ConfigError(f"model.sasrec.d_model={s.d_model} must be divisible by model.sasrec.num_heads={s.num_heads}")
    for key, value in {"model.tiger.dropout": g.dropout, "model.sasrec.dropout": s.dropout,
                       "train.adam_beta2": t.adam_beta2}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if s.attention_dropout >= 1.0:
        raise ConfigError(f"model.sasrec.attention_dropout must be below 1 (in [0, 1), or < 0 to follow "
                          f"model.sasrec.dropout), got {s.attention_dropout}")
    if q.lr <= 0 or q.beta < 0 or q.collab_weight < 0 or q.diversity_weight < 0:
        raise ConfigError(f"quantize.lr must be above 0 and quantize.beta, collab_weight and diversity_weight at "
                          f"least 0; got {q.lr}, {q.beta}, {q.collab_weight}, {q.diversity_weight}")
    if q.inputs in ("collab", "text+collab") and not c.enabled:
        raise ConfigError(f"quantize.inputs={q.inputs} reads the collab stage's embeddings, which collab.enabled=false "
                          "turns off; set collab.enabled=true or quantize.inputs=text")
    if q.collab_weight > 0 and (q.method != "rqvae" or not c.enabled):
        raise ConfigError("quantize.collab_weight is the RQ-VAE's collaborative term: it needs quantize.method=rqvae "
                          "and collab.enabled=true")
    if g.dense_weight < 0 or g.generative_weight < 0 or g.dense_weight + g.generative_weight == 0 \
            or g.dense_temperature <= 0 or not 1 <= g.hybrid_candidates <= 1000:
        raise ConfigError(f"model.tiger.dense_weight and generative_weight must be >= 0 and not both 0, "
                          f"dense_temperature above 0 and hybrid_candidates in 1..1000; got {g.dense_weight}, "
                          f"{g.generative_weight}, {g.dense_temperature}, {g.hybrid_candidates}")
    if g.repeat_bias and not g.trie_softmax:
        raise ConfigError("model.tiger.repeat_bias offsets a trie node inside its parent's softmax, which needs "
                          "model.tiger.trie_softmax=true; set one of them to false")
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
