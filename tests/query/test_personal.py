"""Personalised search's re-ranking (query/personal.py), checked by hand."""

from __future__ import annotations

import pytest

from genrec.query.personal import combine, rerank


def test_personalised_rerank_by_hand():
    """log p(item | query) + w * log p(item | history); a candidate outside the recommender's beam gets the beam's
    lowest score minus one; -1 (past the catalogue) is never returned."""
    candidates, query = [4, 7, 2, -1], [-0.5, -1.0, -2.0, -9.0]
    rec_rows, rec_scores = [7, 9, 4], [-0.2, -1.5, -3.0]  # 2 is not in the beam: -3.0 - 1 = -4.0
    rows, scores = rerank(candidates, query, rec_rows, rec_scores, 0.5, 3)
    # totals: 4: -0.5 - 1.5 = -2.0; 7: -1.0 - 0.1 = -1.1; 2: -2.0 - 2.0 = -4.0; -1: dropped
    assert rows == [7, 4, 2]
    assert scores == pytest.approx([-1.1, -2.0, -4.0])
    assert rerank(candidates, query, rec_rows, rec_scores, 0.0, 2)[0] == [4, 7]  # w = 0: the query model alone
    hist = [[-3.0, -0.2, -4.0, -4.0]]
    assert combine([candidates], [query], hist, 0.5, 3) == [rows]
