"""genrec: generative retrieval for recommendation (semantic IDs, TIGER, constrained beam search)."""

__version__ = "0.1.0"
