"""What each stage does, given the config, the run directory, the directory it writes into and the processes.
`pipeline` decides when a stage runs and makes its output appear whole; this module only does the work."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from genrec.config import Config, ModelConfig, TrainConfig
from genrec.distributed import DistInfo
from genrec.rundir import EMBEDDINGS, MODEL, SASREC, RunDir

logger = logging.getLogger(__name__)


def prepare(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> Any:
    from genrec.data.prepare import prepare

    return prepare(cfg.data, out_dir)


def embed(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> Any:
    from genrec.data.prepare import load_prepared
    from genrec.ids.embed import embed, resolve_template

    dataset = load_prepared(run.prepared)
    section = dataclasses.replace(cfg.embed, template=resolve_template(cfg.embed.template, cfg.data.format))
    return embed(section, dataset.items, dataset.item_ids, out_dir)


def sasrec_config(cfg: Config) -> Config:
    """The recipe the collab stage trains: the `model.sasrec` section as the model, with the `collab` section's
    schedule as the training."""
    c = cfg.collab
    train = TrainConfig(batch_size=c.batch_size, lr=c.lr, weight_decay=0.0, warmup_steps=min(100, c.max_steps),
                        max_steps=c.max_steps, eval_every=c.eval_every, patience=c.patience, valid_beam_size=20,
                        select_metric="ndcg@10", distill=0.0, seed=c.seed, num_threads=cfg.train.num_threads)
    return dataclasses.replace(cfg, model=ModelConfig(kind="sasrec", sasrec=cfg.model.sasrec), train=train,
                               evaluate=dataclasses.replace(cfg.evaluate, dtype="float32", methods=()))


def collab(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> Any:
    """Train the SASRec, then write its item embeddings (rarely seen items borrowed from their text neighbours)."""
    if not cfg.collab.enabled:
        return {}
    import numpy as np

    from genrec.data.prepare import load_prepared
    from genrec.data.splits import make_split
    from genrec.files import save_json
    from genrec.ids.collab import item_counts, write_collab_embeddings
    from genrec.ids.quantize import load_embeddings
    from genrec.models.checkpoint import load_model
    from genrec.train import train

    if dist.is_main:
        (out_dir / SASREC).mkdir(parents=True, exist_ok=True)
    summary = train(sasrec_config(cfg), run, out_dir / SASREC, dist)
    if not dist.is_main:
        return summary
    dataset = load_prepared(run.prepared)
    model = load_model(out_dir / SASREC / MODEL)
    embeddings = model.item_embeddings().detach().float().numpy()  # [N, D]
    cold = item_counts(make_split(dataset, cfg.data).train, dataset.num_items) < cfg.collab.min_item_count  # [N]
    has_text = (run.stage("embed") / EMBEDDINGS).is_file()
    if cold.any() and not has_text:  # no text to borrow from: rare items keep their own, little-trained rows
        logger.warning("%d items seen in fewer than %d training sequences keep their own SASRec embeddings: the "
                       "items have no text to borrow from", int(cold.sum()), cfg.collab.min_item_count)
        cold = np.zeros_like(cold)
    text = load_embeddings(run.stage("embed"), normalize=True) if cold.any() else None  # [N, E]
    raw = write_collab_embeddings(embeddings, item_ids=dataset.item_ids, cold=cold, text=text,
                                  text_neighbours=cfg.collab.text_neighbours, out_dir=out_dir)
    summary["cold_items"] = int(cold.sum())
    save_json(out_dir / "summary.json", summary)
    logger.info("collaborative embeddings: %d items x %d from SASRec step %d (valid ndcg@10 %.4f); %d items seen in "
                "fewer than %d training sequences borrow from their text neighbours", raw.shape[0], raw.shape[1],
                summary["best_step"], summary["best_valid/sasrec/ndcg@10"], summary["cold_items"],
                cfg.collab.min_item_count)
    return summary


def quantize(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> Any:
    from genrec.errors import GenrecError
    from genrec.ids.quantize import quantize

    has_text = (run.stage("embed") / EMBEDDINGS).is_file()
    inputs = cfg.quantize.inputs if cfg.quantize.inputs != "auto" else ("collab" if cfg.collab.enabled else "text")
    if "text" in inputs and not has_text:
        raise GenrecError("the items have no text, so there are no text embeddings to quantize; set "
                          "collab.enabled=true and quantize.inputs=auto (semantic IDs from the collaborative "
                          "embeddings need no text)")
    dirs = [run.stage(name) for name in (("embed", "collab") if inputs == "text+collab" else
                                         ("collab",) if inputs == "collab" else ("embed",))]
    fit_rows = None
    if cfg.data.cold_items > 0:  # held-out new items are encoded by the fitted quantizer, never fitted on
        from genrec.data.cold import held_out_items
        from genrec.data.prepare import load_prepared

        fit_rows = ~held_out_items(load_prepared(run.prepared), cfg.data)
    collab_dir = run.stage("collab") if cfg.quantize.collab_weight > 0 else None
    return quantize(cfg.quantize, dirs, out_dir, fit_rows, collab_dir)


def train(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> Any:
    from genrec.train import train

    return train(cfg, run, out_dir, dist)


def evaluate(cfg: Config, run: RunDir, out_dir: Path, dist: DistInfo) -> Any:
    from genrec.evaluation.evaluator import evaluate_run

    return evaluate_run(cfg, run, out_dir, dist)


RUN = {"prepare": prepare, "embed": embed, "collab": collab, "quantize": quantize, "train": train,
       "evaluate": evaluate}
