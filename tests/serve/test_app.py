"""The HTTP service through the ASGI client: the same items as the Recommender (what `genrec recommend` prints)
for the same history, every bad request a 4xx that names the problem with the service still answering, and
concurrent requests batched into fewer model calls with the same answers as one at a time."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from genrec.serve.app import create_app
from genrec.serve.recommender import Recommender


@pytest.fixture(scope="module")
def rec(hybrid_run) -> Recommender:
    return Recommender.load(hybrid_run[0])


@pytest.fixture(scope="module")
def client(rec):
    with TestClient(create_app(rec, max_wait_ms=2.0)) as c:
        yield c


def test_recommend_answers_what_the_recommender_answers(client, rec):
    for method in rec.methods:
        for exclude in (True, False):
            r = client.post("/recommend", json={"history": ["S00000", "S00001", "S00002"], "k": 7, "method": method,
                                                "exclude_history": exclude})
            assert r.status_code == 200, r.text
            body = r.json()
            want = rec.recommend(["S00000", "S00001", "S00002"], k=7, method=method, exclude_history=exclude)
            assert [i["item_id"] for i in body["items"]] == [w.item_id for w in want]
            assert [i["score"] for i in body["items"]] == pytest.approx([w.score for w in want], abs=1e-5)
            assert [i["title"] for i in body["items"]] == [w.title for w in want]
            assert [h["item_id"] for h in body["history"]] == ["S00000", "S00001", "S00002"]
    wide = client.post("/recommend", json={"history": ["S00000"], "k": 3, "beam_size": 64}).json()["items"]
    assert [i["item_id"] for i in wide] == [w.item_id for w in rec.recommend(["S00000"], k=64)][:3]
    user = next(iter(rec.users))
    r = client.post("/recommend", json={"user": user, "k": 5})
    assert [i["item_id"] for i in r.json()["items"]] == [w.item_id for w in rec.recommend_user(user, k=5)]
    assert r.json()["method"] == "hybrid"  # a model with a dense head ranks by the hybrid unless told


def test_items_search_users_and_health(client, rec):
    assert client.get("/items/S00003").json() == {"item_id": "S00003", "title": rec.titles[rec.index["S00003"]],
                                                  "new": False}
    found = client.get("/items", params={"q": "Lipstick red"}).json()
    assert found["total"] >= 1 and all("lipstick" in i["title"].lower() and "red" in i["title"].lower()
                                       for i in found["items"])
    user = client.get("/users/random").json()
    assert user["user"] in rec.users and [h["item_id"] for h in user["history"]] == \
        [rec.item_ids[r] for r in rec.users[user["user"]]]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == len(rec.item_ids)
    assert health["methods"] == list(rec.methods) and health["batching"]["enabled"] is True
    assert health["dtype"] == rec.dtype in ("float32", "bfloat16") and health["threads"] >= 1
    assert "genrec" in client.get("/").text and client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize("body,status,message", [
    ({"history": ["S00000", "NOPE"], "k": 5}, 422, "unknown item IDs in history 0: NOPE"),
    ({"history": [], "k": 5}, 422, "history is empty"),
    ({"history": ["S00000"] * 201, "k": 5}, 422, "history has 201 items; at most 200"),
    ({"history": ["S00000"], "k": 0}, 422, "greater than or equal to 1"),
    ({"history": ["S00000"], "k": 1001}, 422, "less than or equal to 1000"),
    ({"history": ["S00000"], "k": 500}, 422, "k=500 is beyond the catalogue's 64 items"),
    ({"history": ["S00000"], "k": 5, "colour": "red"}, 422, "Extra inputs are not permitted"),
    ({"history": ["S00000"], "user": "U00001", "k": 5}, 422, "either history"),
    ({"k": 5}, 422, "either history"),
    ({"history": ["S00000"], "method": "telepathy"}, 422, "method 'telepathy' is not offered"),
    ({"history": ["S00000"], "method": "exact-3"}, 422, "method 'exact-3' is not offered"),
    ({"history": ["S00000"], "method": "hybrid-100000000"}, 422, "method 'hybrid-100000000' is not offered"),
    ({"user": "nobody"}, 404, "user 'nobody' is not in the data"),
    ({"history": ["S00000"], "k": 10, "beam_size": 5}, 422, "beam_size=5 must be between k=10"),
    ({"history": "S00000"}, 422, "valid list"),
    ({"history": ["x" * 300]}, 422, "longer than 200 characters"),
])
def test_bad_requests_are_4xx_that_name_the_problem_and_the_service_keeps_serving(client, body, status, message):
    r = client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json())
    assert client.post("/recommend", json={"history": ["S00000"], "k": 3}).status_code == 200


def test_malformed_and_oversized_bodies_and_unknown_items(client):
    r = client.post("/recommend", content=b'{"history": ["S00000"', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = client.post("/recommend", content=b'{"history": ["' + b"S" * 70000 + b'"]}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 65536 bytes" in r.text
    chunks = (part for part in [b'{"history": ', b'["S00000"]}'])  # no Content-Length: the size is unknown
    r = client.post("/recommend", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 411 and "Content-Length" in r.text
    assert client.get("/items/NOPE").status_code == 404
    assert client.get("/items", params={"q": ""}).status_code == 422
    assert client.get("/items/..%2F..%2Fetc%2Fpasswd").status_code == 404  # an ID, never a path
    assert client.get("/health").status_code == 200


def test_concurrent_requests_are_batched_and_answered_as_one_at_a_time(rec):
    histories = [[f"S{i:05d}", f"S{(i * 7) % 64:05d}"] for i in range(24)]
    alone = [[r.item_id for r in rec.recommend(h, k=5)] for h in histories]
    app = create_app(rec, max_batch=16, max_wait_ms=50.0)

    async def many() -> list[list[str]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                responses = await asyncio.gather(*(client.post("/recommend", json={"history": h, "k": 5})
                                                   for h in histories))
        return [[i["item_id"] for i in r.json()["items"]] for r in responses]

    assert asyncio.run(many()) == alone
    batcher = app.state.batcher
    assert batcher.requests == 24 and batcher.calls < 24 and batcher.largest <= 16


def test_what_the_service_loaded_is_out_of_the_collectors_sight_while_it_serves(rec):
    """A full collection walking the model and catalogue stalls every request in flight (about 280 ms on
    Beauty): the service freezes what it loaded at startup and releases it at shutdown."""
    import gc

    gc.unfreeze()  # (another service of this module may be running)
    with TestClient(create_app(rec)) as c:
        assert gc.get_freeze_count() > 1000
        assert c.get("/health").status_code == 200
    assert gc.get_freeze_count() == 0
