"""The stages' own choices: the recipe the collab stage trains its SASRec with."""

from __future__ import annotations

from genrec.config import load_config
from genrec.stages import sasrec_config

from conftest import TINY


def test_the_collab_stage_trains_the_sasrec_section_on_the_collab_schedule():
    cfg = load_config(TINY, ["model.sasrec.d_model=24", "model.sasrec.num_heads=2", "collab.max_steps=33",
                             "collab.lr=0.01", "collab.seed=5", "train.num_threads=3", "evaluate.dtype=bfloat16"])
    collab = sasrec_config(cfg)
    assert collab.model.kind == "sasrec" and collab.model.sasrec == cfg.model.sasrec
    t = collab.train
    assert (t.max_steps, t.lr, t.seed, t.batch_size, t.eval_every, t.patience) == (33, 0.01, 5, 16, 40, 2)
    assert (t.distill, t.select_metric, t.num_threads, t.weight_decay, t.warmup_steps) == (0.0, "ndcg@10", 3, 0.0, 33)
    assert collab.evaluate.methods == () and collab.evaluate.dtype == "float32"  # its default ranking, exactly
    assert collab.data == cfg.data and collab.collab == cfg.collab
