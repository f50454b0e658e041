"""Top-k recommendations for one history (item IDs) or one user of the dataset, from a trained model."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import torch

from genrec.config import Config
from genrec.data.batches import Batch, user_buckets
from genrec.data.prepare import ITEMS_FILE, load_prepared
from genrec.errors import GenrecError
from genrec.models.checkpoint import check_catalog, load_model
from genrec.rundir import RunDir
from genrec.workspace import catalog_of


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    score: float  # log-probability of the item under the model
    title: str


def recommend(cfg: Config, *, k: int, history: list[str] | None = None, user: str | None = None,
              model_dir: Path | None = None, exclude_history: bool = True) -> list[Recommendation]:
    """Recommend k items after `history` (external item IDs, oldest first) or after user `user`'s sequence, by
    the model's default ranking, from the run directory of `cfg`."""
    if (history is None) == (user is None):
        raise GenrecError("give either a history of item IDs (--history) or a user ID (--user), not both")
    if k < 1:
        raise GenrecError(f"k must be at least 1, got {k}")
    run = RunDir(cfg.run_dir)
    dataset = load_prepared(run.prepared)
    model_dir = Path(model_dir) if model_dir else run.model
    model = load_model(model_dir)
    catalog = catalog_of(cfg, run, dataset, with_sids=model.uses_sids)
    check_catalog(model_dir, catalog)
    index = catalog.index()
    bucket = 0
    if user is not None:
        users = {u: i for i, u in enumerate(dataset.user_ids)}
        if user not in users:
            raise GenrecError(f"user {user!r} is not in {run.prepared}; pass a known user or --history")
        items = dataset.sequences[users[user]].tolist()
        bucket = int(user_buckets([user], getattr(model.cfg, "num_user_buckets", 0))[0])
    else:
        unknown = [h for h in history if h not in index]
        if unknown:
            raise GenrecError(f"unknown item IDs in the history: {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''}; use IDs from {run.prepared / ITEMS_FILE}")
        items = [index[h] for h in history]
    if not items:
        raise GenrecError("the history is empty; give at least one item ID")
    batch = Batch(users=torch.tensor([bucket]), history=torch.tensor([items]))
    items, scores = model.ranking(model.methods[0]).recommend(batch, k, exclude_history)
    out = []
    for rank, (item, score) in enumerate(zip(items[0].tolist(), scores[0].tolist()), start=1):
        if item < 0:
            break
        title = html.unescape(str(catalog.items[item].get("title") or ""))
        out.append(Recommendation(rank, catalog.item_ids[item], score, title))
    return out
