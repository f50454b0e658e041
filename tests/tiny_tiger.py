"""Small random Tigers, catalogues and batches, and the brute-force reference every decoding test compares with:
teacher-forced log p(item | history), one forward pass per item, with the allowed codes found by scanning the
list of IDs (never through the trie)."""

from __future__ import annotations

import numpy as np
import torch

from genrec.config import TigerConfig
from genrec.data.batches import Batch
from genrec.ids.rqkmeans import add_collision_level
from genrec.models.tiger import Tiger


def random_catalog(n: int, sizes: list[int], seed: int) -> np.ndarray:
    """n distinct random semantic IDs with level sizes `sizes` (clustered prefixes, like real codes)."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        seen.add(tuple(int(rng.integers(0, min(s, 3 if i == 0 else s))) for i, s in enumerate(sizes)))
    return np.array(sorted(seen, key=lambda _: rng.random()))


def collision_catalog(n: int, sizes: list[int], seed: int, repeats: int = 0) -> np.ndarray:
    """Random IDs (`repeats` of them copies of others) plus the collision level, like real semantic IDs: most
    deep trie nodes have one child."""
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, s, n) for s in sizes], axis=1)
    return add_collision_level(np.concatenate([codes, codes[rng.integers(0, n, repeats)]]))


def tiny_config(item_tokens: str = "codes", causal_encoder: bool = False, trie_softmax: bool = False,
                decoder_layers: int = 2, num_user_buckets: int = 7, encoder_layers: int = 1) -> TigerConfig:
    return TigerConfig(d_model=16, num_heads=2, head_dim=8, d_ff=32, encoder_layers=encoder_layers,
                       decoder_layers=decoder_layers, dropout=0.0, item_tokens=item_tokens,
                       num_user_buckets=num_user_buckets, causal_encoder=causal_encoder, trie_softmax=trie_softmax,
                       text_input=False, dense_weight=0.0)  # generation alone (tests/models/test_dense.py: the rest)


def tiny_model(codes: np.ndarray, sizes: list[int], item_tokens: str = "codes", seed: int = 0,
               causal_encoder: bool = False, trie_softmax: bool = False, decoder_layers: int = 2,
               num_user_buckets: int = 7) -> Tiger:
    """decoder_layers=2 decodes with a KV cache; 1 without one (per-node self-attention states);
    num_user_buckets=0: no user token, the history alone (the default recipe)."""
    torch.manual_seed(seed)
    cfg = tiny_config(item_tokens, causal_encoder, trie_softmax, decoder_layers, num_user_buckets)
    model = Tiger(cfg=cfg, item_codes=torch.from_numpy(codes), level_sizes=sizes, max_history=5)
    for p in model.parameters():  # larger weights than the init so that scores are well spread
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def random_batch(n_items: int, B: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, n_items, (B, 6), generator=g)
    lengths = torch.randint(1, 7, (B,), generator=g)
    history[torch.arange(6)[None, :] < (6 - lengths)[:, None]] = -1  # left padding
    return Batch(users=torch.randint(0, 8, (B,), generator=g), history=history)


def allowed_codes(ids: list[tuple[int, ...]], item: int, level: int) -> list[int]:
    """The codes that follow item's first `level` codes somewhere in the catalogue, by scanning the ID list."""
    return sorted({i[level] for i in ids if i[:level] == ids[item][:level]})


def brute_force_scores(model: Tiger, batch: Batch) -> torch.Tensor:
    """Teacher-forced log p(item) for every item, one forward pass per item: [B, N]. With trie_softmax each
    level's softmax covers the codes that follow the item's prefix somewhere in the catalogue."""
    N = model.item_codes.shape[0]
    B = batch.history.shape[0]
    ids = [tuple(row) for row in model.item_codes.tolist()]
    out = torch.empty(B, N)
    with torch.no_grad():
        for item in range(N):
            b = Batch(batch.users, batch.history, torch.full((B,), item))
            logits = model(b).logits
            codes = ids[item]
            total = torch.zeros(B)
            for level, z in enumerate(logits):
                if model.cfg.trie_softmax:
                    allowed = allowed_codes(ids, item, level)
                    z = z[:, allowed]
                    code = allowed.index(codes[level])
                else:
                    code = codes[level]
                total += torch.log_softmax(z, -1)[:, code]
            out[:, item] = total
    return out


def with_targets(batch: Batch, targets: torch.Tensor) -> Batch:
    return Batch(batch.users, batch.history, targets)
