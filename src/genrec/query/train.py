"""Train the default query model on a run's items (`genrec train-query`): encode the training queries once
with the frozen sentence encoder, fit the decoder for `epochs`, keep the epoch with the best validation hit@10
(held-out queries of validation items; the test items' queries are never looked at), and write it atomically."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from genrec.config import to_dict
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.query.config import QueryConfig
from genrec.query.data import Example, QueryData, make_queries
from genrec.query.encoder import TextEncoder, pad
from genrec.query.metrics import query_metrics
from genrec.query.model import QueryModel

logger = logging.getLogger(__name__)
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def answer(model: QueryModel, encoder: TextEncoder, queries: list[str], *, k: int, beam_size: int,
           batch_size: int = 128) -> tuple[list[list[int]], list[list[float]]]:
    """Top-k catalogue rows and log-probabilities for each query (beam `beam_size` >= k)."""
    model.eval()
    rows, scores = [], []
    with torch.no_grad():
        for start in range(0, len(queries), batch_size):
            enc = pad(encoder.encode(queries[start:start + batch_size]))
            res = model.search(enc, beam_size=max(k, beam_size))
            rows += res.items[:, :k].tolist()
            scores += res.scores[:, :k].tolist()
    return rows, scores


def score(model: QueryModel, encoder: TextEncoder, catalog: Catalog, examples: list[Example], beam_size: int
          ) -> dict[str, float]:
    ranked, _ = answer(model, encoder, [e.query for e in examples], k=10, beam_size=beam_size)
    return query_metrics(ranked, [e.item for e in examples], catalog.items)


def train_query_model(cfg: QueryConfig, catalog: Catalog, *, encoder_name: str, out_dir: Path,
                      data: QueryData | None = None) -> dict:
    """Fit, select on validation, score validation and test, and write `out_dir` (config, weights, summary)."""
    if catalog.text is None:
        raise GenrecError("the query model needs the items' text embeddings; run 'genrec embed' first")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    data = data or make_queries(catalog.items, seed=cfg.seed, held_out=cfg.held_out, windows=cfg.train_windows)
    if not data.train or not data.valid:
        raise GenrecError(f"the items give {len(data.train)} training and {len(data.valid)} validation queries; "
                          f"the query model needs item titles (3+ words) and categories")
    t0 = time.perf_counter()
    encoder = TextEncoder(encoder_name, max_tokens=cfg.max_tokens)
    states = encoder.encode([e.query for e in data.train])
    targets = torch.tensor([e.item for e in data.train])
    encode_s = time.perf_counter() - t0
    logger.info("encoded %d training queries in %.0f s", len(states), encode_s)
    model = QueryModel(cfg=cfg, encoder_dim=encoder.dim, level_sizes=catalog.level_sizes)
    model.attach(catalog.trie, torch.from_numpy(catalog.text))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(states) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, min(200, steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, history = -1.0, None, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for idx in torch.randperm(len(states), generator=gen).split(cfg.batch_size):
            loss = model(pad([states[i] for i in idx.tolist()]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        valid = score(model, encoder, catalog, data.valid, cfg.beam_size)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **{f"valid/{k}": v for k, v in valid.items()}})
        logger.info("query model epoch %d/%d: loss %.3f, valid hit@10 %.4f ndcg@10 %.4f", epoch, cfg.epochs,
                    history[-1]["loss"], valid["hit@10"], valid["ndcg@10"])
        if valid["hit@10"] > best:
            best, best_state = valid["hit@10"], {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    summary = {"best_epoch": max(history, key=lambda h: h["valid/hit@10"])["epoch"], "history": history,
               "valid": score(model, encoder, catalog, data.valid, cfg.beam_size),
               "test": score(model, encoder, catalog, data.test, cfg.beam_size),
               "train_queries": len(data.train), "valid_queries": len(data.valid), "test_queries": len(data.test),
               "encode_seconds": round(encode_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
    save_query_model(model, out_dir, encoder_name=encoder_name, catalog=catalog, summary=summary)
    return summary


def save_query_model(model: QueryModel, out_dir: Path, *, encoder_name: str, catalog: Catalog, summary: dict) -> None:
    """config.json + model.safetensors + summary.json, written under a temporary name and renamed into place."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = {"kind": "query", "query": to_dict(model.cfg), "encoder": encoder_name, "encoder_dim": model.encoder_dim,
              "level_sizes": model.level_sizes, "catalog": catalog.fingerprint(with_sids=True)}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_query_model(directory: Path, catalog: Catalog) -> tuple[QueryModel, str]:
    """The query model of `directory` and its encoder's name; GenrecError when it is missing or was trained on
    other semantic IDs than `catalog`'s."""
    from genrec.config import from_dict

    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise GenrecError(f"{directory} holds no query model (config.json + model.safetensors); run "
                          f"'genrec train-query' first")
    config = json.loads((directory / CONFIG).read_text())
    if config.get("catalog") != catalog.fingerprint(with_sids=True):
        raise GenrecError(f"the query model in {directory} was trained on other semantic IDs than the run's "
                          f"({catalog.num_items} items); retrain it with 'genrec train-query'")
    model = QueryModel(cfg=from_dict(QueryConfig, config["query"]), encoder_dim=config["encoder_dim"],
                       level_sizes=config["level_sizes"])
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    if catalog.text is None:
        raise GenrecError("the query model needs the items' text embeddings; run 'genrec embed' first")
    return model.attach(catalog.trie, torch.from_numpy(catalog.text)).eval(), config["encoder"]
