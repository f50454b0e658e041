"""Shared fixtures: a tiny synthetic dataset and recipe overrides that put every artifact under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-data")
    write_synthetic(directory, num_users=120, items_per_kind=8)
    return directory


@pytest.fixture
def tiny_overrides(tmp_path, tiny_data) -> list[str]:
    """Overrides of configs/tiny.yaml: data from tiny_data, run directory in tmp_path, a few steps only."""
    return [f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}", "train.max_steps=80", "train.eval_every=40",
            "train.warmup_steps=5", "train.batch_size=16"]


@pytest.fixture(scope="session")
def hybrid_run(tmp_path_factory, tiny_data) -> tuple[Path, list[str]]:
    """A tiny trained run of the hybrid recipe (dense head and text input), shared by the tests that only read it
    (copy it before changing it): (run directory, overrides of configs/tiny.yaml)."""
    from genrec.cli import main

    run_dir = tmp_path_factory.mktemp("hybrid") / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", "train.max_steps=60", "train.eval_every=30",
                 "train.warmup_steps=5", "train.batch_size=16", "collab.max_steps=40", "collab.eval_every=20",
                 "model.tiger.text_input=true", "model.tiger.dense_weight=1.0", "evaluate.dtype=float32",
                 "evaluate.methods=[generative,dense,hybrid,hybrid-4]", "evaluate.ks=[5,10,40]"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides


@pytest.fixture(scope="session")
def query_run(tmp_path_factory, hybrid_run) -> tuple[Path, list[str]]:
    """A copy of hybrid_run with its query model trained (`genrec train-query`): (run directory, overrides)."""
    import shutil

    from genrec.cli import main

    run_dir = tmp_path_factory.mktemp("query") / "run"
    shutil.copytree(hybrid_run[0], run_dir)
    overrides = [o for o in hybrid_run[1] if not o.startswith("run_dir=")] + [f"run_dir={run_dir}"]
    assert main(["train-query", "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides
