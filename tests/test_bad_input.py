"""Mistakes a new user makes, each answered by one line naming the problem and the fix (exit 2), with nothing
half-written left behind; Ctrl-C says the run can be resumed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from conftest import REPO, TINY

from genrec.cli import main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("genrec: error: ") and "Traceback" not in err, err
    return err


def test_run_dir_that_is_a_file(tmp_path, tiny_data, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["run", "-c", str(TINY), f"run_dir={tmp_path / 'afile'}", f"data.path={tiny_data}"]) == 2
    assert "is a file, not a directory" in one_line_error(capsys)
    assert main(["run", "-c", str(TINY), f"run_dir={tmp_path / 'afile' / 'sub'}", f"data.path={tiny_data}"]) == 2
    assert "cannot write in" in one_line_error(capsys)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_device_this_machine_lacks(tmp_path, tiny_data, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "-c", str(TINY), f"run_dir={run_dir}", f"data.path={tiny_data}", "embed.device=cuda"]) == 2
    assert "embed.device=cuda but this machine has no CUDA GPU" in one_line_error(capsys)
    assert not (run_dir / "embed.tmp").exists() and not (run_dir / "prepare").exists()  # refused before any stage


def test_semantic_ids_that_tell_no_items_apart_are_refused(tmp_path, tiny_data, capsys):
    run_dir = tmp_path / "run"
    assert main(["quantize", "-c", str(TINY), f"run_dir={run_dir}", f"data.path={tiny_data}"]) == 2  # nothing yet
    capsys.readouterr()
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", "collab.max_steps=10", "collab.eval_every=10",
                 "quantize.codebook_size=2", "quantize.num_levels=1"]
    for stage in ("prepare", "embed", "collab"):
        assert main([stage, "-c", str(TINY), *overrides]) == 0
    capsys.readouterr()
    assert main(["quantize", "-c", str(TINY), *overrides]) == 2
    err = one_line_error(capsys)
    assert "gives 2 distinct IDs to 64 items and no item an ID of its own" in err and "raise quantize" in err
    assert not (run_dir / "quantize").exists() and not (run_dir / "quantize.tmp").exists()


def test_a_mistyped_encoder_name_fails_without_retrying_the_hub(tmp_path, tiny_data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}", "embed.model=all-MiniLM-L6-vv2"]
    assert main(["prepare", "-c", str(TINY), *overrides]) == 0
    capsys.readouterr()
    assert main(["embed", "-c", str(TINY), *overrides]) == 2
    err = one_line_error(capsys)
    assert "embed.model='all-MiniLM-L6-vv2' is not a local directory nor in the Hugging Face cache" in err
    assert not (tmp_path / "run" / "embed.tmp").exists()


def test_ctrl_c_says_the_run_can_be_resumed(tmp_path, tiny_data):
    """A real SIGINT to the console script while it trains: one line, no traceback, and the next run resumes."""
    genrec = shutil.which("genrec") or str(REPO / ".venv" / "bin" / "genrec")
    args = [genrec, "run", "-c", str(TINY), f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}",
            "train.max_steps=100000", "train.eval_every=20", "collab.max_steps=10", "collab.eval_every=10"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while not list((tmp_path / "run" / "train.partial").glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("genrec: interrupted; run the same command again to resume")
    assert (tmp_path / "run" / "train.partial").is_dir()  # kept, to resume from
