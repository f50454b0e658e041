"""The collab stage's pure helpers: item counts, cold items borrowing from their text neighbours, centred unit
rows and the files written, against hand-computed values."""

from __future__ import annotations

import json

import numpy as np

from genrec.ids.collab import borrow_from_text_neighbours, centred_unit_rows, item_counts, write_collab_embeddings


def test_cold_items_borrow_the_mean_of_their_text_neighbours():
    # items 0..4; item 4 is in no sequence, item 3 in one (twice in it: counted once)
    assert item_counts([np.array([0, 1, 3, 3]), np.array([1, 2, 0]), np.array([], dtype=np.int64)], 5).tolist() == \
        [2, 2, 1, 1, 0]
    angle = np.array([0.0, 0.1, 1.5, 3.0, 0.05])
    text = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)  # item 4 lies between items 0 and 1
    collab = np.arange(10, dtype=np.float32).reshape(5, 2)
    cold = np.array([False, False, False, True, True])
    out = borrow_from_text_neighbours(collab, text, cold, k=2, chunk=1)
    np.testing.assert_array_equal(out[:3], collab[:3])  # warm rows untouched
    np.testing.assert_allclose(out[4], (collab[0] + collab[1]) / 2)  # nearest warm by text: 0 and 1
    np.testing.assert_allclose(out[3], (collab[2] + collab[1]) / 2)  # angle 3.0: nearest 2 (1.5), then 1 (0.1)
    np.testing.assert_array_equal(borrow_from_text_neighbours(collab, text, np.zeros(5, bool), k=2), collab)
    # more neighbours asked for than there are warm items: all of them
    np.testing.assert_allclose(borrow_from_text_neighbours(collab, text, cold, k=10)[3], collab[:3].mean(0))


def test_centred_unit_rows_hand_computed():
    x = np.array([[1.0, 1.0], [3.0, 1.0], [2.0, 4.0], [2.0, 2.0]])  # mean row (2, 2)
    out = centred_unit_rows(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-1 / np.sqrt(2), -1 / np.sqrt(2)], [1 / np.sqrt(2), -1 / np.sqrt(2)],
                                     [0.0, 1.0], [0.0, 0.0]], atol=1e-7)  # a row on the mean stays zero


def test_write_collab_embeddings_files(tmp_path):
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]], dtype=np.float32)
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]], dtype=np.float32)
    cold = np.array([False, False, True])
    raw = write_collab_embeddings(emb, item_ids=["a", "b", "c"], cold=cold, text=text, text_neighbours=1,
                                  out_dir=tmp_path)
    np.testing.assert_array_equal(raw, [[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])  # c borrows from a, its nearest
    np.testing.assert_array_equal(np.load(tmp_path / "item_embeddings_raw.npy"), raw)
    np.testing.assert_array_equal(np.load(tmp_path / "item_embeddings_l2norm.npy"), centred_unit_rows(raw))
    assert json.loads((tmp_path / "item_ids.json").read_text()) == ["a", "b", "c"]
