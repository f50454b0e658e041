"""The frozen text side of the default query model: a sentence encoder's tokenizer and its last-layer token
states, plus its pooled, normalised sentence vector (what dense retrieval compares), for batches of queries."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Encoded:
    states: Tensor  # [B, S, E] the pooled vector first, then the token states; float32
    mask: Tensor  # [B, S] True at real positions

    def rows(self, idx: Tensor | list[int]) -> Encoded:
        return Encoded(self.states[idx], self.mask[idx])


class TextEncoder:
    """Wraps a sentence-transformers model (the run's `embed.model`); frozen, in inference mode."""

    def __init__(self, name: str, *, max_tokens: int, device: str = "cpu") -> None:
        from genrec.ids.embed import load_encoder

        self.name, self.max_tokens = name, max_tokens
        self.model = load_encoder(name, device)
        self.model.max_seq_length = max_tokens
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> list[Tensor]:
        """Per text [1 + t, E] float16: its normalised pooled vector, then its t token states (unpadded)."""
        out: list[Tensor | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            feats = {k: v.to(self.model.device) for k, v in tokenize([texts[i] for i in rows]).items()
                     if isinstance(v, torch.Tensor)}
            res = self.model(feats)
            tokens, mask = res["token_embeddings"], feats["attention_mask"].bool()  # [b, t, E], [b, t]
            pooled = torch.nn.functional.normalize(res["sentence_embedding"].float(), dim=-1)
            for i, p, tok, m in zip(rows, pooled, tokens, mask):
                out[i] = torch.cat([p[None], tok[m].float()]).half().cpu()
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def pooled(self, texts: list[str], batch_size: int = 256) -> Tensor:
        """[B, E] normalised sentence vectors (dense retrieval's query side)."""
        return torch.from_numpy(self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                                  convert_to_numpy=True))


def pad(parts: list[Tensor]) -> Encoded:
    """Unpadded [s_i, E] states -> one right-padded batch."""
    S, E = max(p.shape[0] for p in parts), parts[0].shape[1]
    states = torch.zeros(len(parts), S, E)
    mask = torch.zeros(len(parts), S, dtype=torch.bool)
    for i, p in enumerate(parts):
        states[i, : p.shape[0]] = p.float()
        mask[i, : p.shape[0]] = True
    return Encoded(states, mask)
