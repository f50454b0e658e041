"""Stage `collab`: collaborative item embeddings for the semantic IDs.

Text embeddings put items that read alike under one prefix; the model then has to tell apart, deep in the
code, the items a user actually buys next. A SASRec trained on the training split (full softmax, selected on
validation, through the same trainer and evaluator) places items that are bought in the same contexts close
together, so the first codes already narrow the choice the way the next purchase does.

Writes, in the stage directory (nothing but the stamp when `collab.enabled` is false):
- `item_embeddings_raw.npy`: float32 [N, D], the SASRec item embeddings. An item seen in fewer than
  `collab.min_item_count` training sequences has learnt little but to be a negative, like every other such item
  (on Beauty 33 items never occur in training and collapse onto one point), so it takes instead the mean
  embedding of its `collab.text_neighbours` nearest items by text (cosine of the embed stage's vectors) among
  those seen often enough;
- `item_embeddings_l2norm.npy`: float32 [N, D], the same rows centred (minus the mean row, a direction shared by
  all items that would otherwise dominate the first k-means level) and L2-normalised: what `quantize` reads;
- `item_ids.json`: the item ids in row order;
- `sasrec/`: the SASRec run (log, summary, `best/`) and `summary.json` with its validation scores.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from genrec.config import Config, ModelConfig, TrainConfig
from genrec.distributed import DistInfo
from genrec.files import save_json, save_npy

logger = logging.getLogger(__name__)


def sasrec_config(cfg: Config) -> Config:
    """The recipe the collab stage trains: `cfg` with its model and train sections replaced by `cfg.collab`'s."""
    c = cfg.collab
    model = ModelConfig(kind="sasrec", d_model=c.d_model, num_heads=1, head_dim=c.d_model, d_ff=c.d_model,
                        encoder_layers=c.layers, decoder_layers=1, dropout=c.dropout, item_tokens="sum",
                        num_user_buckets=0, causal_encoder=True, trie_softmax=False)
    train = TrainConfig(batch_size=c.batch_size, lr=c.lr, weight_decay=0.0, warmup_steps=min(100, c.max_steps),
                        max_steps=c.max_steps, eval_every=c.eval_every, patience=c.patience, valid_beam_size=20,
                        select_metric="ndcg@10", distill=0.0, seed=c.seed,
                        num_threads=cfg.train.num_threads)
    return dataclasses.replace(cfg, model=model, train=train,
                               evaluate=dataclasses.replace(cfg.evaluate, dtype="float32"))


def centred_unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows minus the mean row, then L2-normalised (a row that becomes zero stays zero)."""
    x = x - x.mean(0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def item_counts(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    """[N] the number of sequences each item occurs in."""
    counts = np.zeros(num_items, dtype=np.int64)
    for seq in sequences:
        counts[np.unique(np.asarray(seq, dtype=np.int64))] += 1
    return counts


def borrow_from_text_neighbours(collab: np.ndarray, text: np.ndarray, cold: np.ndarray, k: int,
                                chunk: int = 1024) -> np.ndarray:
    """`collab` [N, D] with each `cold` [N] row replaced by the mean collab row of its k nearest warm items by
    the cosine of `text` [N, E] (L2-normalised rows)."""
    import torch

    warm = np.flatnonzero(~cold)
    cold_rows = np.flatnonzero(cold)
    out = collab.copy()
    if len(warm) == 0 or len(cold_rows) == 0:
        return out
    k = min(k, len(warm))
    warm_text, warm_collab = torch.from_numpy(text[warm]), torch.from_numpy(collab[warm])
    for lo in range(0, len(cold_rows), chunk):
        rows = cold_rows[lo : lo + chunk]
        near = (torch.from_numpy(text[rows]) @ warm_text.T).topk(k, dim=1).indices  # [c, k] into warm
        out[rows] = warm_collab[near].mean(1).numpy()
    return out


def collab(cfg: Config, run_dir: Path, out_dir: Path, dist: DistInfo) -> dict[str, Any]:
    if not cfg.collab.enabled:
        return {}
    from genrec import checkpoint as ckpt
    from genrec.prepare import load_prepared
    from genrec.quantize import load_embeddings
    from genrec.splits import make_split
    from genrec.train import train

    dataset = load_prepared(run_dir / "prepare")
    item_ids = dataset.item_ids
    # SASRec needs no semantic IDs; the item index stands in for the catalogue fingerprint its checkpoint keeps
    index_codes = np.arange(len(item_ids), dtype=np.int64)[:, None]  # [N, 1]
    if dist.is_main:
        (out_dir / "sasrec").mkdir(parents=True, exist_ok=True)
    summary = train(sasrec_config(cfg), run_dir, out_dir / "sasrec", dist, item_codes=index_codes)
    if not dist.is_main:
        return summary
    model = ckpt.load_model(out_dir / "sasrec" / "best")
    raw = model.item_emb.weight.detach()[: len(item_ids)].float().numpy()  # [N, D]; the last row is padding
    cold = item_counts(make_split(dataset, cfg.data).train, len(item_ids)) < cfg.collab.min_item_count  # [N]
    if cold.any():
        text = load_embeddings(run_dir / "embed", normalize=True)  # [N, E]
        raw = borrow_from_text_neighbours(raw, text, cold, cfg.collab.text_neighbours)
    summary["cold_items"] = int(cold.sum())
    save_npy(out_dir / "item_embeddings_raw.npy", raw)
    save_npy(out_dir / "item_embeddings_l2norm.npy", centred_unit_rows(raw))
    save_json(out_dir / "item_ids.json", list(item_ids))
    save_json(out_dir / "summary.json", summary)
    logger.info("collaborative embeddings: %d items x %d from SASRec step %d (valid ndcg@10 %.4f); %d items seen in "
                "fewer than %d training sequences borrow from their text neighbours", raw.shape[0], raw.shape[1],
                summary["best_step"], summary["best_valid/sasrec/ndcg@10"], summary["cold_items"],
                cfg.collab.min_item_count)
    return summary
