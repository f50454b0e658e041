"""The stages `prepare -> embed -> collab -> quantize -> train -> evaluate`, talking through files in a run directory.

Each stage writes into `<run_dir>/<stage>.tmp` and is renamed to `<run_dir>/<stage>` only when it finished,
together with a `stage.json` stamp: the settings the stage depends on (and their fingerprint) plus the id of
the upstream stage's output. A stage whose stamp matches is skipped; `--force` reruns it, and anything
downstream then reruns because its upstream id changed. Training works in `<run_dir>/train.partial` so that a
killed run resumes from its last checkpoint when started again with the same settings.

`<run_dir>/config.yaml` is rebuilt from the stamps after every stage: it holds the settings each finished stage
ran with, and nothing that no stage has used. The run directory is locked for the whole command (`RunDir.lock`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import yaml

from genrec.config import Config, fingerprint, to_dict
from genrec.distributed import DistInfo, barrier, broadcast_object
from genrec.errors import GenrecError
from genrec.files import replace_dir, save_json, write_bytes
from genrec.models.registry import MODELS
from genrec.models.types import offers
from genrec.provenance import machine, versions
from genrec.rundir import PARTIAL_STAMP, STAGES, STAMP, RunDir
from genrec.stages import RUN

logger = logging.getLogger(__name__)

DISTRIBUTED = {"collab", "train", "evaluate"}  # the others run on rank 0 while the rest wait


def unneeded(cfg: Config, stage: str) -> str | None:
    """Why a stage has nothing to do for this recipe (it then finishes at once, empty), or None."""
    if stage in ("embed", "collab", "quantize") and not MODELS[cfg.model.kind].uses_sids:
        return f"model.kind={cfg.model.kind} uses no semantic IDs"
    return None


def settings(cfg: Config, stage: str) -> dict[str, Any]:
    """The settings a stage depends on, by dotted section name (a disabled collab stage depends on nothing else)."""
    reason = unneeded(cfg, stage)
    if reason is not None:
        return {"skipped": reason}
    collab = {"collab": cfg.collab, "model.sasrec": cfg.model.sasrec} if cfg.collab.enabled else \
        {"collab.enabled": False}
    by_stage = {"prepare": {"data": cfg.data}, "embed": {"embed": cfg.embed}, "collab": collab,
                "quantize": {"quantize": cfg.quantize},
                "train": {"model.kind": cfg.model.kind, f"model.{cfg.model.kind}": cfg.model.section,
                          "train": cfg.train},
                "evaluate": {"evaluate": cfg.evaluate}}
    return {name: to_dict(section) for name, section in by_stage[stage].items()}


def read_stamp(run: RunDir, stage: str) -> dict[str, Any] | None:
    try:
        return json.loads(run.stamp(stage).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def expected_stamp(cfg: Config, run: RunDir, stage: str) -> dict[str, Any]:
    i = STAGES.index(stage)
    upstream = None
    if i > 0:
        up = read_stamp(run, STAGES[i - 1])
        if up is None:
            raise GenrecError(f"stage '{stage}' needs the output of '{STAGES[i - 1]}' in {run.root}, which is "
                              f"missing or unfinished; run 'genrec {STAGES[i - 1]}' first (or 'genrec run')")
        upstream = up["id"]
    values = settings(cfg, stage)
    return {"stage": stage, "fingerprint": fingerprint(*map(_without_later_defaults, values.items())),
            "upstream": upstream, "settings": values}


# Settings added after runs were made, with the value that does what those runs did: left out of the fingerprint
# at that value, so that a run directory made before a setting existed stays current.
LATER = {
    "data": {"keep_repeats": False, "cold_items": 0.0, "cold_items_by": "random", "cold_seed": 0},
    "quantize": {"inputs": "auto", "latent_dim": 32, "hidden_dim": 256, "steps": 3000, "batch_size": 1024,
                 "lr": 0.001, "beta": 0.25, "collab_weight": 0.0, "diversity_weight": 0.0, "reseed_every": 100},
    "model.tiger": {"text_input": False, "dense_weight": 0.0, "generative_weight": 1.0, "dense_item": "text+codes",
                    "dense_temperature": 0.07, "hybrid_candidates": 20},
    "model.sasrec": {"attention_dropout": -1.0},
    "train": {"adam_beta2": 0.98, "target_weights": "batch", "batch_order": "length"},
}


def _without_later_defaults(item: tuple[str, Any]) -> Any:
    name, section = item
    later = LATER.get(name)
    if not later or not isinstance(section, dict):
        return section
    return {k: v for k, v in section.items() if not (k in later and v == later[k])}


def is_current(cfg: Config, run: RunDir, stage: str) -> bool:
    stamp = read_stamp(run, stage)
    want = expected_stamp(cfg, run, stage)
    return stamp is not None and all(stamp.get(k) == want[k] for k in ("stage", "fingerprint", "upstream"))


def current_stamps(run: RunDir) -> list[dict[str, Any]]:
    """The stamps of the finished stages whose outputs follow from each other, in order: a stage's output made
    from an upstream output that has since been replaced ends the chain."""
    chain, upstream = [], None
    for stage in STAGES:
        stamp = read_stamp(run, stage)
        if stamp is None or stamp.get("upstream") != upstream:
            break
        chain.append(stamp)
        upstream = stamp["id"]
    return chain


def write_config(run: RunDir) -> None:
    """config.yaml from the current stages' stamps: the settings their outputs were made with; provenance.json:
    for each of those stages its wall time, when it finished, the genrec version and commit, the library
    versions and the machine."""
    values: dict[str, Any] = {"run_dir": str(run.root)}
    for stamp in current_stamps(run):
        for name, value in (stamp.get("settings") or {}).items():
            if name == "skipped":  # a stage with nothing to do for this recipe used no setting
                continue
            node = values
            *parents, last = name.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
    header = "# the settings the current outputs of this run directory were made with (written by genrec)\n"
    write_bytes(run.config, (header + yaml.safe_dump(values, sort_keys=False)).encode())
    made = {stamp["stage"]: {key: stamp.get(key) for key in ("seconds", "finished", "versions", "machine", "processes")}
            for stamp in current_stamps(run)}
    save_json(run.provenance, made)


def run_stage(cfg: Config, stage: str, dist: DistInfo, force: bool = False) -> bool:
    """Run one stage unless its outputs are current. Returns True if it ran."""
    run = RunDir(cfg.run_dir)
    want = expected_stamp(cfg, run, stage)
    if not force and is_current(cfg, run, stage):
        logger.info("%s: up to date, skipped (pass --force to rerun)", stage)
        return False
    work = run.work(stage)
    if dist.is_main:
        partial_stamp = work / PARTIAL_STAMP
        resumable = (stage == "train" and not force and partial_stamp.exists()
                     and json.loads(partial_stamp.read_text()) == want)
        if work.exists() and not resumable:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        save_json(partial_stamp, want)
    barrier()
    logger.info("%s: running", stage)
    start = time.perf_counter()
    error = None
    reason = unneeded(cfg, stage)
    if reason is not None:
        logger.info("%s: not needed (%s)", stage, reason)
    elif dist.is_main or stage in DISTRIBUTED:
        try:
            RUN[stage](cfg, run, work, dist)
        except GenrecError as err:
            error = str(err)
    error = broadcast_object(error)  # so that ranks waiting at the barrier stop too
    if error is not None:
        if dist.is_main and stage != "train":
            shutil.rmtree(work, ignore_errors=True)
        raise GenrecError(error)
    barrier()
    if dist.is_main:
        (work / PARTIAL_STAMP).unlink()
        save_json(work / STAMP, {**want, "id": uuid.uuid4().hex, "seconds": round(time.perf_counter() - start, 2),
                                 "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "versions": versions(), "machine": machine(), "processes": dist.world_size})
        replace_dir(work, run.stage(stage))
    barrier()
    logger.info("%s: done in %.1f s", stage, time.perf_counter() - start)
    return True


def check_devices(cfg: Config, stages: tuple[str, ...]) -> None:
    """Fail before anything runs when a stage is set to a device this machine does not have."""
    import torch

    device = cfg.embed.device
    if "embed" in stages and unneeded(cfg, "embed") is None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GenrecError(f"embed.device={device} but this machine has no CUDA GPU torch can use; set "
                              f"embed.device=cpu")
        if device.startswith("mps") and not torch.backends.mps.is_available():
            raise GenrecError(f"embed.device={device} but this machine has no Apple GPU; set embed.device=cpu")
        if device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise GenrecError(f"embed.device={device!r} is not a device torch knows; use cpu, cuda or cuda:<n>")


def run(cfg: Config, dist: DistInfo, stages: tuple[str, ...] = STAGES, force: bool = False,
        on_stage: Callable[[str, bool], None] | None = None) -> None:
    """Run `stages` in order, holding the run directory's lock; with force every one of them reruns."""
    offered = MODELS[cfg.model.kind].offered_methods(cfg.model.section)
    unknown = [m for m in cfg.evaluate.methods if not offers(offered, m)]
    if unknown:  # fail now, not after training
        raise GenrecError(f"evaluate.methods names {', '.join(unknown)}, which model.kind={cfg.model.kind} does not "
                          f"offer; choose from {', '.join(offered)}")
    check_devices(cfg, stages)
    rundir = RunDir(cfg.run_dir)
    if rundir.root.exists() and not rundir.root.is_dir():
        raise GenrecError(f"run_dir={cfg.run_dir} is a file, not a directory; pass another run_dir=...")
    error = None
    if dist.is_main:
        try:
            rundir.lock()
        except GenrecError as err:
            error = str(err)
    error = broadcast_object(error)
    if error is not None:
        raise GenrecError(error)
    try:
        for stage in stages:
            ran = run_stage(cfg, stage, dist, force=force)
            if dist.is_main:
                write_config(rundir)
            if on_stage is not None:
                on_stage(stage, ran)
    finally:
        if dist.is_main:
            rundir.unlock()
