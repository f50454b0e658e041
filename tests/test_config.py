"""Recipes: unknown keys, types, invariants, overrides, and that shipped recipes are complete."""

from __future__ import annotations

import pytest
import yaml

from genrec.config import Config, ConfigError, load_config, to_dict

from conftest import REPO


def test_shipped_recipes_load_and_are_complete():
    defaults = to_dict(Config())
    for name in ("beauty.yaml", "beauty-tiger-paper.yaml", "beauty-sasrec.yaml", "tiny.yaml"):
        recipe = yaml.safe_load((REPO / "configs" / name).read_text())
        assert recipe.keys() == defaults.keys()
        for section, values in recipe.items():
            if isinstance(values, dict):
                assert values.keys() == defaults[section].keys(), (name, section)
        load_config(REPO / "configs" / name)
    assert load_config(REPO / "configs" / "beauty.yaml") == Config()  # the recipe is the defaults


def test_overrides_and_types():
    cfg = load_config(None, ["train.lr=3e-4", "evaluate.ks=[5,10]", "model.dropout=0", "run_dir=runs/x"])
    assert cfg.train.lr == 3e-4 and cfg.evaluate.ks == (5, 10) and cfg.model.dropout == 0.0
    assert cfg.run_dir == "runs/x"


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown key train.nope; valid keys: batch_size"),
    ("nope.x=1", "unknown key nope"),
    ("train.max_steps=ten", "train.max_steps must be of type int"),
    ("model.item_tokens=bytes", "model.item_tokens='bytes' is not one of codes, sum"),
    ("train.select_metric=ndcg@50", "k <= train.valid_beam_size"),
    ("data.format=table", "needs data.interactions"),
    ("evaluate.splits=[train]", "evaluate.splits must be a subset"),
    ("train.distill=1.5", "train.distill must be in [0, 1]"),
])
def test_bad_settings_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_distillation_needs_the_collab_teacher():
    assert load_config(None, ["train.distill=0.5"]).train.distill == 0.5
    assert load_config(None, ["model.kind=sasrec"]).train.distill > 0  # a tiger-only setting: SASRec ignores it
    with pytest.raises(ConfigError, match="collab.enabled=false turns off; set train.distill=0 as well"):
        load_config(None, ["collab.enabled=false"])
    assert load_config(None, ["collab.enabled=false", "train.distill=0"]).train.distill == 0
