"""Semantic IDs as strings of tokens, one per level: `<a_42><b_15><c_238><d_3>` (level letters a, b, c, ...;
the collision level is the last). The form language models and people read, written by the quantize stage as
`semantic_ids.json` (item ID -> token string) and parsed back here."""

from __future__ import annotations

import re
import string

import numpy as np

from genrec.errors import GenrecError

_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def level_letter(level: int) -> str:
    if not 0 <= level < 26:
        raise ValueError(f"semantic IDs have at most 26 levels, not {level + 1}")
    return string.ascii_lowercase[level]


def to_tokens(sid: np.ndarray | list[int] | tuple[int, ...]) -> str:
    """One item's codes -> its token string."""
    return "".join(f"<{level_letter(level)}_{int(code)}>" for level, code in enumerate(sid))


def parse_tokens(text: str) -> tuple[int, ...]:
    """A token string -> the codes, level by level; GenrecError when it is not one."""
    parts = _TOKEN.findall(text)
    if not parts or "".join(f"<{a}_{c}>" for a, c in parts) != text.strip():
        raise GenrecError(f"{text!r} is not a semantic ID written as tokens such as <a_42><b_15><c_238>")
    letters = [a for a, _ in parts]
    if letters != [level_letter(i) for i in range(len(parts))]:
        raise GenrecError(f"{text!r} has its levels out of order ({''.join(letters)}); write <a_..><b_..>...")
    return tuple(int(c) for _, c in parts)


class TokenIndex:
    """Token strings <-> items of one catalogue."""

    def __init__(self, item_ids: list[str], sids: np.ndarray) -> None:
        self.item_ids = list(item_ids)
        self.tokens = [to_tokens(row) for row in np.asarray(sids).tolist()]
        self._item = {codes: i for i, codes in enumerate(map(tuple, np.asarray(sids).tolist()))}

    def item(self, text: str) -> str:
        """The item ID a token string names; GenrecError when no catalogue item has that semantic ID."""
        codes = parse_tokens(text)
        row = self._item.get(codes)
        if row is None:
            raise GenrecError(f"{text} names no item of this catalogue ({len(self.item_ids)} items); it is not the "
                              f"semantic ID of any of them")
        return self.item_ids[row]

    def as_dict(self) -> dict[str, str]:
        return dict(zip(self.item_ids, self.tokens))
