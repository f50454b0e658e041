"""Recipes: unknown keys, types, invariants, overrides, and that shipped recipes are complete."""

from __future__ import annotations

import re

import pytest
import yaml

from genrec.config import Config, ConfigError, load_config, to_dict

from conftest import REPO


def same_keys(recipe: dict, defaults: dict, where: str = "") -> list[str]:
    """Where the recipe's keys differ from the defaults', at any depth."""
    found = [f"{where}{sorted(set(recipe) ^ set(defaults))}"] if recipe.keys() != defaults.keys() else []
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            found += same_keys(recipe[key], value, f"{where}{key}.")
    return found


def test_shipped_recipes_load_and_are_complete():
    defaults = to_dict(Config())
    for name in ("beauty.yaml", "beauty-tiger-paper.yaml", "beauty-sasrec.yaml", "tiny.yaml", "bookshop.yaml"):
        recipe = yaml.safe_load((REPO / "configs" / name).read_text())
        assert same_keys(recipe, defaults) == [], name  # every section, model.tiger and model.sasrec too
        load_config(REPO / "configs" / name)
    assert same_keys({"model": {"tiger": {"d_model": 1}}}, {"model": {"tiger": {"d_model": 1, "d_ff": 2}}}) == [
        "model.tiger.['d_ff']"]  # the check itself sees a missing nested key
    assert load_config(REPO / "configs" / "beauty.yaml") == Config()  # the recipe is the defaults


def test_overrides_and_types():
    cfg = load_config(None, ["train.lr=3e-4", "evaluate.ks=[5,10]", "model.tiger.dropout=0", "run_dir=runs/x",
                             "model.sasrec.d_model=16", "evaluate.methods=[generative,exact]"])
    assert cfg.train.lr == 3e-4 and cfg.evaluate.ks == (5, 10) and cfg.model.tiger.dropout == 0.0
    assert cfg.run_dir == "runs/x" and cfg.model.sasrec.d_model == 16
    assert cfg.evaluate.methods == ("generative", "exact")
    assert cfg.model.section is cfg.model.tiger  # model.kind picks the section
    sasrec = load_config(None, ["model.kind=sasrec", "model.sasrec.d_model=32", "model.sasrec.num_heads=4"])
    assert sasrec.model.section is sasrec.model.sasrec and sasrec.model.sasrec.head_dim == 8


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown key train.nope; valid keys: batch_size"),
    ("nope.x=1", "unknown key nope"),
    ("train.max_steps=ten", "train.max_steps must be of type int"),
    ("model.tiger.item_tokens=bytes", "model.tiger.item_tokens='bytes' is not one of codes, sum"),
    ("model.kind=bert", "model.kind='bert' is not one of tiger, sasrec"),
    ("quantize.method=pq", "quantize.method='pq' is not one of rqkmeans"),
    ("model.sasrec.num_heads=3", "model.sasrec.d_model=64 must be divisible by model.sasrec.num_heads=3"),
    ("model.sasrec.dropout=1", "model.sasrec.dropout must be in [0, 1)"),
    ("model.sasrec.attention_dropout=1.5", "model.sasrec.attention_dropout must be below 1"),
    ("evaluate.methods=[exact,exact]", "evaluate.methods lists a method twice"),
    ("model.tiger=3", "model.tiger must be a mapping of its keys"),
    ("train.select_metric=ndcg@50", "k <= train.valid_beam_size"),
    ("data.format=table", "needs data.interactions"),
    ("evaluate.splits=[train]", "evaluate.splits must be a subset"),
    ("train.distill=1.5", "train.distill must be in [0, 1]"),
    ("quantize.codebook_size=1", "quantize.codebook_size must be at least 2"),
    ("data.min_rating=3", "data.min_rating=3.0 needs data.rating_column"),
])
def test_bad_settings_fail_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\ntrain:\n  lr: [1, 2\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML at line 4, column 7: expected ',' or ']'"):
        load_config(bad)


def test_text_overrides_are_taken_as_written():
    """A text setting such as a template holds ': ', which YAML would read as a mapping."""
    cfg = load_config(None, ["embed.template=Title: {title}; Genre: {genre}", "run_dir=runs/a: b"])
    assert cfg.embed.template == "Title: {title}; Genre: {genre}" and cfg.run_dir == "runs/a: b"
    assert load_config(None, ["evaluate.ks=[5, 10]"]).evaluate.ks == (5, 10)
    with pytest.raises(ConfigError, match=r"override 'evaluate.ks=\[5, 10': the value is not valid YAML"):
        load_config(None, ["evaluate.ks=[5, 10"])


def test_distillation_needs_the_collab_teacher():
    assert load_config(None, ["train.distill=0.5"]).train.distill == 0.5
    assert load_config(None, ["model.kind=sasrec"]).train.distill > 0  # a tiger-only setting: SASRec ignores it
    with pytest.raises(ConfigError, match="collab.enabled=false turns off; set train.distill=0 as well"):
        load_config(None, ["collab.enabled=false"])
    assert load_config(None, ["collab.enabled=false", "train.distill=0"]).train.distill == 0


@pytest.mark.parametrize("override, new", [
    ("model.d_model=32", "model.tiger.d_model \\(for model.kind=sasrec: model.sasrec.d_model\\)"),
    ("model.encoder_layers=2", "model.tiger.encoder_layers \\(for model.kind=sasrec: model.sasrec.layers\\)"),
    ("model.item_tokens=sum", "model.tiger.item_tokens; rename"),
    ("model.num_user_buckets=0", "model.tiger.num_user_buckets; rename"),
    ("collab.d_model=16", "model.sasrec.d_model \\(the collab SASRec's feed-forward was as wide: set "
                          "model.sasrec.d_ff to the same value\\)"),
    ("collab.layers=2", "model.sasrec.layers"),
    ("collab.dropout=0.2", "model.sasrec.dropout"),
    ("evaluate.exact=true", "evaluate.methods \\(e.g. \\[generative, exact\\]\\)"),
])
def test_keys_of_earlier_recipes_name_their_new_place(override, new):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key} has moved to {new}"):
        load_config(None, [override])


def test_an_earlier_recipe_file_fails_on_its_first_moved_key(tmp_path):
    old = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    old["model"] = {"kind": "tiger", **old["model"]["tiger"]}  # the flat model section of earlier recipes
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="model.causal_encoder has moved to model.tiger.causal_encoder"):
        load_config(path)
