"""Recall and NDCG against hand-computed values."""

from __future__ import annotations

import math

import torch

from genrec.evaluation.metrics import metric_sums, ranks_in_list
from genrec.search import MISS, ranks_in_scores


def test_hit_at_rank_one_miss_and_k_larger_than_list():
    items = torch.tensor([[7, 3, 5], [1, 2, 3], [4, 9, -1]])
    targets = torch.tensor([7, 9, 9])
    ranks = ranks_in_list(items, targets)
    assert ranks.tolist() == [0, MISS, 1]  # hit at rank 1, miss, hit at rank 2
    sums = metric_sums(ranks, (1, 2, 10))
    # recall: user 0 counts at every k, user 2 at k >= 2; the miss never counts, even at k = 10 > list length
    assert sums[0].tolist() == [1.0, 2.0, 2.0]
    expected_ndcg2 = 1.0 + 1.0 / math.log2(3)
    assert math.isclose(float(sums[1, 0]), 1.0)
    assert math.isclose(float(sums[1, 1]), expected_ndcg2)
    assert math.isclose(float(sums[1, 2]), expected_ndcg2)


def test_rank_in_full_scores_counts_strictly_better_items():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0]])
    assert ranks_in_scores(scores, torch.tensor([2, 0])).tolist() == [2, 0]
    sums = metric_sums(ranks_in_scores(scores, torch.tensor([2, 0])), (1, 3))
    assert sums[0].tolist() == [1.0, 2.0]
    assert math.isclose(float(sums[1, 1]), 1.0 + 0.5)  # 1/log2(2) + 1/log2(4)
