"""Query data: no held-out query (or its word set) is ever a training query, validation and test items differ,
the same seed gives the same queries, the reverse task's IDs parse back to their items; metrics by hand."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.ids.tokens import TokenIndex
from genrec.query.data import content_words, held_out_query, make_queries, normalise, reverse_examples
from genrec.query.describe import PrefixIndex
from genrec.query.metrics import query_metrics

KINDS = [("Makeup", "Lipstick"), ("Makeup", "Nail Polish"), ("Skin Care", "Face Cream")]
WORDS = "velvet matte glossy shimmer organic gentle rose coral berry vegan silk ocean amber".split()


def items(n: int = 60) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        cat = KINDS[i % 3]
        words = list(rng.choice(WORDS, size=4, replace=False))
        out.append({"title": f"Brand{i % 7} {' '.join(words)} {cat[1]} 0.5 oz", "categories": [["Beauty", *cat]]})
    return out


def test_no_held_out_query_is_a_training_query():
    its = items()
    data = make_queries(its, seed=3, held_out=15, windows=3)
    train = {normalise(e.query) for e in data.train}
    train_sets = {" ".join(sorted(normalise(e.query).split())) for e in data.train}
    held = data.valid + data.test
    assert len(data.valid) == 15 and len(data.test) == 15
    for e in held:
        assert e.query not in train and " ".join(sorted(e.query.split())) not in train_sets
    assert not {e.item for e in data.valid} & {e.item for e in data.test}
    assert {e.template for e in data.train} == {"title", "window", "category", "category+word"}
    again = make_queries(its, seed=3, held_out=15, windows=3)
    assert again == data


def test_held_out_query_uses_content_words_and_the_leaf_category():
    import random

    fields = {"title": "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce",
              "categories": [["Beauty", "Makeup", "Nails", "Nail Polish"]]}
    assert content_words(fields["title"]) == ["opi", "nail", "lacquer", "simmer", "shimmer"]  # 0.5-fluid: a number
    q = held_out_query(fields, random.Random(0))
    assert q.endswith("nail polish") and 2 <= len(q.split()) - 2 <= 3
    assert set(q.split()[:-2]) <= set(content_words(fields["title"]))
    assert held_out_query({"title": "OPI Red", "categories": []}, random.Random(0)) is None


def test_reverse_examples_parse_back_to_their_items():
    its = items(9)
    sids = np.array([[i % 3, i // 3, 0] for i in range(9)])
    index = TokenIndex([f"I{i}" for i in range(9)], sids)
    rev = reverse_examples(its, index.tokens)
    assert len(rev) == 18
    for task, tokens, text in rev:
        row = int(index.item(tokens)[1:])
        assert text == (its[row]["title"] if task == "title" else " > ".join(its[row]["categories"][0][1:]))


def test_query_metrics_by_hand():
    its = [{"title": "a", "categories": [["B", c]]} for c in ("x", "x", "y", "y")]
    m = query_metrics([[0, 2, -1], [3, 1, 0]], [0, 1], its, k=3)
    assert m["hit@1"] == 0.5 and m["hit@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert m["category_precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)  # -1 is no item and shares nothing
    assert m["invalid_rate"] == pytest.approx(1 / 6)


def test_prefix_description_counts_categories_and_words():
    its = [{"title": "Rose velvet lipstick", "categories": [["B", "Lipstick"]]},
           {"title": "Rose matte lipstick", "categories": [["B", "Lipstick"]]},
           {"title": "Ocean gel polish", "categories": [["B", "Nail Polish"]]}]
    index = PrefixIndex(its, np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]]), depth=2)
    d = index.describe_prefix((0,))
    assert d["items"] == 2 and d["categories"] == ["Lipstick"] and d["words"][:2] == ["rose", "lipstick"]
    assert index.describe_prefix((5,))["items"] == 0
    assert index.describe_item(2) == "Nail Polish · ocean, gel, polish"

