"""Pictures a person would rather look at than read, written as PNG into the run directory (matplotlib, no
display needed):

- `train/training_curves.png`: training loss, learning rate and the validation metrics against the step;
- `quantize/codebook_usage.png`: per level, how many items each code holds (sorted), with usage and perplexity;
- `evaluate/recall_at_k.png`: Recall@k against k for each split and ranking method, under each protocol.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from genrec.files import write_bytes

TRAINING_CURVES = "training_curves.png"
CODEBOOK_USAGE = "codebook_usage.png"
RECALL_AT_K = "recall_at_k.png"
QUANTIZER_TRAINING = "quantizer_training.png"


def _figure(ncols: int, nrows: int = 1, size: tuple[float, float] = (4.2, 3.2)) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes.ravel()


def _save(fig: Any, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def training_curves(log_path: Path, out: Path) -> None:
    """Loss, learning rate and validation metrics of a training log (JSON lines with a `step`)."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                series.setdefault(key, []).append((row["step"], value))
    valid = sorted(k for k in series if k.startswith("valid/"))
    panels = [("train/loss", ["train/loss"]), ("learning rate", ["train/lr"]), ("validation", valid)]
    panels = [(title, [k for k in keys if k in series]) for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = _figure(max(1, len(panels)))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o" if title == "validation" else None, markersize=3,
                    label=key.removeprefix("valid/"))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "validation":
            ax.legend(fontsize=7)
    _save(fig, out)


def codebook_usage(codes: np.ndarray, codebook_size: int, out: Path) -> None:
    """codes [N, L]: for each level, the number of items per code, largest first."""
    levels = codes.shape[1]
    fig, axes = _figure(levels)
    for level, ax in enumerate(axes):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
        ax.bar(np.arange(len(counts)), np.sort(counts)[::-1], width=1.0)
        ax.set_title(f"level {level}: {int((counts > 0).sum())}/{codebook_size} codes used, "
                     f"perplexity {perplexity:.0f}", fontsize=9)
        ax.set_xlabel("code (by items held)")
        ax.set_ylabel("items")
    _save(fig, out)


def quantizer_training(history: list[dict[str, Any]], out: Path) -> None:
    """A trained quantizer's codebook health over its steps: usage and perplexity per level, the collision rate
    before the extra level, and the reconstruction error."""
    steps = [h["step"] for h in history]
    fig, axes = _figure(2, 2, size=(5.0, 3.2))
    levels = len(history[0]["levels"])
    for level in range(levels):
        axes[0].plot(steps, [h["levels"][level]["usage"] for h in history], marker="o", markersize=3,
                     label=f"level {level}")
        axes[1].plot(steps, [h["levels"][level]["perplexity"] for h in history], marker="o", markersize=3,
                     label=f"level {level}")
    axes[2].plot(steps, [h["collision_rate"] for h in history], marker="o", markersize=3)
    axes[3].plot(steps, [h["reconstruction_mse"] for h in history], marker="o", markersize=3)
    for ax, title in zip(axes, ("code usage (used / K)", "perplexity", "collision rate before the extra level",
                                "reconstruction error (MSE)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, out)


def recall_at_k(results: dict[str, Any], out: Path) -> None:
    """Recall@k against k (log scale) per split and method; history kept dashed where it was measured."""
    fig, axes = _figure(1, size=(6.0, 4.0))
    ax = axes[0]
    for key, style in (("metrics", "-"), ("metrics_with_history", "--")):
        curves: dict[str, list[tuple[int, float]]] = {}
        for name, value in (results.get(key) or {}).items():
            head, metric = name.rsplit("/", 1)
            if metric.startswith("recall@") and head.count("/") == 1:  # split/method: all users, not a slice
                curves.setdefault(head, []).append((int(metric.split("@")[1]), value))
        for head, points in sorted(curves.items()):
            ks, values = zip(*sorted(points))
            kept = key == "metrics_with_history" or not results.get("exclude_history", True)
            ax.plot(ks, values, style, marker="o", markersize=3,
                    label=f"{head} (history {'kept' if kept else 'removed'})")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, out)
