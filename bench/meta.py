"""What every benchmark records beside its numbers: the machine and the versions (`genrec.provenance`)."""

from __future__ import annotations

from pathlib import Path

from genrec.provenance import machine, versions

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["ROOT", "machine", "versions"]
