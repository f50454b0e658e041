"""The ranking conventions every method shares: MISS, history membership and removal, ranks among complete
scores, against hand-computed values."""

from __future__ import annotations

import torch

from genrec.search import MISS, drop_items, in_history, ranks_in_scores

NEG_INF = float("-inf")


def test_ranks_in_scores_count_better_items_break_ties_by_index_and_miss_removed_or_deep_targets():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7],
                           [3.0, 2.0, 1.0, 0.0],
                           [0.5, NEG_INF, 0.5, 0.2],  # a tie with an earlier item counts against the target
                           [1.0, NEG_INF, 0.0, 2.0]])
    targets = torch.tensor([2, 3, 2, 1])
    assert ranks_in_scores(scores, targets).tolist() == [2, 3, 1, MISS]  # a -inf target is removed: a miss
    assert ranks_in_scores(scores, targets, k=3).tolist() == [2, MISS, 1, MISS]  # rank 3 is beyond k = 3
    assert ranks_in_scores(scores, targets, k=4).tolist() == [2, 3, 1, MISS]
    assert ranks_in_scores(scores, targets, k=1).tolist() == [MISS, MISS, MISS, MISS]
    # a tie with a later item does not count: item 0 tied with item 2 ranks first
    assert ranks_in_scores(scores, torch.tensor([2, 3, 0, 3]), k=1).tolist() == [MISS, MISS, 0, 0]
    assert MISS > 10**12  # beyond every cut-off


def test_in_history_ignores_padding():
    items = torch.tensor([[3, 4, -1, 0], [1, 2, 3, -1]])
    history = torch.tensor([[-1, -1, 3, 0], [-1, 2, 2, 9]])
    assert in_history(items, history).tolist() == [[True, False, False, True], [False, True, False, False]]
    assert in_history(items, torch.full((2, 0), -1, dtype=torch.long)).tolist() == [[False] * 4] * 2


def test_drop_items_sets_listed_items_to_minus_infinity_in_place():
    scores = torch.arange(10, dtype=torch.float).view(2, 5)
    out = drop_items(scores, torch.tensor([[-1, 4, 0], [2, -1, 2]]))
    assert out is scores
    assert scores.tolist() == [[NEG_INF, 1, 2, 3, NEG_INF], [5, 6, NEG_INF, 8, 9]]


def test_ranks_in_scores_equal_the_position_in_a_list_sorted_with_ties_by_index():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 30), generator=g).float()  # many ties
    targets = torch.randint(0, 30, (64,), generator=g)
    expected = []
    for row, t in zip(scores.tolist(), targets.tolist()):
        ranked = sorted(range(30), key=lambda i: -row[i])  # the reference: Python's sort is stable (index order)
        expected.append(ranked.index(t))
    assert ranks_in_scores(scores, targets).tolist() == expected
