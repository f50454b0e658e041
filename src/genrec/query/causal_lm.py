"""Any Hugging Face causal language model as the query model: the semantic-ID tokens (`<a_42>` ...) added to its
vocabulary, fine-tuned on "query: ... item: <a_..><b_..>..." (and the reverse tasks "item: <a_..>... title: ..."),
all weights or LoRA adapters (`query.lora_rank`, needs peft), and decoded with genrec's trie-constrained beam
search, so every answer is a catalogue item.

    query.lm=<name or directory>   genrec train-query -c CONFIG query.lm=gpt2 ...

Shapes: B queries, W beams, M children, d codes so far, P prompt tokens.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genrec.data.batches import Batch
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.ids.tokens import level_letter, to_tokens
from genrec.query.config import QueryConfig
from genrec.query.data import QueryData, reverse_examples
from genrec.query.metrics import query_metrics
from genrec.search.beam import beam_search

logger = logging.getLogger(__name__)


def prompt(query: str) -> str:
    return f"query: {query}\nitem: "


def load_lm(name: str) -> tuple[Any, Any]:
    """(tokenizer, model) from a local directory or, where reachable or cached, a hub name."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenrecError(f"query.lm={name!r}: cannot load a causal language model ({reason}); pass a local "
                          f"directory with the model and its tokenizer") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    return tok, model


class CausalLMQuery:
    """A causal LM with semantic-ID tokens, answering queries under the catalogue trie."""

    def __init__(self, tok: Any, model: Any, catalog: Catalog, cfg: QueryConfig) -> None:
        self.tok, self.model, self.catalog, self.cfg = tok, model, catalog, cfg
        sizes = catalog.level_sizes
        names = [f"<{level_letter(l)}_{c}>" for l, k in enumerate(sizes) for c in range(k)]
        if tok.convert_tokens_to_ids(names[0]) in (None, tok.unk_token_id):
            tok.add_tokens(names, special_tokens=True)
            model.resize_token_embeddings(len(tok))
        ids = tok.convert_tokens_to_ids(names)
        self.code_token = []  # per level: [K_l] token id of each code
        start = 0
        for k in sizes:
            self.code_token.append(torch.tensor(ids[start:start + k]))
            start += k
        self.end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id

    def encode_prompts(self, queries: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids [B, P] and mask [B, P]."""
        rows = [self.tok(prompt(q), add_special_tokens=False)["input_ids"][-4 * self.cfg.max_tokens:] for q in queries]
        P = max(len(r) for r in rows)
        ids = torch.full((len(rows), P), self.tok.pad_token_id)
        mask = torch.zeros(len(rows), P, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, P - len(r):], mask[i, P - len(r):] = torch.tensor(r), 1
        return ids, mask

    def last_logits(self, ids: Tensor, mask: Tensor) -> Tensor:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()

    def answer(self, queries: list[str], k: int, beam_size: int | None = None, batch_size: int = 64
               ) -> tuple[list[list[int]], list[list[float]]]:
        self.model.eval()
        rows, scores = [], []
        with torch.no_grad():
            for start in range(0, len(queries), batch_size):
                part = queries[start:start + batch_size]
                ids, mask = self.encode_prompts(part)
                batch = Batch(users=torch.zeros(len(part), dtype=torch.long), history=torch.full((len(part), 1), -1))
                res = beam_search(_LMDecoder(self, ids, mask), batch, self.catalog.trie,
                                  beam_size=max(k, beam_size or self.cfg.beam_size))
                rows += res.items[:, :k].tolist()
                scores += res.scores[:, :k].tolist()
        return rows, scores

    def training_texts(self, data: QueryData) -> list[tuple[str, str]]:
        """(prompt, completion) pairs: every training query, then the reverse tasks."""
        tokens = [to_tokens(s) for s in self.catalog.require_sids().tolist()]
        pairs = [(prompt(e.query), tokens[e.item]) for e in data.train]
        pairs += [(f"item: {t}\n{task}: ", text) for task, t, text in reverse_examples(self.catalog.items, tokens)]
        return pairs


class _LMDecoder:
    """The LM as the beam search's `CodeDecoder`: prompt plus the beam's code tokens, recomputed per level."""

    exact_by_beam = False

    def __init__(self, lm: CausalLMQuery, ids: Tensor, mask: Tensor) -> None:
        self.lm, self.ids, self.mask = lm, ids, mask

    def start(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.ids, self.mask

    def child_log_probs(self, state: Any, depth: int, nodes: Tensor, prefix: Tensor, code: Tensor, valid: Tensor,
                        live: Tensor) -> tuple[Tensor, Any]:
        ids, mask = state
        B, W, d = prefix.shape
        toks = torch.stack([self.lm.code_token[l][prefix[..., l]] for l in range(d)], -1) if d else prefix
        full = torch.cat([ids[:, None].expand(B, W, -1), toks], -1).reshape(B * W, -1)
        m = torch.cat([mask[:, None].expand(B, W, -1), torch.ones_like(toks)], -1).reshape(B * W, -1)
        logits = self.lm.last_logits(full, m).view(B, W, -1)
        child = logits.gather(-1, self.lm.code_token[depth][code])  # [B, W, M]
        out = torch.log_softmax(child.masked_fill(~valid, float("-inf")), -1)
        return out.masked_fill(~valid, float("-inf")), state

    def select(self, state: Any, parent: Tensor) -> Any:
        return state

    def keep_users(self, state: Any, keep: Tensor) -> Any:
        return state[0][keep], state[1][keep]

    def target_log_probs(self, state: Any, targets: Tensor) -> Tensor:
        raise NotImplementedError("query search ranks by beam search only")


def train_causal_lm(cfg: QueryConfig, catalog: Catalog, *, data: QueryData, out_dir: Path) -> dict:
    """Fine-tune `cfg.lm` on the query and reverse tasks, score validation and test, save to out_dir/lm."""
    tok, model = load_lm(cfg.lm)
    lm = CausalLMQuery(tok, model, catalog, cfg)
    if cfg.lora_rank > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise GenrecError("query.lora_rank > 0 needs peft; pip install peft (or set query.lora_rank=0)") from None
        model = get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank,
                                                 target_modules="all-linear", modules_to_save=["lm_head"]))
        lm.model = model
    torch.manual_seed(cfg.seed)
    pairs = lm.training_texts(data)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    rng, t0 = random.Random(cfg.seed), time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        rng.shuffle(pairs)
        for start in range(0, len(pairs), cfg.batch_size):
            loss = _loss(lm, pairs[start:start + cfg.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        logger.info("causal LM epoch %d/%d: loss %.3f", epoch, cfg.epochs, loss.item())
    summary = {"lm": cfg.lm, "train_pairs": len(pairs), "seconds": round(time.perf_counter() - t0, 1)}
    for split in ("valid", "test"):
        examples = getattr(data, split)
        rows, _ = lm.answer([e.query for e in examples], 10)
        summary[split] = query_metrics(rows, [e.item for e in examples], catalog.items)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lm").mkdir(parents=True)
    (model.merge_and_unload() if cfg.lora_rank > 0 else model).save_pretrained(tmp / "lm")
    tok.save_pretrained(tmp / "lm")
    (tmp / "config.json").write_text(json.dumps({"kind": "causal_lm", "lm": cfg.lm, "catalog":
                                                 catalog.fingerprint(with_sids=True)}, indent=2))
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return summary


def _loss(lm: CausalLMQuery, pairs: list[tuple[str, str]]) -> Tensor:
    """Cross-entropy of the completions only (prompt and padding positions are not targets)."""
    seqs, labels = [], []
    for p, c in pairs:
        a = lm.tok(p, add_special_tokens=False)["input_ids"]
        b = lm.tok(c, add_special_tokens=False)["input_ids"] + [lm.end]
        seqs.append(a + b)
        labels.append([-100] * len(a) + b)
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), lm.tok.pad_token_id)
    lab = torch.full((len(seqs), T), -100)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)], lab[i, : len(l)], mask[i, : len(s)] = torch.tensor(s), torch.tensor(l), 1
    return lm.model(input_ids=ids, attention_mask=mask, labels=lab).loss
