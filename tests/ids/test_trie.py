"""The prefix trie of semantic IDs against a hand-built example and against scanning the ID list."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.ids.trie import build_trie

from tiny_tiger import collision_catalog


def test_trie_structure_and_duplicates():
    codes = np.array([[1, 0, 0], [0, 2, 0], [0, 2, 1], [1, 1, 0]])
    trie = build_trie(codes)
    assert trie.depth == 3 and trie.num_items == 4
    assert trie.child_start[0].tolist() == [0, 2]  # root -> codes 0, 1
    assert trie.node_code[0].tolist() == [0, 1]
    assert trie.node_code[1].tolist() == [2, 0, 1]  # (0,2), (1,0), (1,1)
    assert trie.parent[1].tolist() == [0, 1, 1]
    assert trie.child_start[1].tolist() == [0, 1, 3]
    assert trie.max_children == [2, 2, 2]
    # int64 throughout: child_start, node_code and parent, leaf_item and item_leaf
    assert trie.nbytes() == 8 * ((2 + 3 + 4) + 2 * (2 + 3 + 4) + 4 + 4)
    assert [trie.num_nodes(d) for d in range(4)] == [1, 2, 3, 4]
    assert trie.leaf_item.tolist() == [1, 2, 0, 3]  # lexicographic order of the IDs
    assert trie.item_leaf.tolist() == [2, 0, 1, 3]
    assert trie.contains(torch.tensor([[0, 2, 1], [0, 2, 2], [1, 1, 0], [2, 0, 0]])).tolist() == [
        True, False, True, False]
    assert trie.paths(torch.tensor([0, 2])).tolist() == [[0, 1, 1], [0, 0, 0]]  # root, level-1 node, level-2 node
    assert trie.num_children(1, torch.tensor([0, 1])).tolist() == [1, 2]
    assert trie.child_mask(1, torch.tensor([0, 1]), 3).tolist() == [[False, False, True], [True, True, False]]
    child, valid = trie.children(0, torch.tensor([0]))
    assert child.tolist() == [[0, 1]] and valid.tolist() == [[True, True]]
    with pytest.raises(ValueError, match="share a semantic ID"):
        build_trie(np.array([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="non-empty"):
        build_trie(np.zeros((0, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        build_trie(np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("seed", [0, 1])
def test_trie_walks_agree_with_the_id_list(seed):
    codes = collision_catalog(200, [4, 6, 5], seed=seed, repeats=20)
    ids = [tuple(row) for row in codes.tolist()]
    trie = build_trie(codes)
    for depth in range(trie.depth + 1):
        nodes = torch.arange(trie.num_nodes(depth))
        if depth == trie.depth:
            nodes = trie.item_leaf[trie.leaf_item]  # the leaves, in leaf order
        prefixes = [tuple(p) for p in trie.prefix_codes(depth, nodes).tolist()]
        assert prefixes == sorted({i[:depth] for i in ids})  # every prefix once, in sorted order
        if depth < trie.depth:
            for node, prefix in zip(nodes.tolist(), prefixes):
                children = sorted({i[depth] for i in ids if i[:depth] == prefix})
                child, valid = trie.children(depth, torch.tensor([node]))
                assert trie.node_code[depth][child[valid]].tolist() == children
    items = torch.arange(len(ids))
    leaf_codes = trie.prefix_codes(trie.depth, trie.item_leaf[items])
    assert torch.equal(leaf_codes, torch.from_numpy(codes))  # each item's leaf spells its ID
    paths = trie.paths(items)
    for d in range(1, trie.depth):
        assert [tuple(p) for p in trie.prefix_codes(d, paths[:, d]).tolist()] == [i[:d] for i in ids]
