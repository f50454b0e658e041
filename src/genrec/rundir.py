"""A run directory: the one place that knows where each stage's artefacts live, and the lock that keeps two
`genrec` commands from writing into one run directory at once.

    <run_dir>/config.yaml        the settings the finished stages ran with (see `pipeline`)
    <run_dir>/<stage>/           a finished stage's outputs and its `stage.json` stamp
    <run_dir>/<stage>.tmp/       a stage at work (renamed to <stage>/ when it finishes)
    <run_dir>/train.partial/     training at work: resumable checkpoints
    <run_dir>/.lock              held by the command working on the directory
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import IO

from genrec.errors import GenrecError

STAGES = ("prepare", "embed", "collab", "quantize", "train", "evaluate")
EMBEDDINGS = "item_embeddings_l2norm.npy"  # embed and collab: L2-normalised item vectors [N, D]
RAW_EMBEDDINGS = "item_embeddings_raw.npy"  # embed and collab: the same before normalising
ITEM_IDS = "item_ids.json"  # embed and collab: the item IDs of the rows
CODES = "codes.npy"  # quantize: [N, L] codes of the L quantizer levels
SIDS = "codes_with_suffix.npy"  # quantize: [N, L + 1] semantic IDs, the collision level last
SEMANTIC_IDS = "semantic_ids.json"  # quantize: item ID -> its semantic ID as tokens, "<a_42><b_15><c_238><d_3>"
STAMP = "stage.json"
PARTIAL_STAMP = "stage.partial.json"  # in a work directory: the stamp it will get, so training can resume
RESULTS = "results.json"  # evaluate: every metric
RANKINGS = "rankings.jsonl"  # evaluate (with evaluate.rankings_k): every user's top list per split, method, protocol
SASREC = "sasrec"  # collab: the SASRec's training directory (its selected model in sasrec/best)
MODEL = "best"  # train (and collab's SASRec run): the selected model's directory


class RunDir:
    """Paths of one run directory. `stage(name)` is a finished stage's directory; `work(name)` the one it
    writes into while it runs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def stage(self, name: str) -> Path:
        assert name in STAGES, name
        return self.root / name

    @property
    def query(self) -> Path:
        """The query model (`genrec train-query`), outside the pipeline's stages."""
        return self.root / "query"

    def work(self, name: str) -> Path:
        """Where a running stage writes: `<stage>.tmp`, or `train.partial`, which survives a kill to be resumed."""
        return self.root / (f"{name}.partial" if name == "train" else f"{name}.tmp")

    def stamp(self, name: str) -> Path:
        return self.stage(name) / STAMP

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def provenance(self) -> Path:
        """Per finished stage: wall time, when it finished, versions (genrec commit included) and machine."""
        return self.root / "provenance.json"

    @property
    def prepared(self) -> Path:
        return self.stage("prepare")

    @property
    def sids(self) -> Path:
        return self.stage("quantize") / SIDS

    @property
    def collab_model(self) -> Path:
        """The collab stage's selected SASRec (the semantic IDs' embeddings and the distillation teacher)."""
        return self.stage("collab") / SASREC / MODEL

    @property
    def model(self) -> Path:
        """The train stage's selected model."""
        return self.stage("train") / MODEL

    @property
    def results(self) -> Path:
        return self.stage("evaluate") / RESULTS

    # ---- the lock ----------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory for this process, or fail at once naming the command that holds it. Held until
        `unlock` or the process ends (the OS releases it, so a killed command never leaves a stale lock).
        Then clears the directories a killed command left half-written: `<stage>.tmp`, `<stage>.old`, and in
        `train.partial` the `.tmp`/`.old` of a checkpoint or of the selected model."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / ".lock", "a+")
        except OSError as err:
            raise GenrecError(f"cannot write in {self.root} ({err.strerror}); pass a run_dir=... you can write "
                              f"to") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                f.close()
                raise GenrecError(f"cannot lock {self.root / '.lock'} ({err.strerror}); this filesystem may not "
                                  f"support locks: put run_dir on a local disk") from None
            f.seek(0)
            try:
                holder = json.loads(f.read() or "{}")
            except ValueError:
                holder = {}
            f.close()
            raise GenrecError(f"{self.root} is in use by another genrec command (pid {holder.get('pid', '?')} on "
                              f"{holder.get('host', '?')}: {holder.get('command', '?')}); wait for it to finish, "
                              f"stop it, or pass another run_dir=...") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        self._lock = f
        leftovers = [self.root / f"{stage}{suffix}" for stage in STAGES for suffix in (".tmp", ".old")]
        leftovers += [p for p in self.work("train").glob("*.tmp") if p.name.startswith(("checkpoint-", MODEL))]
        leftovers += [p for p in self.work("train").glob("*.old") if p.name.startswith(("checkpoint-", MODEL))]
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path)

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
