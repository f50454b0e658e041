"""Model directories: save/load round trips for both kinds, the catalogue check (semantic IDs for a Tiger, the
item list alone for a SASRec), resumable checkpoints, and damaged directories."""

from __future__ import annotations

import json

import pytest
import torch

from genrec.config import SASRecConfig
from genrec.data.batches import Batch
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.models.checkpoint import (check_catalog, latest_checkpoint, load_model, load_trainer_state, rng_state,
                                      save_model)
from genrec.models.registry import MODELS, build_model
from genrec.models.sasrec import SASRec
from genrec.models.tiger import Tiger

from tiny_tiger import collision_catalog, random_batch, tiny_config

ITEMS = [f"i{n}" for n in range(40)]


def tiger_catalog(seed: int = 0, item_ids: list[str] = ITEMS) -> Catalog:
    sids = collision_catalog(40, [3, 4, 3], seed=seed)
    return Catalog(item_ids=list(item_ids), items=[{} for _ in item_ids], sids=sids, codebook_size=4)


def tiger(catalog: Catalog) -> Tiger:
    torch.manual_seed(0)
    model = Tiger.from_catalog(tiny_config("sum", trie_softmax=True), catalog=catalog, max_history=5)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def sasrec(num_items: int = 40) -> SASRec:
    torch.manual_seed(0)
    model = SASRec(cfg=SASRecConfig(d_model=8, num_heads=2, d_ff=8, layers=1, dropout=0.0), num_items=num_items,
                   max_history=5)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def test_tiger_round_trip_and_its_catalogue_check(tmp_path):
    catalog = tiger_catalog()
    model = tiger(catalog)
    save_model(model, tmp_path / "m", catalog=catalog)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "items.jsonl", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["kind"] == "tiger" and config["uses_sids"] is True
    assert config["meta"] == model.checkpoint_meta() and config["catalog"] == catalog.fingerprint(with_sids=True)
    rng = torch.get_rng_state()
    loaded = load_model(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left as it was
    assert isinstance(loaded, Tiger) and not loaded.training and loaded.cfg == model.cfg
    assert loaded.level_sizes == catalog.level_sizes
    assert torch.equal(loaded.item_codes, torch.from_numpy(catalog.sids))  # the semantic IDs travel with it
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    batch = random_batch(40, 4, seed=1)
    torch.testing.assert_close(loaded.ranking("exact").recommend(batch, 40, True),
                               model.ranking("exact").recommend(batch, 40, True))
    check_catalog(tmp_path / "m", catalog)  # the same catalogue passes
    with pytest.raises(GenrecError, match=r"trained on a different catalogue \(40 items.*current semantic IDs "
                                          r"\(40 items.*genrec train --force"):
        check_catalog(tmp_path / "m", tiger_catalog(seed=1))  # same items, other IDs


def test_sasrec_checkpoints_carry_no_semantic_ids(tmp_path):
    """A SASRec is tied to the item list only: saved before any quantize stage, loaded without IDs, and it
    keeps working when the semantic IDs change; another item list is refused."""
    model = sasrec()
    before_quantize = Catalog(item_ids=list(ITEMS), items=[{} for _ in ITEMS])  # no semantic IDs yet
    save_model(model, tmp_path / "m", catalog=before_quantize)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["kind"] == "sasrec" and config["uses_sids"] is False
    assert config["meta"] == {"num_items": 40, "max_history": 5}
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, SASRec) and loaded.num_items == 40
    assert not any("code" in name for name in loaded.state_dict())
    assert loaded.state_dict().keys() == model.state_dict().keys()
    batch = Batch(users=torch.zeros(2, dtype=torch.long), history=torch.tensor([[1, 2, 3], [-1, 7, 8]]))
    torch.testing.assert_close(loaded.score(batch), model.score(batch))
    check_catalog(tmp_path / "m", before_quantize)
    check_catalog(tmp_path / "m", tiger_catalog(seed=0))  # semantic IDs come and go: the items are the same
    check_catalog(tmp_path / "m", tiger_catalog(seed=1))
    renamed = ITEMS[:-1] + ["new"]
    with pytest.raises(GenrecError, match=r"different catalogue \(40 items.*than the current items \(40 items"):
        check_catalog(tmp_path / "m", Catalog(item_ids=renamed, items=[{} for _ in renamed]))


def test_build_model_reads_its_own_section():
    from genrec.config import ModelConfig

    catalog = tiger_catalog()
    cfg = ModelConfig(kind="sasrec", sasrec=SASRecConfig(d_model=12, num_heads=3, d_ff=8, layers=3))
    model = build_model(cfg, catalog=Catalog(item_ids=list(ITEMS), items=[{} for _ in ITEMS]), max_history=7)
    assert type(model) is MODELS["sasrec"] and model.cfg is cfg.sasrec and len(model.layers) == 3
    assert model.item_embeddings().shape == (40, 12)
    model = build_model(ModelConfig(kind="tiger", tiger=tiny_config()), catalog=catalog, max_history=7)
    assert type(model) is MODELS["tiger"] and model.max_history == 7 and model.level_sizes == catalog.level_sizes


def test_resumable_checkpoints_and_the_latest_one(tmp_path):
    catalog = tiger_catalog()
    model = tiger(catalog)
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 40, 12):
        save_model(model, tmp_path / f"checkpoint-{step}", catalog=catalog,
                   extra_state={"state": {"step": step}, "rng": rng_state()})
    save_model(model, tmp_path / "checkpoint-99", catalog=catalog)  # a model directory with no trainer state
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-40"  # by step number, not by name
    state = load_trainer_state(tmp_path / "checkpoint-40")
    assert state["state"] == {"step": 40} and torch.equal(state["rng"]["torch"], torch.get_rng_state())
    save_model(sasrec(), tmp_path / "checkpoint-40", catalog=catalog)  # overwritten whole, atomically
    assert isinstance(load_model(tmp_path / "checkpoint-40"), SASRec)
    assert not (tmp_path / "checkpoint-40" / "trainer_state.pt").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))


def test_damaged_model_directories_are_user_errors(tmp_path):
    with pytest.raises(GenrecError, match="is not a genrec model directory \\(config.json is missing\\)"):
        load_model(tmp_path / "nowhere")
    catalog = tiger_catalog()
    save_model(sasrec(), tmp_path / "old", catalog=catalog)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["kind"]  # as written by an earlier version
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenrecError, match="does not name a model kind expected here \\(None; expected: tiger, sasrec\\)"):
        load_model(tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text("{not json")
    with pytest.raises(GenrecError, match="holds a corrupt model"):
        load_model(tmp_path / "old")


def test_corrupt_weights_are_a_user_error(tmp_path):
    catalog = tiger_catalog()
    save_model(tiger(catalog), tmp_path / "m", catalog=catalog)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(GenrecError, match="holds a corrupt model"):
        load_model(tmp_path / "m")
