"""What every model speaks, so that the trainer and the evaluator never branch on a model's kind.

- `forward(batch, *, label_smoothing, teacher, distill) -> Output`: the training loss (`teacher` and `distill`
  only reach a model whose `learns_from_teacher` is true);
- `ranking(name) -> RankingMethod` for each name in `methods` (the first is the model's default): how the model
  ranks the catalogue for a batch of histories, and whether that ranking is complete (any k) or a top list; a
  method with a parameter is also asked for as `<name>-<n>` (hybrid-40);
- `offered_methods(section)` (a classmethod): the methods a model of that config section will offer;
- `default_methods` (optional; default `methods[:1]`): the methods evaluated when `evaluate.methods` is empty, the
  first of them what `recommend` and the service use unless told (training selects on `methods[0]`);
- `all_positions`: whether training feeds whole sequences with a target at every position;
- `from_catalog(section, catalog=, max_history=)` builds one; `checkpoint_meta()` and
  `from_checkpoint(section, meta)` are what a model directory needs to rebuild it.

A generative model also gives trie-constrained search (`genrec.search`) what it needs: `code_decoder(trie)`,
a `genrec.search.CodeDecoder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

from torch import Tensor

from genrec.data.batches import Batch


@dataclass
class Output:
    loss: Tensor  # scalar training loss
    logits: list[Tensor]  # per output head (per level for semantic IDs) [B, K_l]


@dataclass(frozen=True)
class RankingMethod:
    """One way a model ranks the catalogue. `complete`: every item is scored, so any k is a real list;
    otherwise `recommend` returns at most k items (a beam) and only cut-offs <= k may be reported."""

    name: str  # the metric key: "{split}/{name}/{metric}@{k}"
    complete: bool
    # (batch, k, exclude_history) -> (item indices [B, k'] best first, -1 where fewer; scores [B, k']), k' = k for
    # a beam, min(k, catalogue size) for a complete ranking
    recommend: Callable[[Batch, int, bool], tuple[Tensor, Tensor]]
    # (batch with targets [B], k, exclude_history) -> 0-based rank of each target among the k items
    # `recommend` returns, MISS when it is not among them: [B]
    target_ranks: Callable[[Batch, int, bool], Tensor]
    cost_per_item: int = 1  # work per user and returned item relative to one decoder row (bounds eval batches)
    max_batch: int = 0  # users per evaluation batch at most (0: no limit of its own)
    list_size: int = 0  # a top list's most items whatever the beam (0: as many as the beam size)


PARAMETRIC = ("hybrid", "fusion", "newshare", "newtext")  # methods that take a number, written <method>-<n> (hybrid-40)
MAX_PARAMETER = 1000
MAX_OF = {"newshare": 99, "newtext": 99}  # a percentage


def method_parameter(name: str) -> int | None:
    """The number of a method name written `<method>-<n>` for a method that takes one (hybrid-40 -> 40), n in
    1..1000 (1..99 for newshare and newtext, a percentage) without leading zeros; None for any other name."""
    match = re.fullmatch(r"([a-z]+)-([1-9][0-9]{0,3})", name)
    if match is None or match.group(1) not in PARAMETRIC \
            or int(match.group(2)) > MAX_OF.get(match.group(1), MAX_PARAMETER):
        return None
    return int(match.group(2))


def offers(methods: tuple[str, ...], name: str) -> bool:
    """Whether a model offering `methods` has the method `name` (a listed one, or a listed one with a size)."""
    return name in methods or (method_parameter(name) is not None and name.partition("-")[0] in methods)


class RetrievalModel(Protocol):
    """What the trainer and the evaluator use of a model (an `nn.Module`: also `eval()`, `parameters()`, ...)."""

    methods: ClassVar[tuple[str, ...]]  # ranking methods offered; the first is the default
    learns_from_teacher: ClassVar[bool]  # forward takes a teacher's next-item distribution (distillation)
    uses_sids: ClassVar[bool]  # generates semantic IDs: its checkpoint is tied to the catalogue's
    max_history: int

    @property
    def all_positions(self) -> bool: ...

    def forward(self, batch: Batch, *, label_smoothing: float = 0.0, teacher: Tensor | None = None,
                distill: float = 0.0) -> Output: ...

    def ranking(self, name: str) -> RankingMethod: ...

    def checkpoint_meta(self) -> dict[str, Any]: ...

    @classmethod
    def from_catalog(cls, cfg: Any, *, catalog: Any, max_history: int) -> RetrievalModel:
        """A fresh model of its config section `cfg` over a `genrec.ids.catalog.Catalog`."""

    @classmethod
    def from_checkpoint(cls, cfg: Any, meta: dict[str, Any]) -> RetrievalModel:
        """An untrained model of a saved shape (`checkpoint_meta`), ready for its state dict."""
