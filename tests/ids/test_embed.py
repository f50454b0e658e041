"""Item text building, encoder loading (bundled model, local path, bad name) and the embed stage's files."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach for the network

import numpy as np
import pytest

from genrec.config import EmbedConfig
from genrec.errors import GenrecError
from genrec.ids.embed import DEFAULT_MODEL, embed, item_text, item_texts, load_encoder

TEMPLATE = "Title: {title}; Brand: {brand}; Categories: {categories}; Price: {price}"


def test_item_text_full_item_formats_every_field():
    fields = {"title": "Shampoo &amp;amp; Conditioner\n  Set", "brand": "Acme",
              "categories": [["Beauty", "Hair Care", "Shampoo"], ["Beauty", "Skin Care"],
                             ["Beauty", "Hair Care", "Shampoo"]],  # a repeated path is listed once
              "price": 12.9}
    assert item_text(fields, TEMPLATE, 1000) == ("Title: Shampoo & Conditioner Set; Brand: Acme; "
                                                 "Categories: Beauty > Hair Care > Shampoo, Beauty > Skin Care; "
                                                 "Price: $12.90")


def test_item_text_drops_missing_fields_without_dangling_separators():
    assert item_text({"title": "Lipstick", "brand": None, "price": float("nan"), "categories": []},
                     TEMPLATE, 1000) == "Title: Lipstick"
    assert item_text({"brand": "  ", "categories": [["Beauty"]], "price": 3}, TEMPLATE, 1000) == \
        "Categories: Beauty; Price: $3.00"
    assert item_text({"title": "", "price": 0.5}, TEMPLATE, 1000) == "Price: $0.50"


def test_item_text_lists_and_cut_to_max_chars():
    fields = {"title": "abcdefghij", "description": ["First line.", "", "Second &lt;b&gt;"],
              "categories": ["Makeup", "Face"]}
    template = "{title}; Categories: {categories}; About: {description}"
    assert item_text(fields, template, 4) == "abcd; Categories: Make; About: Firs"
    assert item_text(fields, template, 100) == "abcdefghij; Categories: Makeup, Face; About: First line. Second <b>"


def test_item_text_empty_item_gets_its_id():
    assert item_text({"title": None, "categories": []}, TEMPLATE, 100) == ""
    texts, empty = item_texts([{"title": None}, {"title": "Soap"}], ["B000X", "B000Y"], TEMPLATE, 100)
    assert texts == ["B000X", "Title: Soap"] and empty == 1


def test_item_text_unknown_placeholder_lists_existing_fields():
    with pytest.raises(GenrecError, match=r"unknown field\(s\) colour; fields that exist: .*title"):
        item_text({"title": "Soap"}, "Title: {title}; Colour: {colour}", 100)
    with pytest.raises(GenrecError, match="embed.template"):
        item_text({"title": "Soap"}, "Title: {}", 100)


ITEMS = [
    {"title": "Red Lipstick", "categories": [["Beauty", "Makeup", "Lips"]]},
    {"title": "Hair Dryer &amp; Diffuser", "categories": [["Beauty", "Tools"]], "price": 29.99},
    {"title": "Red Lipstick", "categories": [["Beauty", "Makeup", "Lips"]]},  # same text as item 0
    {"title": None, "categories": []},  # no usable field: embedded as its id
    {"title": "Face Cream", "brand": "Nivea", "categories": [["Beauty", "Skin Care", "Face"]]},
]
IDS = ["A1", "A2", "A3", "A4", "A5"]


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(DEFAULT_MODEL, "cpu")


def test_embed_writes_consistent_deterministic_files(tmp_path, encoder):
    with pytest.raises(GenrecError, match="5 item records but 4 item ids"):
        embed(EmbedConfig(), ITEMS, IDS[:4], tmp_path / "a")
    cfg = EmbedConfig(batch_size=2)
    stats = embed(cfg, ITEMS, IDS, tmp_path / "a")
    raw = np.load(tmp_path / "a" / "item_embeddings_raw.npy")
    l2 = np.load(tmp_path / "a" / "item_embeddings_l2norm.npy")
    assert raw.shape == l2.shape == (5, 384) and raw.dtype == l2.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(l2, axis=1), 1.0, atol=1e-5)
    assert json.loads((tmp_path / "a" / "item_ids.json").read_text()) == IDS
    written = json.loads((tmp_path / "a" / "embedding_stats.json").read_text())
    assert written == stats
    assert stats["count"] == 5 and stats["dim"] == 384 and stats["empty_texts"] == 1
    assert stats["example_texts"][1] == "Title: Hair Dryer & Diffuser; Categories: Beauty > Tools; Price: $29.99"
    assert math.isclose(stats["mean_norm"], float(np.linalg.norm(raw, axis=1).mean()), rel_tol=1e-6)
    # rows are the encoder's vectors of the item texts, in item order
    np.testing.assert_allclose(raw[:3], encoder.encode(stats["example_texts"]), atol=1e-5)
    np.testing.assert_allclose(raw[3], encoder.encode(["A4"])[0], atol=1e-5)  # no text: its id
    np.testing.assert_array_equal(raw[0], raw[2])  # same text, same vector
    assert not np.allclose(raw[0], raw[1])
    embed(cfg, ITEMS, IDS, tmp_path / "b")
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "item_embeddings_raw.npy"), raw)


def test_load_encoder_by_local_path(tmp_path, encoder):
    path = tmp_path / "saved-model"
    encoder.save(str(path))
    loaded = load_encoder(str(path), "cpu")
    texts = ["Red Lipstick", "Face Cream"]
    np.testing.assert_allclose(loaded.encode(texts), encoder.encode(texts), atol=1e-6)


def test_load_encoder_bad_names_are_user_errors(tmp_path, monkeypatch):
    with pytest.raises(GenrecError, match="does not exist"):
        load_encoder(str(tmp_path / "missing-model"), "cpu")
    # offline and not cached: refused at once, before the hub client would retry
    with pytest.raises(GenrecError, match=f"embed.model='no-such-org/no-such-model' is not a local directory nor "
                                          f"in the Hugging Face cache, and the hub cannot be reached.*{DEFAULT_MODEL}"):
        load_encoder("no-such-org/no-such-model", "cpu")
    # a hub that answers: the library's own error, as one line
    monkeypatch.setattr("genrec.ids.embed._hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(GenrecError, match=f"cannot load sentence-transformers model 'no-such-org/no-such-model'.*"
                                          f"{DEFAULT_MODEL}"):
        load_encoder("no-such-org/no-such-model", "cpu")
