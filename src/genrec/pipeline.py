"""The stages `prepare -> embed -> collab -> quantize -> train -> evaluate`, talking through files in a run directory.

Each stage writes into `<run_dir>/<stage>.tmp` and is renamed to `<run_dir>/<stage>` only when it finished,
together with a `stage.json` stamp: a fingerprint of the config sections the stage depends on plus the id
of the upstream stage's output. A stage whose stamp matches is skipped; `--force` reruns it, and anything
downstream then reruns because its upstream id changed. Training works in `<run_dir>/train.partial` so that
a killed run resumes from its last checkpoint when started again with the same settings.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from genrec.checkpoint import replace_dir
from genrec.config import Config, fingerprint, save_config
from genrec.distributed import DistInfo, barrier, broadcast_object
from genrec.errors import GenrecError

logger = logging.getLogger(__name__)

STAGES = ("prepare", "embed", "collab", "quantize", "train", "evaluate")
SECTIONS = {"prepare": ("data",), "embed": ("embed",), "collab": ("collab",), "quantize": ("quantize",),
            "train": ("model", "train"), "evaluate": ("evaluate",)}
DISTRIBUTED = {"collab", "train", "evaluate"}  # the others run on rank 0 while the rest wait


def read_stamp(run_dir: Path, stage: str) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / stage / "stage.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def expected_stamp(cfg: Config, run_dir: Path, stage: str) -> dict[str, Any]:
    i = STAGES.index(stage)
    upstream = None
    if i > 0:
        up = read_stamp(run_dir, STAGES[i - 1])
        if up is None:
            raise GenrecError(f"stage '{stage}' needs the output of '{STAGES[i - 1]}' in {run_dir}, which is "
                              f"missing or unfinished; run 'genrec {STAGES[i - 1]}' first (or 'genrec run')")
        upstream = up["id"]
    sections = [getattr(cfg, s) for s in SECTIONS[stage]]
    return {"stage": stage, "fingerprint": fingerprint(*sections), "upstream": upstream}


def is_current(cfg: Config, run_dir: Path, stage: str) -> bool:
    stamp = read_stamp(run_dir, stage)
    want = expected_stamp(cfg, run_dir, stage)
    return stamp is not None and all(stamp.get(k) == v for k, v in want.items())


def _execute(cfg: Config, run_dir: Path, stage: str, out_dir: Path, dist: DistInfo) -> Any:
    if stage == "prepare":
        from genrec.prepare import prepare

        return prepare(cfg.data, out_dir)
    if stage == "embed":
        from genrec.embed import embed
        from genrec.prepare import load_prepared

        dataset = load_prepared(run_dir / "prepare")
        return embed(cfg.embed, dataset.items, dataset.item_ids, out_dir)
    if stage == "collab":
        from genrec.collab import collab

        return collab(cfg, run_dir, out_dir, dist)
    if stage == "quantize":
        from genrec.quantize import quantize

        return quantize(cfg.quantize, run_dir / ("collab" if cfg.collab.enabled else "embed"), out_dir)
    if stage == "train":
        from genrec.train import train

        return train(cfg, run_dir, out_dir, dist)
    from genrec.evaluate import evaluate_run

    return evaluate_run(cfg, run_dir, out_dir, dist)


def run_stage(cfg: Config, stage: str, dist: DistInfo, force: bool = False) -> bool:
    """Run one stage unless its outputs are current. Returns True if it ran."""
    run_dir = Path(cfg.run_dir)
    want = expected_stamp(cfg, run_dir, stage)
    if not force and is_current(cfg, run_dir, stage):
        logger.info("%s: up to date, skipped (pass --force to rerun)", stage)
        return False
    work = run_dir / (f"{stage}.partial" if stage == "train" else f"{stage}.tmp")
    if dist.is_main:
        partial_stamp = work / "stage.partial.json"
        resumable = (stage == "train" and not force and partial_stamp.exists()
                     and json.loads(partial_stamp.read_text()) == want)
        if work.exists() and not resumable:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        partial_stamp.write_text(json.dumps(want))
    barrier()
    logger.info("%s: running", stage)
    start = time.perf_counter()
    error = None
    if dist.is_main or stage in DISTRIBUTED:
        try:
            _execute(cfg, run_dir, stage, work, dist)
        except GenrecError as err:
            error = str(err)
    error = broadcast_object(error)  # so that ranks waiting at the barrier stop too
    if error is not None:
        if dist.is_main and stage != "train":
            shutil.rmtree(work, ignore_errors=True)
        raise GenrecError(error)
    barrier()
    if dist.is_main:
        (work / "stage.partial.json").unlink()
        stamp = {**want, "id": uuid.uuid4().hex, "seconds": round(time.perf_counter() - start, 2)}
        (work / "stage.json").write_text(json.dumps(stamp, indent=2))
        replace_dir(work, run_dir / stage)
    barrier()
    logger.info("%s: done in %.1f s", stage, time.perf_counter() - start)
    return True


def run(cfg: Config, dist: DistInfo, stages: tuple[str, ...] = STAGES, force: bool = False,
        on_stage: Callable[[str, bool], None] | None = None) -> None:
    """Run `stages` in order; with force every one of them reruns."""
    run_dir = Path(cfg.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    for stage in stages:
        ran = run_stage(cfg, stage, dist, force=force)
        if on_stage is not None:
            on_stage(stage, ran)
