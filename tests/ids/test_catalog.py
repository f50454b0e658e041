"""The catalogue: level sizes and trie from its semantic IDs, and the fingerprints that tie a model to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog

SIDS = np.array([[0, 2, 0], [0, 2, 1], [3, 1, 0], [1, 0, 0], [0, 2, 2]])  # items 0, 1, 4 share (0, 2)


def catalog(sids: np.ndarray | None = SIDS, item_ids: list[str] | None = None) -> Catalog:
    item_ids = item_ids or [f"i{n}" for n in range(5)]
    return Catalog(item_ids=item_ids, items=[{"title": t} for t in item_ids], sids=sids, codebook_size=4)


def test_level_sizes_are_the_codebook_then_the_collision_level_in_use():
    c = catalog()
    assert c.num_items == 5
    assert c.level_sizes == [4, 4, 3]  # K for the two quantizer levels, then collision codes 0..2
    assert catalog(np.array([[0, 0, 0], [1, 0, 0]])).level_sizes == [4, 4, 1]
    assert c.index() == {"i0": 0, "i1": 1, "i2": 2, "i3": 3, "i4": 4}


def test_trie_is_built_from_the_semantic_ids_once():
    c = catalog()
    trie = c.trie
    assert trie is c.trie  # built once
    assert trie.num_items == 5 and trie.depth == 3
    assert trie.leaf_item.tolist() == [0, 1, 4, 3, 2]  # IDs in lexicographic order
    assert trie.contains(torch.from_numpy(SIDS)).all()
    assert not trie.contains(torch.tensor([[0, 2, 3], [2, 0, 0]])).any()


def test_a_catalogue_before_quantize_has_no_semantic_ids():
    c = catalog(None)
    for use in (lambda: c.level_sizes, lambda: c.trie, lambda: c.fingerprint(with_sids=True)):
        with pytest.raises(GenrecError, match="no semantic IDs yet; run 'genrec quantize' first"):
            use()
    assert c.fingerprint(with_sids=False) == catalog().fingerprint(with_sids=False)  # the items alone


def test_fingerprints_tell_catalogues_apart():
    base = catalog()
    other_sids = SIDS.copy()
    other_sids[[0, 2]] = other_sids[[2, 0]]
    other_items = catalog(item_ids=["i0", "i1", "i2", "i3", "X"])
    assert base.fingerprint(with_sids=True) == catalog(SIDS.copy()).fingerprint(with_sids=True)  # by value
    assert base.fingerprint(with_sids=True) != catalog(other_sids).fingerprint(with_sids=True)
    assert base.fingerprint(with_sids=False) == catalog(other_sids).fingerprint(with_sids=False)  # IDs not asked
    assert base.fingerprint(with_sids=False) != other_items.fingerprint(with_sids=False)
    assert base.fingerprint(with_sids=True) != base.fingerprint(with_sids=False)
    assert len(base.fingerprint(with_sids=True)) == 16
