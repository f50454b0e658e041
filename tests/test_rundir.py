"""The run directory as a guarded place: one command at a time, nothing half-written left behind, a
config.yaml that says what the outputs were made with, and a resumed training that logs each step once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from genrec.cli import main
from genrec.config import load_config, to_dict
from genrec.rundir import RunDir

from conftest import TINY

FAST = ["collab.max_steps=20", "collab.eval_every=10", "train.max_steps=40", "train.eval_every=10",
        "train.log_every=5", "train.warmup_steps=5", "train.batch_size=16", "evaluate.beam_size=10", "evaluate.ks=[5,10]"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_data):
    run_dir = tmp_path_factory.mktemp("rundir") / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", *FAST]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides


def copy_run(small_run, tmp_path) -> tuple:
    run_dir, overrides = small_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, [o for o in overrides if not o.startswith("run_dir=")] + [f"run_dir={copy}"]


def test_a_second_command_on_a_busy_run_directory_stops_at_once(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from genrec.rundir import RunDir; run = RunDir(sys.argv[1]); run.lock(); "
                               "print('locked', flush=True); time.sleep(60)", str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["prepare", "-c", str(TINY), f"run_dir={run_dir}"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is in use by another genrec command" in err
        assert f"pid {holder.pid}" in err
        assert not (run_dir / "prepare").exists() and not (run_dir / "prepare.tmp").exists()
    finally:
        holder.kill()
        holder.wait()
    RunDir(run_dir).lock()  # a killed holder leaves no stale lock: the OS released it


def test_taking_the_lock_clears_what_a_killed_command_left(tmp_path):
    run = RunDir(tmp_path / "run")
    for name in ("prepare.tmp", "embed.old", "train.partial/checkpoint-40.tmp", "train.partial/best.old",
                 "train.partial/checkpoint-30", "notes.tmp"):
        (run.root / name).mkdir(parents=True)
        (run.root / name / "file").write_text("x")
    run.lock()
    try:  # genrec's own half-written directories go; a directory genrec does not write stays
        assert sorted(p.name for p in run.root.iterdir()) == [".lock", "notes.tmp", "train.partial"]
        assert [p.name for p in (run.root / "train.partial").iterdir()] == ["checkpoint-30"]
    finally:
        run.unlock()


def test_config_yaml_holds_only_the_settings_the_outputs_were_made_with(small_run, tmp_path):
    copy, overrides = copy_run(small_run, tmp_path)
    before = load_config(copy / "config.yaml")
    assert before.train.max_steps == 40 and before.evaluate.beam_size == 10
    # evaluate reruns with a new beam; the new train.lr is not used (train is not rerun), so it is not recorded
    assert main(["evaluate", "-c", str(TINY), *overrides, "evaluate.beam_size=5", "evaluate.ks=[5]",
                 "train.lr=0.5"]) == 0
    after = load_config(copy / "config.yaml")
    assert after.evaluate.beam_size == 5 and after.train.lr == before.train.lr != 0.5 and after.run_dir == str(copy)
    assert json.loads((copy / "evaluate" / "results.json").read_text())["beam_size"] == 5
    # a run that fails in its first stage changes nothing
    text = (copy / "config.yaml").read_text()
    assert main(["run", "-c", str(TINY), *overrides, f"data.path={tmp_path / 'missing'}"]) == 2
    assert (copy / "config.yaml").read_text() == text
    # new semantic IDs: the model and the metrics were made from the old ones, so their settings leave config.yaml
    assert main(["quantize", "-c", str(TINY), *overrides, "quantize.codebook_size=7"]) == 0
    recorded = yaml.safe_load((copy / "config.yaml").read_text())
    assert recorded["quantize"]["codebook_size"] == 7 and "train" not in recorded and "evaluate" not in recorded
    assert "tiger" not in recorded["model"] and recorded["model"]["sasrec"] == to_dict(before.model.sasrec)


def test_a_method_the_model_does_not_offer_fails_before_anything_runs(tmp_path, tiny_data, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "-c", str(TINY), f"run_dir={run_dir}", f"data.path={tiny_data}", "model.kind=sasrec",
                 "evaluate.methods=[exact]"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "genrec: error: evaluate.methods names exact, which model.kind=sasrec does not offer; choose from sasrec")
    assert not run_dir.exists()


def test_a_resumed_training_logs_every_step_once_and_ends_where_the_whole_run_ended(small_run, tmp_path):
    copy, overrides = copy_run(small_run, tmp_path)
    whole = [json.loads(line) for line in (copy / "train" / "log.jsonl").read_text().splitlines()]
    best = json.loads((copy / "train" / "summary.json").read_text())
    # the state of a kill after step 40 whose last checkpoint was step 30
    partial = copy / "train.partial"
    shutil.move(copy / "train", partial)
    stamp = json.loads((partial / "stage.json").read_text())
    (partial / "stage.json").unlink()
    (partial / "stage.partial.json").write_text(json.dumps({k: v for k, v in stamp.items() if k not in ("id", "seconds")}))
    shutil.rmtree(partial / "checkpoint-40")
    assert (partial / "checkpoint-30").is_dir()
    with (partial / "log.jsonl").open("a") as f:
        f.write('{"step": 41, "train/lo')  # the line the kill cut short
    assert main(["train", "-c", str(TINY), *overrides]) == 0
    resumed = [json.loads(line) for line in (copy / "train" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [r["step"] for r in whole]
    strip = lambda rows: [{k: v for k, v in r.items() if "per_s" not in k} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(whole)  # same losses and validation metrics: the resume is exact
    summary = json.loads((copy / "train" / "summary.json").read_text())
    assert summary["best_step"] == best["best_step"]
