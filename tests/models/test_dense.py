"""The hybrid's dense side (models/dense.py): dense scores against a brute-force cosine item by item, the one-pass
training loss against one example at a time, hybrid re-ranking against its definition (and equal to the dense
ranking when K covers the catalogue), and a model directory that carries the text and the new items."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from genrec.data.batches import Batch
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.models.checkpoint import save_model
from genrec.models.content import ContentBaseline
from genrec.models.dense import dense_log_probs, fusion_scores, hybrid_scores, item_vectors, new_share_log_probs
from genrec.models.tiger import Tiger
from genrec.models.types import offers
from genrec.search import beam_search

from tiny_tiger import brute_force_scores, collision_catalog, random_batch, tiny_config, tiny_model


def dense_model(item_tokens: str = "sum", dense_item: str = "text+codes", repeat_bias: bool = False,
                num_user_buckets: int = 0, seed: int = 0) -> Tiger:
    codes = collision_catalog(40, [3, 4, 3], seed=7)
    sizes = [3, 4, 3, int(codes[:, -1].max()) + 1]
    cfg = dataclasses.replace(tiny_config(item_tokens, causal_encoder=True, trie_softmax=True,
                                          num_user_buckets=num_user_buckets),
                              text_input=True, dense_weight=1.0, dense_item=dense_item, dense_temperature=0.2,
                              repeat_bias=repeat_bias)
    torch.manual_seed(seed)
    text = F.normalize(torch.randn(len(codes), 12), dim=-1)
    model = Tiger(cfg=cfg, item_codes=torch.from_numpy(codes), level_sizes=sizes, max_history=5, item_text=text)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.dense.new_items[[3, 17, 29]] = True
    return model.eval()


@pytest.mark.parametrize("item_tokens,dense_item,users", [("sum", "text+codes", 0), ("codes", "text", 7)])
def test_dense_scores_equal_a_cosine_computed_item_by_item(item_tokens, dense_item, users):
    model = dense_model(item_tokens, dense_item, num_user_buckets=users)
    batch = random_batch(40, 6, seed=3)
    got = dense_log_probs(model, batch, exclude_history=False)
    with torch.no_grad():
        for b in range(6):  # each user alone, unpadded, and each item's vector built from its parts
            h = batch.history[b][batch.history[b] >= 0][None, -5:]  # what the model sees
            memory = model.encode(Batch(batch.users[b : b + 1], h))
            per_item = 1 if item_tokens == "sum" else 4
            state = memory.states[0, -1]  # the last token: the most recent item's (last code)
            assert memory.states.shape[1] == h.shape[1] * per_item + (1 if users else 0)
            q = model.dense.query(state)
            logits = []
            for i in range(40):
                v = model.text.proj(model.text.item_text[i])
                if dense_item == "text+codes":
                    v = v + sum(model.code_emb.weight[int(model.offsets[lv]) + int(model.item_codes[i, lv])]
                                for lv in range(4))
                logits.append(F.cosine_similarity(q, v, dim=0) / 0.2)
            want = torch.log_softmax(torch.stack(logits), 0)
            torch.testing.assert_close(got[b], want, atol=1e-4, rtol=1e-4)
    removed = dense_log_probs(model, batch, exclude_history=True)
    for b in range(6):
        seen = batch.history[b][batch.history[b] >= 0][-5:]  # the history the model sees
        assert torch.isinf(removed[b, seen]).all() and torch.isfinite(removed[b]).sum() == 40 - len(seen.unique())


@pytest.mark.parametrize("repeat_bias", [False, True])
def test_one_pass_dense_loss_equals_one_example_at_a_time(repeat_bias):
    """Training every position of a window at once gives each target the dense logits it gets alone (causal)."""
    model = dense_model(repeat_bias=repeat_bias)
    if repeat_bias:
        torch.nn.init.normal_(model.dense.repeat.weight, std=2.0)
    window = torch.tensor([[-1, 5, 9, 5, 30, 12], [3, 8, 1, 22, 14, 0]])  # items then next items
    history, targets = window[:, :-1], window[:, 1:].clone()
    targets[0, 0] = -1  # nothing after padding
    model.cfg = dataclasses.replace(model.cfg, generative_weight=0.0)  # the dense loss alone
    with torch.no_grad():
        together = model(Batch(torch.zeros(2, dtype=torch.long), history, targets)).loss
        alone = []
        for b in range(2):
            for t in range(5):
                if targets[b, t] >= 0:
                    h = history[b, : t + 1][None]
                    alone.append(model(Batch(torch.zeros(1, dtype=torch.long), h, targets[b, t : t + 1])).loss)
    assert together == pytest.approx(float(torch.stack(alone).mean()), abs=1e-5)


def test_hybrid_reranks_the_beam_and_the_new_items_and_equals_dense_when_k_covers_the_catalogue():
    model = dense_model()
    batch = random_batch(40, 5, seed=11)
    for exclude in (True, False):
        dense = dense_log_probs(model, batch, exclude)
        beam = beam_search(model.code_decoder(), batch, model.trie, beam_size=6, exclude_history=exclude).items
        got = hybrid_scores(model, batch, 6, exclude)
        for b in range(5):
            allowed = set(beam[b][beam[b] >= 0].tolist()) | {3, 17, 29}
            finite = set(torch.isfinite(got[b]).nonzero()[:, 0].tolist())
            assert finite == {i for i in allowed if torch.isfinite(dense[b, i])}  # only candidates, all in range
            assert torch.equal(got[b, sorted(finite)], dense[b, sorted(finite)])
        whole = hybrid_scores(model, batch, 40, exclude)  # a beam as wide as the catalogue: every item
        assert torch.equal(whole, dense)
    method = model.ranking("hybrid-6")
    assert method.name == "hybrid-6" and not method.complete and method.list_size == 6 + 3
    items, scores = method.recommend(batch, 20, True)
    assert ((items >= -1) & (items < 40)).all() and (items >= 0).sum(1).max() <= 9


def test_a_model_directory_carries_the_text_and_the_new_items(tmp_path):
    model = dense_model()
    codes = model.item_codes.numpy()
    catalog = Catalog([f"i{i}" for i in range(40)], [{} for _ in range(40)], codes, 3)
    save_model(model, tmp_path / "m", catalog=catalog)
    loaded = Tiger.from_pretrained(tmp_path / "m")
    assert loaded.methods == ("generative", "exact", "dense", "hybrid", "fusion", "newshare", "newtext")
    assert torch.equal(loaded.text.item_text, model.text.item_text)
    assert loaded.dense.new_items.nonzero()[:, 0].tolist() == [3, 17, 29]
    batch = random_batch(40, 4, seed=2)
    torch.testing.assert_close(dense_log_probs(loaded, batch, True), dense_log_probs(model, batch, True))
    assert torch.isfinite(dense_log_probs(loaded, batch, False)).all()


def test_the_hybrid_ranks_by_default_and_generation_and_dense_are_evaluated_beside_it(tmp_path):
    model = dense_model()
    assert model.default_methods == ("hybrid", "generative", "dense")
    assert model.methods[0] == "generative"  # what training selects on
    dense_only = dense_model()
    dense_only.cfg = dataclasses.replace(dense_only.cfg, generative_weight=0.0)
    dense_only.methods = Tiger.offered_methods(dense_only.cfg)
    assert dense_only.default_methods == ("dense",)
    codes = collision_catalog(40, [3, 4, 3], seed=7)
    plain = tiny_model(codes, [3, 4, 3, int(codes[:, -1].max()) + 1])
    assert plain.default_methods == ("generative",) and ContentBaseline.methods == ("content",)


def test_items_without_text_train_generation_alone_and_a_dense_only_model_is_refused(caplog):
    codes = collision_catalog(40, [3, 4, 3], seed=7)
    no_text = Catalog([f"i{i}" for i in range(40)], [{} for _ in range(40)], codes, 4)
    cfg = dataclasses.replace(tiny_config("sum", causal_encoder=True, trie_softmax=True), text_input=True,
                              dense_weight=1.0)  # the defaults' hybrid
    with caplog.at_level("WARNING"):
        model = Tiger.from_catalog(cfg, catalog=no_text, max_history=5)
    assert "no text" in caplog.text and "generation only" in caplog.text
    assert (model.cfg.text_input, model.cfg.dense_weight) == (False, 0.0)
    assert model.text is None and model.dense is None and model.methods == ("generative", "exact")
    with_text = dataclasses.replace(no_text, text=F.normalize(torch.randn(40, 12), dim=-1).numpy())
    hybrid = Tiger.from_catalog(cfg, catalog=with_text, max_history=5)
    assert hybrid.cfg == cfg and hybrid.dense is not None and hybrid.default_methods[0] == "hybrid"
    with pytest.raises(GenrecError, match="generative_weight=0 leaves only the dense head"):
        Tiger.from_catalog(dataclasses.replace(cfg, generative_weight=0.0), catalog=no_text, max_history=5)


def test_a_model_directory_saved_before_the_hybrid_loads_without_it(tmp_path):
    codes = collision_catalog(40, [3, 4, 3], seed=7)
    plain = tiny_model(codes, [3, 4, 3, int(codes[:, -1].max()) + 1], item_tokens="sum", causal_encoder=True,
                       trie_softmax=True)
    catalog = Catalog([f"i{i}" for i in range(40)], [{} for _ in range(40)], plain.item_codes.numpy(), 4)
    save_model(plain, tmp_path / "m", catalog=catalog)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["model"]["text_input"], config["model"]["dense_weight"]  # as written before the settings existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = Tiger.from_pretrained(tmp_path / "m")
    assert loaded.dense is None and loaded.methods == ("generative", "exact")
    batch = random_batch(40, 3, seed=5)
    assert torch.equal(brute_force_scores(loaded, batch), brute_force_scores(plain.eval(), batch))


def test_fusion_adds_the_generative_and_dense_log_probabilities_of_the_same_candidates():
    model = dense_model()
    batch = random_batch(40, 5, seed=13)
    generative = brute_force_scores(model, batch)  # [B, N] teacher-forced, item by item
    for exclude in (True, False):
        dense = dense_log_probs(model, batch, exclude)
        candidates = torch.isfinite(hybrid_scores(model, batch, 6, exclude))
        got = fusion_scores(model, batch, 6, exclude)
        assert torch.equal(torch.isfinite(got), candidates)  # the hybrid's candidates, new items included
        want = (dense + generative)[candidates]
        torch.testing.assert_close(got[candidates], want, atol=1e-4, rtol=1e-4)
    assert model.ranking("fusion").name == "fusion" and model.ranking("fusion-8").list_size == 8 + 3


@pytest.mark.parametrize("name,offered", [
    ("hybrid", True), ("hybrid-40", True), ("fusion-1000", True), ("dense", True),
    ("hybrid-0", False), ("hybrid-040", False), ("hybrid-1001", False), ("hybrid-100000000", False),
    ("hybrid-\u00b2", False), ("generative-5", False), ("exact-3", False), ("dense-2", False), ("hybrid-", False),
    ("newshare", True), ("newshare-5", True), ("newshare-99", True), ("newshare-100", False), ("newshare-0", False),
    ("newtext", True), ("newtext-10", True), ("newtext-100", False),
])
def test_only_the_hybrid_methods_take_a_size_and_only_a_sane_one(name, offered):
    model = dense_model()
    assert offers(model.methods, name) is offered
    if offered:
        assert model.ranking(name).name == name
    else:
        with pytest.raises(KeyError):
            model.ranking(name)


def test_new_items_are_no_negatives_of_the_dense_loss():
    """The dense softmax of training runs over the items that existed: the new ones' logits take no part."""
    model = dense_model()
    model.cfg = dataclasses.replace(model.cfg, generative_weight=0.0)
    batch = Batch(torch.zeros(3, dtype=torch.long), torch.tensor([[-1, 4, 9], [2, 8, 1], [-1, -1, 7]]),
                  torch.tensor([5, 30, 12]))
    with torch.no_grad():
        loss = model(batch).loss
        memory = model.encode(Batch(batch.users, batch.history))
        z = model.dense.logits(model.item_states(memory)[:, -1], model.dense_vectors(), batch.history, None)
    keep = ~model.dense.new_items  # items 3, 17 and 29 are new
    kept = keep.nonzero()[:, 0].tolist()
    want = torch.nn.functional.cross_entropy(z[:, keep], torch.tensor([kept.index(t) for t in (5, 30, 12)]))
    assert loss == pytest.approx(float(want), abs=1e-5)
    assert loss != pytest.approx(float(torch.nn.functional.cross_entropy(z, batch.targets)), abs=1e-4)


def test_newshare_puts_its_share_on_the_new_items_spread_as_the_dense_head_spreads_it():
    model = dense_model()  # items 3, 17 and 29 are new
    batch = random_batch(40, 5, seed=17)
    new = model.dense.new_items
    with torch.no_grad():
        dense = dense_log_probs(model, batch, False)
        got = new_share_log_probs(model, batch, 0.2, False)
    p = dense.exp()
    want = torch.where(new, 0.2 * p / p[:, new].sum(1, keepdim=True), 0.8 * p / p[:, ~new].sum(1, keepdim=True))
    torch.testing.assert_close(got.exp(), want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(got.exp()[:, new].sum(1), torch.full((5,), 0.2))
    removed = new_share_log_probs(model, batch, 0.2, True)  # history items removed after the split
    assert torch.equal(torch.isinf(removed), torch.isinf(dense_log_probs(model, batch, True)))
    method = model.ranking("newshare-20")
    assert method.complete and method.name == "newshare-20"
    items, scores = method.recommend(batch, 40, False)
    torch.testing.assert_close(scores, got.sort(1, descending=True).values)
    plain = model.ranking("newshare")  # the new items' share of the catalogue: 3 of 40
    torch.testing.assert_close(plain.recommend(batch, 40, False)[1],
                               new_share_log_probs(model, batch, 3 / 40, False).sort(1, descending=True).values)
    model.dense.new_items.zero_()  # no new items: the dense ranking itself
    torch.testing.assert_close(new_share_log_probs(model, batch, 0.2, True), dense_log_probs(model, batch, True))


def test_newtext_spreads_the_new_items_share_by_text_likeness_to_the_last_items():
    """newtext-S: the known items as newshare-S has them; the new items' S spread by softmax over the new items of
    the content baseline's cosine (mean text of the last 3 history items) over the dense head's temperature."""
    model = dense_model()  # items 3, 17 and 29 are new
    batch = random_batch(40, 5, seed=23)
    new = model.dense.new_items
    with torch.no_grad():
        got = new_share_log_probs(model, batch, 0.2, False, by_text=True)
        shared = new_share_log_probs(model, batch, 0.2, False)
    torch.testing.assert_close(got[:, ~new], shared[:, ~new])
    cosine = ContentBaseline(model.text.item_text, max_history=model.max_history).score(batch, False)  # [B, N]
    want = 0.2 * torch.softmax(cosine[:, new] / model.dense.temperature, dim=1)
    torch.testing.assert_close(got.exp()[:, new], want, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(got[:, new], shared[:, new])  # not the head's own spread
    method = model.ranking("newtext-20")
    assert method.complete and method.name == "newtext-20"
    torch.testing.assert_close(method.recommend(batch, 40, False)[1], got.sort(1, descending=True).values)
    removed = new_share_log_probs(model, batch, 0.2, True, by_text=True)
    assert torch.equal(torch.isinf(removed), torch.isinf(dense_log_probs(model, batch, True)))


def test_item_vectors_are_kept_between_ranking_calls_until_a_source_changes():
    model = dense_model().eval()
    with torch.no_grad():
        first = item_vectors(model)
        assert item_vectors(model) is first  # kept
        assert torch.equal(first, model.dense_vectors())
        model.text.proj.weight.add_(0.5)  # an optimiser step changes it in place
        changed = item_vectors(model)
        assert changed is not first and torch.equal(changed, model.dense_vectors())
        model.item_codes = model.item_codes.flip(0)  # a new tensor (items re-coded or added)
        assert torch.equal(item_vectors(model), model.dense_vectors())
        with torch.autocast("cpu", dtype=torch.bfloat16):  # per autocast setting
            low = item_vectors(model)
            assert torch.equal(low, model.dense_vectors())
        assert not torch.equal(low, item_vectors(model)) and torch.equal(item_vectors(model), model.dense_vectors())
    model.train()
    assert item_vectors(model).requires_grad  # training recomputes, with gradients
