"""A trained generative model with items added to its catalogue, nothing retrained: the new items' semantic IDs
join `item_codes` (and so the trie that constrains decoding), their text embeddings join the model's item text,
and the dense head counts them as new items, so that beam search, exact scoring, dense and hybrid ranking can all
return them. A new ID whose collision code is beyond the level's size grows that level by rows set to the mean of
its trained rows (a neutral guess: no data has taught them anything)."""

from __future__ import annotations

import numpy as np
import torch

from genrec.errors import GenrecError
from genrec.models.tiger import Tiger


def extend_catalog(model: Tiger, sids: np.ndarray, text: np.ndarray | None) -> Tiger:
    """`model` ranking its N items plus M new ones with semantic IDs `sids` [M, C] and L2-normalised text
    embeddings `text` [M, E] (needed when the model reads item text); the old items keep their rows."""
    old = int(model.item_codes.shape[0])
    if sids.ndim != 2 or sids.shape[1] != model.num_levels:
        raise GenrecError(f"new semantic IDs have {sids.shape[-1]} codes, the model's {model.num_levels}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sizes = list(model.level_sizes)
    for level, size in enumerate(sizes[:-1]):
        if sids[:, level].max(initial=0) >= size:
            raise GenrecError(f"a new semantic ID has code {int(sids[:, level].max())} at level {level}, beyond the "
                              f"model's {size} codes; the run's quantizer did not make it")
    need = int(sids[:, -1].max(initial=0)) + 1
    if need > sizes[-1]:  # grow the collision level: code embeddings (BOS stays last) and output rows
        V, grow, lo = sum(sizes), need - sizes[-1], sum(sizes) - sizes[-1]
        emb, head = state["code_emb.weight"], state["head.weight"]  # [V + 1, D], [V, D]
        state["code_emb.weight"] = torch.cat([emb[:V], emb[lo:V].mean(0).expand(grow, -1), emb[V:]])
        state["head.weight"] = torch.cat([head, head[lo:V].mean(0).expand(grow, -1)])
        sizes[-1] = need
    state["item_codes"] = torch.cat([state["item_codes"], torch.from_numpy(sids.astype(np.int64))])
    if model.text is not None:
        if text is None or text.shape[1] != model.text.item_text.shape[1]:
            raise GenrecError("the model reads item text, so new items need text embeddings of the run's encoder")
        state["text.item_text"] = torch.cat([state["text.item_text"], torch.from_numpy(text).float()])
    if model.dense is not None:
        state["dense.new_items"] = torch.cat([state["dense.new_items"], torch.ones(len(sids), dtype=torch.bool)])
    meta = dict(model.checkpoint_meta(), num_items=old + len(sids), level_sizes=sizes)
    extended = Tiger.from_checkpoint(model.cfg, meta)
    extended.load_state_dict(state)
    try:
        extended.trie  # noqa: B018  building it checks that every ID is unique
    except ValueError as err:
        raise GenrecError(f"the new items' semantic IDs clash with the catalogue's ({err})") from None
    return extended.eval()
