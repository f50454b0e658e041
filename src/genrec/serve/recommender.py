"""`Recommender`: load a trained model once, then answer many requests, from Python, the CLI or a service.

    from genrec import Recommender
    rec = Recommender.load("runs/beauty")                    # a run directory, or a model directory
    rec.recommend(["B004756YJA", "B004ZT0SSG"], k=10)          # one history -> [Recommendation, ...]
    rec.recommend([["B004756YJA"], ["B004ZT0SSG"]], k=10)      # many histories -> one list each, in one batch
    rec.recommend_user("A1YJEY40YUW4SE", k=10)                # a user of the run's data (run directories only)

A model directory carries the external IDs and titles of the items it ranks, so it recommends on its own; a run
directory adds its users' sequences. The defaults are the CLI's and the evaluator's: history items are removed
from the ranking, the model's default ranking method is used, and `dtype="auto"` runs the model in bfloat16 where
the CPU computes it natively (as `genrec evaluate` does; about twice the throughput on large batches).
Histories are always padded to the model's history length, so a call's shapes depend only on how many histories
it ranks (bf16 kernels are prepared once per shape); on Beauty, 200 test histories ranked together and one at a
time gave the same lists in both number formats.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from genrec import precision
from genrec.data.batches import Batch, user_buckets
from genrec.errors import GenrecError
from genrec.models.checkpoint import load_items, load_model
from genrec.models.types import offers
from genrec.rundir import RunDir


@dataclass(frozen=True)
class Recommendation:
    rank: int  # 1 = best
    item_id: str
    score: float  # the method's score (log-probability of the item for generative, exact and sasrec)
    title: str


def shape_bucket(n: int) -> int:
    """The batch size n histories are ranked at under bf16: n up to 4, then the next power of two up to 16, then
    the next multiple of 16. The first call at a new shape costs about half a call more (bf16 kernels are prepared
    per shape), so a service seeing every batch size from 1 to 64 would pay that over and over at first; this way
    at most 7 + n / 16 shapes, for at most 15 wasted rows (under a quarter of a batch of 64)."""
    if n <= 4:
        return n
    if n <= 16:
        return 1 << (n - 1).bit_length()
    return -(-n // 8) * 8


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


class Recommender:
    """A trained model with the item IDs and titles it ranks (and, loaded from a run, the run's users)."""

    def __init__(self, model: nn.Module, *, item_ids: list[str], titles: list[str],
                 users: dict[str, list[int]] | None = None, source: str = "", dtype: str = "auto") -> None:
        num_items = model.checkpoint_meta()["num_items"]
        if len(item_ids) != num_items:
            raise GenrecError(f"{source}: the model ranks {num_items} items but {len(item_ids)} item IDs "
                              f"came with it; retrain with 'genrec train --force'")
        self.model, self.item_ids, self.titles = model.eval(), item_ids, titles
        self.users, self.source = users, source
        if dtype not in precision.DTYPES:
            raise GenrecError(f"dtype {dtype!r} is not one of {', '.join(precision.DTYPES)}")
        device = next(model.parameters()).device
        self.dtype = precision.resolve_dtype(dtype, device.type)  # "float32" or "bfloat16"
        self.index = {item: i for i, item in enumerate(item_ids)}

    @classmethod
    def load(cls, path: str | Path, *, run_dir: str | Path | None = None, device: str = "cpu",
             dtype: str = "auto") -> Recommender:
        """From a run directory (its selected model, `train/best`, plus its users) or a model directory;
        `run_dir` gives a model directory the users of a run (whose items must be the model's); `dtype`: "auto",
        "float32" or "bfloat16"."""
        path = Path(path)
        if not path.exists():
            raise GenrecError(f"{path} does not exist; pass a run directory (runs/<name>) or a model directory "
                              f"(runs/<name>/train/best)")
        model_dir = path if is_model_dir(path) else RunDir(path).model
        if not is_model_dir(model_dir):
            raise GenrecError(f"{path} is neither a model directory (config.json + model.safetensors) nor a run "
                              f"directory with a trained model ({model_dir} is missing); run 'genrec train' first")
        model = load_model(model_dir, map_location=device)
        items = load_items(model_dir)
        run = RunDir(run_dir) if run_dir is not None else (RunDir(path) if model_dir != path else None)
        users = None
        if run is not None and run.stamp("prepare").is_file():
            from genrec.data.prepare import load_prepared

            dataset = load_prepared(run.prepared)
            if items is not None and items[0][: len(dataset.item_ids)] != dataset.item_ids:  # added items: after
                raise GenrecError(f"the model in {model_dir} ranks other items than the data of {run.root} "
                                  f"({len(items[0])} vs {len(dataset.item_ids)} items, or other IDs or order); "
                                  f"use that run's model, or retrain with 'genrec train --force'")
            users = {u: seq.tolist() for u, seq in zip(dataset.user_ids, dataset.sequences)}
            if items is None:
                items = dataset.item_ids, [str(fields.get("title") or "") for fields in dataset.items]
        elif run_dir is not None:
            raise GenrecError(f"{run.root} has no prepared data (prepare/ is missing); run 'genrec prepare' first")
        if items is None:
            raise GenrecError(f"{model_dir} was written without the item IDs it ranks (items.jsonl); load its run "
                              f"directory instead, or retrain with 'genrec train --force'")
        return cls(model, item_ids=items[0], titles=[html.unescape(t) for t in items[1]], users=users,
                   source=str(path), dtype=dtype)

    @property
    def methods(self) -> tuple[str, ...]:
        """The ranking methods the model offers; the first is the default (the model's first default method)."""
        first = tuple(getattr(self.model, "default_methods", self.model.methods))[:1]
        return first + tuple(m for m in self.model.methods if m not in first)

    def recommend(self, histories: Sequence[str] | Sequence[Sequence[str]], k: int = 10, *,
                  exclude_history: bool = True, method: str | None = None
                  ) -> list[Recommendation] | list[list[Recommendation]]:
        """Top-k items after one history (external item IDs, oldest first) or after each of many, ranked in one
        batch. Returns one list of Recommendations per history (a single list for a single history)."""
        if isinstance(histories, str):
            raise GenrecError("a history is a list of item IDs, not one string; pass [item_id, ...]")
        single = len(histories) > 0 and all(isinstance(h, str) for h in histories)
        many = [list(histories)] if single else [list(h) for h in histories]
        rows = [self.history_row(history, n) for n, history in enumerate(many)]
        out = self.rank(rows, [0] * len(rows), k, exclude_history, method)
        return out[0] if single else out

    def history_row(self, history: Sequence[str], n: int = 0) -> list[int]:
        """Catalogue rows of a history of external item IDs; GenrecError naming unknown IDs."""
        if isinstance(history, str) or not all(isinstance(i, str) for i in history):
            raise GenrecError(f"history {n} is not a list of item IDs (strings)")
        unknown = [i for i in history if i not in self.index]
        if unknown:
            raise GenrecError(f"unknown item IDs in history {n}: {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''}; use IDs of the model's catalogue")
        return [self.index[i] for i in history]

    def user_row(self, user: str) -> tuple[list[int], int]:
        """A known user's whole sequence (catalogue rows) and hashed user token."""
        if self.users is None:
            raise GenrecError(f"{self.source} is a model directory, which knows no users; load the run directory "
                              f"or pass the user's history")
        if user not in self.users:
            raise GenrecError(f"user {user!r} is not in the data of {self.source}; pass a known user or a history")
        return self.users[user], int(user_buckets([user], getattr(self.model.cfg, "num_user_buckets", 0))[0])

    def recommend_user(self, user: str, k: int = 10, *, exclude_history: bool = True,
                       method: str | None = None) -> list[Recommendation]:
        """Top-k items after a user's whole sequence (their hashed user token too, where the model has them)."""
        row, bucket = self.user_row(user)
        return self.rank([row], [bucket], k, exclude_history, method)[0]

    def check_method(self, name: str) -> None:
        if not offers(self.methods, name):
            raise GenrecError(f"method {name!r} is not offered by this {type(self.model).__name__}; choose from "
                              f"{', '.join(self.methods)}")

    def is_new(self, row: int) -> bool:
        """Whether the model counts the item as new (in no training sequence, or added after training)."""
        dense = getattr(self.model, "dense", None)
        return bool(dense.new_items[row]) if dense is not None else False

    @torch.no_grad()
    def rank(self, rows: list[list[int]], buckets: list[int], k: int, exclude_history: bool,
             method: str | None, beam_size: int | None = None) -> list[list[Recommendation]]:
        """Top-k lists of many histories (catalogue rows, oldest first) in one batch: what every caller ends in.
        `beam_size` (>= k) searches wider than k and keeps the best k (default: a beam of k)."""
        if not rows:
            return []
        name = method or self.methods[0]
        self.check_method(name)
        if not 1 <= k <= len(self.item_ids):
            raise GenrecError(f"k must be between 1 and the catalogue's {len(self.item_ids)} items, got {k}")
        if any(not r for r in rows):
            raise GenrecError("a history is empty; give at least one item ID")
        if beam_size is not None and beam_size < k:
            raise GenrecError(f"beam_size={beam_size} is below k={k}; a beam returns at most its width")
        n, T = len(rows), self.model.max_history
        if self.dtype == "bfloat16":  # a few batch shapes, each prepared once (rows repeated, answers dropped)
            size = shape_bucket(n)
            rows, buckets = rows + rows[-1:] * (size - n), buckets + buckets[-1:] * (size - n)
        history = torch.tensor([[-1] * (T - len(r[-T:])) + r[-T:] for r in rows])  # [B, T] left-padded
        device = next(self.model.parameters()).device
        batch = Batch(users=torch.tensor(buckets), history=history).to(device)
        with precision.autocast(self.dtype, device.type):
            items, scores = self.model.ranking(name).recommend(batch, max(k, beam_size or k), exclude_history)
        items, scores = items[:n, :k], scores[:n, :k]
        out = []
        for row_items, row_scores in zip(items.tolist(), scores.float().tolist()):
            out.append([Recommendation(rank, self.item_ids[i], s, self.titles[i])
                        for rank, (i, s) in enumerate(zip(row_items, row_scores), start=1) if i >= 0])
        return out
