"""The prepare stage: artifacts round-trip exactly, statistics match hand-computed values, bad artifacts fail."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from genrec.config import DataConfig
from genrec.data.loaders import Dataset
from genrec.data.prepare import dataset_stats, load_dataset, load_prepared, prepare
from genrec.data.splits import leave_one_out
from genrec.errors import GenrecError


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert a.item_ids == b.item_ids and a.user_ids == b.user_ids
    assert json.dumps(a.items) == json.dumps(b.items)  # same values, same types, same key order
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]
    assert all(s.dtype == np.int64 for s in b.sequences)
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        assert [t.tolist() for t in a.timestamps] == [t.tolist() for t in b.timestamps]
        assert all(t.dtype == np.int64 for t in b.timestamps)


def _table_cfg(tmp_path) -> DataConfig:
    pd.DataFrame({"user": ["ü1", "u2", "ü1", "u2", "ü1", "u3"], "item": ["a", "b", "b", "c", "c", "a"],
                  "timestamp": [3, 1, 1, 2, 2, 9]}).to_parquet(tmp_path / "inter.parquet")
    pd.DataFrame({"item": ["a", "b", "c"], "title": ["Crème &amp; \"quoted\"", None, "C"],
                  "price": [0.1 + 0.2, 3.0, None], "stock": [1, 2, 3]}).to_parquet(tmp_path / "items.parquet")
    return DataConfig(format="table", interactions=str(tmp_path / "inter.parquet"),
                      items=str(tmp_path / "items.parquet"), min_interactions=0)


def test_round_trip_is_exact_with_timestamps(tmp_path):
    cfg = _table_cfg(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    stats = prepare(cfg, out)
    assert sorted(p.name for p in out.iterdir()) == ["items.jsonl", "sequences.npz", "stats.json", "users.json"]
    original = load_dataset(cfg)
    again = load_prepared(out)
    _assert_same(original, again)
    fields_of_a = again.items[again.item_ids.index("a")]
    assert fields_of_a == {"title": "Crème &amp; \"quoted\"", "price": 0.1 + 0.2, "stock": 1}
    assert again.user_ids == ["ü1", "u2", "u3"]
    assert json.loads((out / "stats.json").read_text()) == stats
    with np.load(out / "sequences.npz") as npz:
        assert sorted(npz.files) == ["items", "offsets", "timestamps"]
        assert npz["offsets"].tolist() == [0, 3, 5, 6]
    first = json.loads((out / "items.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["item_id"] == original.item_ids[0]


def test_round_trip_without_timestamps(tmp_path):
    with gzip.open(tmp_path / "user_sequence.txt.gz", "wt") as f:
        f.write("u1 a b c\nu2 c a d e\n")
    with gzip.open(tmp_path / "item_meta.jsonl.gz", "wt") as f:
        f.write(json.dumps({"asin": "a", "p5_item_id": 1, "title": "A", "categories": [["X", "Y"]]}) + "\n")
    cfg = DataConfig(format="p5", path=str(tmp_path))
    out = tmp_path / "run"
    out.mkdir()
    stats = prepare(cfg, out)
    again = load_prepared(out)
    _assert_same(load_dataset(cfg), again)
    with np.load(out / "sequences.npz") as npz:
        assert "timestamps" not in npz.files
    assert stats["valid_users"] == 2 and stats["has_timestamps"] is False


def test_stats_hand_computed():
    sequences = [np.array(s, dtype=np.int64) for s in ([0, 1], [1, 2, 3], [3, 4, 0, 1, 2])]
    ds = Dataset(item_ids=list("abcde"), items=[{}] * 5, user_ids=["x", "y", "z"], sequences=sequences,
                 timestamps=None)
    stats = dataset_stats(ds, leave_one_out(ds.sequences), split_name="leave_one_out")
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 5, 10)
    assert stats["density"] == pytest.approx(10 / 15)
    assert (stats["seq_len_min"], stats["seq_len_p25"], stats["seq_len_median"]) == (2, 2.5, 3)
    assert stats["seq_len_mean"] == pytest.approx(10 / 3)
    assert (stats["seq_len_p75"], stats["seq_len_max"]) == (4, 5)
    assert stats["seq_len_p90"] == pytest.approx(4.6) and stats["seq_len_p99"] == pytest.approx(4.96)
    assert (stats["item_freq_min"], stats["item_freq_max"]) == (1, 3)  # counts a2 b3 c2 d2 e1
    assert (stats["valid_users"], stats["test_users"]) == (2, 2)
    assert (stats["valid_dropped_users"], stats["test_dropped_users"]) == (1, 1)
    assert stats["train_interactions"] == 0 + 1 + 3
    assert stats["split"] == "leave_one_out"


@pytest.mark.parametrize("damage", ["missing users", "bad items line", "garbage npz", "offsets", "item range"])
def test_load_prepared_rejects_damaged_artifacts(tmp_path, damage):
    out = tmp_path / "run"
    out.mkdir()
    prepare(_table_cfg(tmp_path), out)
    if damage == "missing users":
        (out / "users.json").unlink()
    elif damage == "bad items line":
        (out / "items.jsonl").write_text('{"item_id": "a"}\n{"item_id": \n')
    elif damage == "garbage npz":
        (out / "sequences.npz").write_bytes(b"not a zip file")
    elif damage == "offsets":
        np.savez(out / "sequences.npz", offsets=np.array([0, 2], dtype=np.int64), items=np.zeros(2, np.int64))
    else:
        np.savez(out / "sequences.npz", offsets=np.array([0, 1, 2, 3], dtype=np.int64),
                 items=np.array([0, 1, 7], dtype=np.int64))
    with pytest.raises(GenrecError, match=r"rerun 'genrec prepare' \(or pass --force\)") as info:
        load_prepared(out)
    assert "\n" not in str(info.value)
