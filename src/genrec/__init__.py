"""genrec: generative retrieval for recommendation (semantic IDs, TIGER, constrained beam search).

    from genrec import Recommender
    rec = Recommender.load("runs/beauty")
    rec.recommend(["B004756YJA", "B004ZT0SSG"], k=10)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Recommender", "Recommendation", "Searcher", "__version__"]


def __getattr__(name: str) -> Any:  # imported on first use, so `import genrec` stays light
    if name in ("Recommender", "Recommendation"):
        from genrec.serve import recommender

        return getattr(recommender, name)
    if name == "Searcher":
        from genrec.query.searcher import Searcher

        return Searcher
    raise AttributeError(f"module 'genrec' has no attribute {name!r}")
