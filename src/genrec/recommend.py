"""Top-k recommendations for one history (item IDs) or one user of the dataset, from a trained model."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.batches import user_buckets
from genrec.checkpoint import check_catalog, load_model
from genrec.errors import GenrecError
from genrec.prepare import load_prepared
from genrec.tiger import Batch


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    score: float  # log-probability of the item under the model
    title: str


def recommend(run_dir: Path, *, k: int, history: list[str] | None = None, user: str | None = None,
              model_dir: Path | None = None, exclude_history: bool = True) -> list[Recommendation]:
    """Recommend k items after `history` (external item IDs, oldest first) or after user `user`'s sequence."""
    if (history is None) == (user is None):
        raise GenrecError("give either a history of item IDs (--history) or a user ID (--user), not both")
    if k < 1:
        raise GenrecError(f"k must be at least 1, got {k}")
    run_dir = Path(run_dir)
    dataset = load_prepared(run_dir / "prepare")
    model_dir = Path(model_dir) if model_dir else run_dir / "train" / "best"
    model = load_model(model_dir)
    codes_path = run_dir / "quantize" / "codes_with_suffix.npy"
    if codes_path.exists():
        check_catalog(model_dir, np.load(codes_path))
    if model.item_codes.shape[0] != len(dataset.item_ids):
        raise GenrecError(f"the model in {model_dir} knows {model.item_codes.shape[0]} items but {run_dir} has "
                          f"{len(dataset.item_ids)}; use the model trained on this run directory")
    index = {item: i for i, item in enumerate(dataset.item_ids)}
    bucket = 0
    if user is not None:
        users = {u: i for i, u in enumerate(dataset.user_ids)}
        if user not in users:
            raise GenrecError(f"user {user!r} is not in {run_dir / 'prepare'}; pass a known user or --history")
        items = dataset.sequences[users[user]].tolist()
        bucket = int(user_buckets([user], model.cfg.num_user_buckets)[0])
    else:
        unknown = [h for h in history if h not in index]
        if unknown:
            raise GenrecError(f"unknown item IDs in the history: {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''}; use IDs from {run_dir / 'prepare' / 'items.jsonl'}")
        items = [index[h] for h in history]
    if not items:
        raise GenrecError("the history is empty; give at least one item ID")
    batch = Batch(users=torch.tensor([bucket]), history=torch.tensor([items]))
    items, scores = model.recommend(batch, k, exclude_history=exclude_history)
    out = []
    for rank, (item, score) in enumerate(zip(items[0].tolist(), scores[0].tolist()), start=1):
        if item < 0:
            break
        title = html.unescape(str(dataset.items[item].get("title") or ""))
        out.append(Recommendation(rank, dataset.item_ids[item], score, title))
    return out
