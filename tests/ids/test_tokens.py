"""Semantic-ID tokens: every item's string parses back to its codes and item, and strings that are not IDs, or
name no item, are refused with what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.errors import GenrecError
from genrec.ids.tokens import TokenIndex, parse_tokens, to_tokens


def test_tokens_round_trip_for_every_item():
    rng = np.random.default_rng(0)
    sids = np.unique(rng.integers(0, 300, size=(200, 4)), axis=0)
    ids = [f"item{i}" for i in range(len(sids))]
    index = TokenIndex(ids, sids)
    assert to_tokens([42, 15, 238, 3]) == "<a_42><b_15><c_238><d_3>"
    for item, row, text in zip(ids, sids.tolist(), index.tokens):
        assert parse_tokens(text) == tuple(row) and index.item(text) == item
    assert index.as_dict()[ids[0]] == index.tokens[0]


@pytest.mark.parametrize("text,message", [
    ("<a_1><b_2><c_99>", "names no item of this catalogue"),
    ("<a_1><c_2>", "levels out of order"),
    ("a_1 b_2", "is not a semantic ID written as tokens"),
    ("<a_1><b_2> and more", "is not a semantic ID written as tokens"),
    ("", "is not a semantic ID written as tokens"),
])
def test_strings_that_name_no_item_are_refused(text, message):
    index = TokenIndex(["x", "y"], np.array([[1, 2, 0], [1, 2, 1]]))
    with pytest.raises(GenrecError, match=message):
        index.item(text)
