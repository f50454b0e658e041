"""The HTTP service (`genrec serve`): a trained model kept in memory behind a small REST API and a web page.

    POST /recommend     {"history": [item IDs] | "user": ID, "k": 10, "method": null, "exclude_history": true}
    POST /search        {"query": "red nail polish", "k": 10, "history": [item IDs] (optional: personalised)}
    GET  /items/{id}    an item's title (and whether it is new)
    GET  /items?q=...   title search, for building a history
    GET  /users/random  a random user of the run and their history (run directories only)
    GET  /health        model loaded, catalogue size, version, methods
    GET  /              the web page; /docs the generated OpenAPI docs

Concurrent /recommend requests are gathered into one batched model call (`batcher.Batcher`). Every request is
validated (unknown item IDs or fields, an empty or too long history, k out of range, malformed JSON, a body over
`max_body_bytes`): a 4xx with a message that names the problem, and the service keeps serving. No request names
a file. FastAPI and uvicorn come with the optional extra `genrec[serve]`.
"""

from __future__ import annotations

import asyncio
import gc
import random
from contextlib import asynccontextmanager
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from genrec.errors import GenrecError
from genrec.query.personal import rerank
from genrec.query.searcher import Searcher
from genrec.serve.batcher import Batcher
from genrec.serve.recommender import Recommender

try:
    VERSION = version("genrec")
except PackageNotFoundError:  # run from a source tree that was not installed
    VERSION = "unknown"
MAX_K = 1000
MAX_ID_CHARS = 200


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[str] | None = Field(None, description="item IDs, oldest first (or give `user`)")
    user: str | None = Field(None, max_length=MAX_ID_CHARS, description="a user of the run's data")
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")
    beam_size: int | None = Field(None, ge=1, le=MAX_K, description="search width, at least k (default: k)")
    method: str | None = Field(None, max_length=40, description="ranking method (default: the model's first)")
    exclude_history: bool = Field(True, description="leave the history's items out of the ranking")

    @field_validator("history")
    @classmethod
    def _ids(cls, history: list[str] | None) -> list[str] | None:
        if history is not None and any(len(i) > MAX_ID_CHARS for i in history):
            raise ValueError(f"an item ID is longer than {MAX_ID_CHARS} characters")
        return history


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=500, description="words describing the items wanted")
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")
    history: list[str] | None = Field(None, description="item IDs, oldest first: personalise with the recommender")


class Guard:
    """Plain ASGI middleware (no extra task per request): refuses bodies over the limit or of unknown size, and
    counts each POST as on its way to the batcher until the endpoint queues it (or it ends)."""

    def __init__(self, app: Any, *, batcher: Batcher, max_body_bytes: int) -> None:
        self.app, self.batcher, self.max_body_bytes = app, batcher, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            response = JSONResponse({"detail": f"the request body is over {self.max_body_bytes} bytes"}, 413)
            return await response(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if length is None:
            response = JSONResponse({"detail": "send the request body with a Content-Length header"}, 411)
            return await response(scope, receive, send)
        state = scope.setdefault("state", {})
        state["arriving"] = True
        self.batcher.on_the_way += 1  # until queued (or refused), a batch being gathered waits for it
        try:
            await self.app(scope, receive, send)
        finally:
            if state.get("arriving"):
                state["arriving"] = False
                self.batcher.on_the_way -= 1


def create_app(rec: Recommender, *, max_batch: int = 64, max_wait_ms: float = 5.0, batched: bool = True,
               max_history: int = 200, max_body_bytes: int = 65536, searcher: Searcher | None = None) -> FastAPI:
    """The service around a loaded Recommender (and, for /search, the run's query model)."""
    titles_lower = [t.lower() for t in rec.titles]

    def run(key: tuple[str | None, int, bool, int | None], payloads: list[tuple[list[int], int]]) -> list[Any]:
        method, k, exclude, beam_size = key
        rows, buckets = [p[0] for p in payloads], [p[1] for p in payloads]
        return rec.rank(rows, buckets, k, exclude, method, beam_size)

    def limit(key: tuple[str | None, int, bool, int | None]) -> int:  # a method's own bound (exact: 8 users)
        method = key[0] or rec.methods[0]
        return rec.model.ranking(method).max_batch or max_batch

    batcher = Batcher(run, max_batch=max_batch, max_wait_ms=max_wait_ms, batched=batched, limit=limit)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        # everything loaded so far (model, catalogue, titles: some 250,000 objects on Beauty) lives as long as the
        # service: out of the collector's sight, a full collection no longer walks them (about 280 ms on Beauty,
        # a stall of every request in flight) but only what requests allocate
        gc.collect()
        gc.freeze()
        try:
            yield
            await batcher.stop()  # in-flight requests are answered first
        finally:
            gc.unfreeze()

    app = FastAPI(title="genrec", version=VERSION, lifespan=lifespan,
                  description="Recommendations from a generative retrieval model (semantic IDs).")
    app.state.batcher = batcher

    app.add_middleware(Guard, batcher=batcher, max_body_bytes=max_body_bytes)

    search_lock = asyncio.Lock()  # one query-model call at a time

    def item(row: int, score: float | None = None, rank: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"item_id": rec.item_ids[row], "title": rec.titles[row], "new": rec.is_new(row)}
        if score is not None:
            out.update(rank=rank, score=score)
        if searcher is not None:
            out["about"] = searcher.describe(rec.item_ids[row])  # what its semantic-ID prefix stands for
        return out

    @app.post("/search")
    async def search(req: SearchRequest, request: Request) -> dict[str, Any]:
        """Catalogue items for a natural-language query; with a history, re-ranked with the recommender."""
        if searcher is None:
            raise HTTPException(404, "this service has no query model; run 'genrec train-query' on the run and "
                                     "serve the run directory")
        if not req.query.strip():
            raise HTTPException(422, "the query is empty; give some words, e.g. 'red nail polish'")
        if req.history is not None and len(req.history) > max_history:
            raise HTTPException(422, f"history has {len(req.history)} items; at most {max_history} are accepted")
        try:
            row = rec.history_row(req.history) if req.history else None
        except GenrecError as err:
            raise HTTPException(422, str(err)) from None
        n = max(req.k, searcher.cfg.candidates) if row else req.k
        if n > len(rec.item_ids):
            raise HTTPException(422, f"k={req.k} is beyond the catalogue's {len(rec.item_ids)} items")
        async with search_lock:
            rows, scores = await asyncio.to_thread(searcher.answer, [req.query.strip()], n, n if row else None)
        rows, scores = rows[0], scores[0]
        if row:  # personalised: the recommender's scores of the candidates, through the batcher
            if request.scope.get("state", {}).get("arriving"):
                request.scope["state"]["arriving"] = False
                batcher.on_the_way -= 1
            recs = await batcher.submit((None, n, False, n), (row, 0))
            rows, scores = rerank(rows, scores, [searcher.index.get(r.item_id, -1) for r in recs],
                                  [r.score for r in recs], searcher.history_weight, req.k)
        items = [item(rec.index[searcher.catalog.item_ids[r]], s, i)
                 for i, (r, s) in enumerate(zip(rows, scores), start=1) if r >= 0]
        return {"query": req.query, "k": req.k, "personalised": bool(row), "items": items}

    @app.post("/recommend")
    async def recommend(req: RecommendRequest, request: Request) -> dict[str, Any]:
        """Top-k items after a history (or a known user's sequence), with titles and scores."""
        if (req.history is None) == (req.user is None):
            raise HTTPException(422, "give either history (a list of item IDs) or user, not both or neither")
        if req.history is not None and not req.history:
            raise HTTPException(422, "history is empty; give at least one item ID")
        if req.history is not None and len(req.history) > max_history:
            raise HTTPException(422, f"history has {len(req.history)} items; at most {max_history} are accepted")
        if req.k > len(rec.item_ids):
            raise HTTPException(422, f"k={req.k} is beyond the catalogue's {len(rec.item_ids)} items")
        if req.beam_size is not None and not req.k <= req.beam_size <= len(rec.item_ids):
            raise HTTPException(422, f"beam_size={req.beam_size} must be between k={req.k} and the catalogue's "
                                     f"{len(rec.item_ids)} items")
        method = req.method or rec.methods[0]
        try:
            rec.check_method(method)
            row, bucket = (rec.history_row(req.history), 0) if req.history is not None else (None, 0)
        except GenrecError as err:
            raise HTTPException(422, str(err)) from None
        if row is None:
            try:
                row, bucket = rec.user_row(req.user)
            except GenrecError as err:
                raise HTTPException(404, str(err)) from None
        if request.scope.get("state", {}).get("arriving"):
            request.scope["state"]["arriving"] = False
            batcher.on_the_way -= 1  # queued now: a batch being gathered no longer waits for it
        recs = await batcher.submit((method, req.k, req.exclude_history, req.beam_size), (row, bucket))
        return {"method": method, "k": req.k, "history": [item(r) for r in row],
                "items": [item(rec.index[r.item_id], r.score, r.rank) for r in recs]}

    @app.get("/items/{item_id}")
    async def get_item(item_id: str) -> dict[str, Any]:
        row = rec.index.get(item_id)
        if row is None:
            raise HTTPException(404, f"no item {item_id!r} in the catalogue")
        return item(row)

    @app.get("/items")
    async def search_items(q: str = Query(..., min_length=1, max_length=100), limit: int = Query(20, ge=1, le=100)
                           ) -> dict[str, Any]:
        """Items whose title (or ID) contains every word of q, case-insensitive."""
        words = q.lower().split()
        found = [i for i, t in enumerate(titles_lower) if all(w in t or w in rec.item_ids[i].lower() for w in words)]
        return {"query": q, "total": len(found), "items": [item(i) for i in found[:limit]]}

    @app.get("/users/random")
    async def random_user() -> dict[str, Any]:
        if not rec.users:
            raise HTTPException(404, "this service was started on a model directory, which knows no users")
        user = random.choice(list(rec.users))
        return {"user": user, "history": [item(r) for r in rec.users[user]]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": type(rec.model).__name__, "source": rec.source,
                "items": len(rec.item_ids), "methods": list(rec.methods), "version": VERSION,
                "search": searcher is not None, "dtype": rec.dtype, "threads": torch.get_num_threads(),
                "batching": {"enabled": batched, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                             "model_calls": batcher.calls, "requests": batcher.requests}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("genrec.serve").joinpath("page.html").read_text()

    return app
