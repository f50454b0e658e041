"""Trie-constrained search over the catalogue for any generative model that speaks `CodeDecoder`: batched beam
search, the rank of a target in the beam's list, and exact scoring of every item; plus the ranking conventions
(`MISS`, history exclusion) every ranking method shares."""

from genrec.search.beam import BeamResult, CodeDecoder, beam_ranks, beam_search
from genrec.search.exact import score_catalog
from genrec.search.ranking import MISS, drop_items, in_history, ranks_in_scores

__all__ = ["BeamResult", "CodeDecoder", "MISS", "beam_ranks", "beam_search", "drop_items", "in_history",
           "ranks_in_scores", "score_catalog"]
