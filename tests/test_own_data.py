"""Your own data end to end: the example bookshop as the README runs it, items without any text, a template
typed on the command line, and a SASRec run that skips the stages it does not use."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, TINY

from genrec.cli import main

BOOKSHOP = REPO / "configs" / "bookshop.yaml"
QUICK = ["train.max_steps=30", "train.eval_every=15", "train.warmup_steps=5", "collab.max_steps=30",
         "collab.eval_every=15", "evaluate.splits=[test]"]


def bookshop(tmp_path: Path) -> list[str]:
    """The README's bookshop command with the example's files, a run directory in tmp_path and few steps."""
    data = REPO / "examples" / "bookshop"
    return [f"run_dir={tmp_path / 'run'}", f"data.interactions={data / 'interactions.csv'}",
            f"data.items={data / 'books.csv'}", *QUICK]


def test_the_example_bookshop_runs_with_every_text_column(tmp_path, capsys):
    assert main(["run", "-c", str(BOOKSHOP), *bookshop(tmp_path)]) == 0
    run = tmp_path / "run"
    stats = json.loads((run / "embed" / "embedding_stats.json").read_text())
    books = pd.read_csv(REPO / "examples" / "bookshop" / "books.csv").set_index("book_id")
    first = json.loads((run / "prepare" / "items.jsonl").read_text().splitlines()[0])
    book = books.loc[first["item_id"]]
    assert stats["example_texts"][0] == (f"Title: {book.title}; Author: {book.author}; Genre: {book.genre}; "
                                         f"Series: {book.series}; Year: {book.year}")
    inter = pd.read_csv(REPO / "examples" / "bookshop" / "interactions.csv")
    prepared = json.loads((run / "prepare" / "stats.json").read_text())
    assert prepared["interactions"] < int((inter["rating"] >= 3).sum()) < len(inter)  # ratings 1-2 dropped, k-core
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert results["metrics"]["test/generative/recall@10"] > 0.2  # 3x chance (10 of 150 books) after 30 steps
    for png in ("train/training_curves.png", "quantize/codebook_usage.png", "evaluate/recall_at_k.png",
                "collab/sasrec/training_curves.png"):
        data = (run / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png


def test_items_without_text_skip_the_encoder(tmp_path, capsys, caplog):
    """No items file: the embed stage makes no embeddings (it would embed item-ID strings), the semantic IDs
    come from the collaborative embeddings, and the default recipe's hybrid trains generation alone."""
    overrides = [o for o in bookshop(tmp_path) if not o.startswith("data.items=")] + ["data.items="]
    hybrid = ["model.tiger.text_input=true", "model.tiger.dense_weight=1.0"]  # as the built-in defaults
    with caplog.at_level("WARNING"):
        assert main(["run", "-c", str(BOOKSHOP), *overrides, *hybrid]) == 0
    assert "the items have no text, so TIGER trains without its text input and dense head" in caplog.text
    run = tmp_path / "run"
    saved = json.loads((run / "train" / "best" / "config.json").read_text())["model"]
    assert (saved["text_input"], saved["dense_weight"]) == (False, 0.0)
    assert sorted(p.name for p in (run / "embed").iterdir()) == ["embedding_stats.json", "stage.json"]
    assert "no item has text" in json.loads((run / "embed" / "embedding_stats.json").read_text())["skipped"]
    assert json.loads((run / "quantize" / "summary.json").read_text())["embeddings"].startswith("collab/")
    assert (run / "evaluate" / "results.json").exists()
    # a ranking that needs the dense head is refused before training, not after it
    steps = (run / "train" / "log.jsonl").read_text()
    assert main(["train", "-c", str(BOOKSHOP), *overrides, *hybrid, "evaluate.methods=[generative,dense]",
                 "--force"]) == 2
    assert "evaluate.methods names dense, which a Tiger does not offer" in capsys.readouterr().err
    assert (run / "train" / "log.jsonl").read_text() == steps
    # without text and without the collaborative stage there is nothing to build semantic IDs from
    assert main(["quantize", "-c", str(BOOKSHOP), *overrides, "collab.enabled=false", "train.distill=0",
                 "--force"]) == 2
    assert "set collab.enabled=true" in capsys.readouterr().err


def test_a_template_typed_on_the_command_line(tmp_path):
    template = "Title: {title}; Genre: {genre}"
    assert main(["run", "-c", str(BOOKSHOP), *bookshop(tmp_path), f"embed.template={template}",
                 "evaluate.splits=[valid]"]) == 0
    text = json.loads((tmp_path / "run" / "embed" / "embedding_stats.json").read_text())["example_texts"][0]
    assert text.startswith("Title: The ") and "; Genre: " in text and "Author" not in text


def test_a_sasrec_run_skips_embed_collab_and_quantize(tmp_path, tiny_data, capsys):
    overrides = [f"run_dir={tmp_path / 'run'}", f"data.path={tiny_data}", "model.kind=sasrec", "train.distill=0",
                 "train.max_steps=20", "train.eval_every=10", "evaluate.methods=[sasrec]"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    run = tmp_path / "run"
    for stage in ("embed", "collab", "quantize"):
        assert sorted(p.name for p in (run / stage).iterdir()) == ["stage.json"], stage
        stamp = json.loads((run / stage / "stage.json").read_text())
        assert stamp["settings"] == {"skipped": "model.kind=sasrec uses no semantic IDs"}
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert not {"embed", "collab", "quantize"} & set(recorded) and recorded["model"]["kind"] == "sasrec"
    assert "test/sasrec/recall@10" in json.loads((run / "evaluate" / "results.json").read_text())["metrics"]
