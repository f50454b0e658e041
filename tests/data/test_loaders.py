"""Loaders against small files the tests write (P5, raw Amazon 2014, CSV/Parquet tables), plus the real Beauty data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.config import DataConfig
from genrec.data.prepare import load_dataset
from genrec.errors import GenrecError

BEAUTY = Path("/work/shared/data/amazon-beauty")


def _write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _seqs(dataset) -> list[list[int]]:
    return [s.tolist() for s in dataset.sequences]


# ----------------------------------------------------------------------------------------------- P5


def _write_p5(directory: Path, compress: bool = True) -> None:
    sequences = ["u1 a b c", "u2 c d a", "u3 e b"]
    meta = [  # out of order, one null title, item e missing
        {"asin": "d", "p5_item_id": 4, "title": "Dee &amp; Co", "categories": [["Beauty", "Nails"]]},
        {"asin": "a", "p5_item_id": 1, "title": "Aye", "categories": [["Beauty"]]},
        {"asin": "b", "p5_item_id": 2, "title": None, "categories": [["Beauty", "Hair"]]},
        {"asin": "c", "p5_item_id": 3, "title": "Cee", "categories": []},
        {"asin": "zz", "p5_item_id": 99, "title": "not in any sequence"},
    ]
    meta_lines = [json.dumps(m) for m in meta]
    if compress:
        _write_gz(directory / "user_sequence.txt.gz", sequences)
        _write_gz(directory / "item_meta.jsonl.gz", meta_lines)
    else:
        (directory / "user_sequence.txt").write_text("\n".join(sequences) + "\n")
        (directory / "item_meta.jsonl").write_text("\n".join(meta_lines) + "\n")


@pytest.mark.parametrize("compress", [True, False])
def test_p5_items_in_order_of_first_appearance(tmp_path, compress):
    _write_p5(tmp_path, compress)
    ds = load_dataset(DataConfig(format="p5", path=str(tmp_path)))
    assert ds.item_ids == ["a", "b", "c", "d", "e"]
    assert ds.user_ids == ["u1", "u2", "u3"]
    assert _seqs(ds) == [[0, 1, 2], [2, 3, 0], [4, 1]]
    assert all(s.dtype == np.int64 for s in ds.sequences)
    assert ds.timestamps is None
    assert ds.items[0] == {"title": "Aye", "categories": [["Beauty"]]}
    assert ds.items[1] == {"categories": [["Beauty", "Hair"]]}  # null title is absent
    assert ds.items[3]["title"] == "Dee &amp; Co"  # HTML entities are kept
    assert ds.items[4] == {}  # no meta line


def test_p5_item_id_disagreement_raises(tmp_path):
    _write_gz(tmp_path / "user_sequence.txt.gz", ["u1 a b", "u2 b c"])
    _write_gz(tmp_path / "item_meta.jsonl.gz", [json.dumps({"asin": "b", "p5_item_id": 3, "title": "x"})])
    with pytest.raises(GenrecError, match=r"p5_item_id 3.*item 2"):
        load_dataset(DataConfig(format="p5", path=str(tmp_path)))


def test_p5_missing_directory_says_how_to_fix(tmp_path):
    with pytest.raises(GenrecError, match=r"nowhere.*data\.path="):
        load_dataset(DataConfig(format="p5", path=str(tmp_path / "nowhere")))
    with pytest.raises(GenrecError, match=r"user_sequence\.txt\.gz.*data\.path="):
        load_dataset(DataConfig(format="p5", path=str(tmp_path)))


def test_p5_without_item_meta_loads_items_without_text(tmp_path):
    """Some P5 releases (Amazon Sports) ship only user_sequence.txt: the items then have no text."""
    _write_gz(tmp_path / "user_sequence.txt.gz", ["u1 a b c", "u2 c d"])
    ds = load_dataset(DataConfig(format="p5", path=str(tmp_path)))
    assert ds.item_ids == ["a", "b", "c", "d"] and ds.items == [{}, {}, {}, {}]


def test_p5_junk_token_is_reported_on_its_sequence_line(tmp_path):
    _write_p5(tmp_path)
    _write_gz(tmp_path / "user_sequence.txt.gz", ["u1 a b c", "u2 c d?? d a", "u3 e b"])  # d?? shifts d
    with pytest.raises(GenrecError) as err:
        load_dataset(DataConfig(format="p5", path=str(tmp_path)))
    assert "user_sequence.txt.gz line 2 (user u2) has item 'd??'" in str(err.value)
    assert "item_meta.jsonl.gz does not list" in str(err.value)


@pytest.mark.skipif(not BEAUTY.is_dir(), reason="shared Amazon Beauty data not present")
def test_real_beauty_matches_published_statistics():
    ds = load_dataset(DataConfig(format="p5", path=str(BEAUTY)))
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (22363, 12101, 198502)
    with gzip.open(BEAUTY / "item_meta.jsonl.gz", "rt") as f:
        p5_ids = {m["asin"]: m["p5_item_id"] for m in map(json.loads, f)}
    assert all(p5_ids[asin] == i + 1 for i, asin in enumerate(ds.item_ids))
    with gzip.open(BEAUTY / "user_sequence.txt.gz", "rt") as f:
        first = f.readline().split()
    assert [ds.item_ids[i] for i in ds.sequences[0]] == first[1:] and ds.user_ids[0] == first[0]


# ----------------------------------------------------------------------------------------------- Amazon 2014


def _review(user: str, item: str, time: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": time, "overall": 5.0})


def _amazon(tmp_path: Path, reviews: list[str], meta: list[str], k: int = 0):
    _write_gz(tmp_path / "reviews_Toys_5.json.gz", reviews)
    _write_gz(tmp_path / "meta_Toys.json.gz", meta)
    return DataConfig(format="amazon2014", path=str(tmp_path), category="Toys", min_interactions=k)


def test_amazon_sorts_by_time_with_stable_ties_and_drops_repeats(tmp_path):
    reviews = [_review("B", "y", 30), _review("A", "z", 20), _review("A", "x", 10), _review("B", "x", 5),
               _review("A", "w", 20), _review("A", "x", 40), _review("B", "v", 30)]  # A's 2nd x is a repeat
    ds = load_dataset(_amazon(tmp_path, reviews, [], k=0))
    assert ds.user_ids == ["B", "A"]  # order of first appearance in the file
    names = [[ds.item_ids[i] for i in s] for s in ds.sequences]
    assert names == [["x", "y", "v"], ["x", "z", "w"]]  # ties (30; 20) keep file order
    assert ds.item_ids == ["x", "y", "v", "z", "w"]  # first appearance in the sorted sequences
    assert [t.tolist() for t in ds.timestamps] == [[5, 30, 30], [10, 20, 20]]
    assert ds.timestamps[0].dtype == np.int64


def test_amazon_kcore_iterates_until_stable(tmp_path):
    # k=2: item z has 1 interaction -> removed; then user C has 1 -> removed (a second round)
    reviews = [_review("A", "x", 1), _review("A", "y", 2), _review("B", "x", 1), _review("B", "y", 2),
               _review("C", "x", 1), _review("C", "z", 2)]
    ds = load_dataset(_amazon(tmp_path, reviews, [], k=2))
    assert ds.user_ids == ["A", "B"] and ds.item_ids == ["x", "y"]
    assert _seqs(ds) == [[0, 1], [0, 1]]
    with pytest.raises(GenrecError, match=r"data\.min_interactions=3"):
        load_dataset(_amazon(tmp_path, reviews, [], k=3))


def test_amazon_meta_python_literals(tmp_path):
    meta = [
        "{'asin': 'x', 'title': \"Kid's Toy\", 'brand': 'Acme', 'price': 12.5, "
        "'categories': [['Toys', 'Games'], ['Sale']], 'description': 'Fun', 'salesRank': {'Toys': 3}}",
        json.dumps({"asin": "y", "title": "JSON line", "price": "$1,024.00"}),
        "{'asin': 'q', 'title': 'not reviewed'}",
        "{'asin': 'z', 'price': 'n/a', 'imUrl': 'http://example.com/z.jpg'}",
    ]
    reviews = [_review("A", "x", 1), _review("A", "y", 2), _review("A", "z", 3), _review("A", "w", 4)]
    ds = load_dataset(_amazon(tmp_path, reviews, meta))
    assert ds.items[0] == {"title": "Kid's Toy", "brand": "Acme", "categories": [["Toys", "Games"], ["Sale"]],
                           "price": 12.5, "description": "Fun"}
    assert ds.items[1] == {"title": "JSON line", "price": 1024.0}
    assert ds.items[2] == {}  # unparsable price is absent
    assert ds.items[3] == {}  # no meta line


def test_amazon_malicious_meta_line_is_rejected_not_run(tmp_path):
    marker = tmp_path / "X"
    meta = ["{'asin': 'x', 'title': 'ok'}", f"__import__('os').system('touch {marker}')"]
    with pytest.raises(GenrecError, match=r"meta_Toys\.json\.gz line 2 "):
        load_dataset(_amazon(tmp_path, [_review("A", "x", 1)], meta))
    assert not marker.exists()


def test_amazon_bad_json_line_names_the_line(tmp_path):
    reviews = [_review("A", "x", 1), _review("A", "y", 2), '{"reviewerID": "A", "asin": ', _review("A", "z", 3)]
    with pytest.raises(GenrecError, match=r"reviews_Toys_5\.json\.gz line 3 is not valid JSON"):
        load_dataset(_amazon(tmp_path, reviews, []))
    reviews[2] = json.dumps({"reviewerID": "A", "asin": "q"})
    with pytest.raises(GenrecError, match=r"line 3 lacks unixReviewTime"):
        load_dataset(_amazon(tmp_path, reviews, []))


def test_amazon_truncated_gzip_names_the_line(tmp_path):
    cfg = _amazon(tmp_path, [_review(f"U{i % 97}", f"I{i}", i) for i in range(20000)], [])
    path = tmp_path / "reviews_Toys_5.json.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GenrecError, match=r"reviews_Toys_5\.json\.gz is corrupt near line [1-9]\d+ ") as info:
        load_dataset(cfg)
    assert "\n" not in str(info.value)


def test_amazon_missing_files(tmp_path):
    with pytest.raises(GenrecError, match=r"reviews_Toys_5\.json\.gz.*data\.path="):
        load_dataset(DataConfig(format="amazon2014", path=str(tmp_path), category="Toys"))


# ----------------------------------------------------------------------------------------------- tables


def test_table_csv_with_dates_and_item_text(tmp_path):
    frame = pd.DataFrame({
        "user": ["u2", "u1", "u1", "u2", "u1"],
        "item": [7, 8, 7, 9, 9],
        "timestamp": ["2014-01-03", "2014-01-02T00:00:00Z", "2014-01-01", "2014-01-01", "2014-01-02"],
    })
    frame.to_csv(tmp_path / "inter.csv", index=False)
    pd.DataFrame({"item": [9, 7, 8], "title": ["nine", "seven", None], "price": [1.5, None, 2.0]}).to_csv(
        tmp_path / "items.csv", index=False)
    cfg = DataConfig(format="table", interactions=str(tmp_path / "inter.csv"), items=str(tmp_path / "items.csv"),
                     min_interactions=0)
    ds = load_dataset(cfg)
    assert ds.user_ids == ["u2", "u1"]
    day = 86400
    jan1 = 1388534400  # 2014-01-01T00:00:00Z
    assert [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["9", "7"], ["7", "8", "9"]]
    assert [t.tolist() for t in ds.timestamps] == [[jan1, jan1 + 2 * day], [jan1, jan1 + day, jan1 + day]]
    assert ds.item_ids == ["9", "7", "8"]
    assert ds.items == [{"title": "nine", "price": 1.5}, {"title": "seven"}, {"price": 2.0}]


def test_table_parquet_in_file_order_with_kcore(tmp_path):
    pd.DataFrame({"user": [1, 2, 1, 2, 3, 1], "item": ["a", "b", "b", "a", "c", "a"]}).to_parquet(
        tmp_path / "inter.parquet")
    ds = load_dataset(DataConfig(format="table", interactions=str(tmp_path / "inter.parquet"), min_interactions=2))
    assert ds.timestamps is None
    assert ds.user_ids == ["1", "2"] and ds.item_ids == ["a", "b"]
    assert _seqs(ds) == [[0, 1], [1, 0]]  # user 1's repeated a dropped, user 3 and item c below the 2-core
    assert ds.items == [{}, {}]
    kept = load_dataset(DataConfig(format="table", interactions=str(tmp_path / "inter.parquet"), min_interactions=2,
                                   keep_repeats=True))
    assert _seqs(kept) == [[0, 1, 0], [1, 0]]  # data.keep_repeats: user 1 comes back to a


def test_table_integer_timestamps_from_tsv(tmp_path):
    (tmp_path / "inter.tsv").write_text("user\titem\ttimestamp\nu\ta\t30\nu\tb\t10\nu\tc\t20\n")
    ds = load_dataset(DataConfig(format="table", interactions=str(tmp_path / "inter.tsv"), min_interactions=0))
    assert ds.item_ids == ["b", "c", "a"] and [t.tolist() for t in ds.timestamps] == [[10, 20, 30]]


def test_table_errors(tmp_path):
    (tmp_path / "inter.csv").write_text("user,product\nu,a\n")
    cfg = DataConfig(format="table", interactions=str(tmp_path / "inter.csv"), min_interactions=0)
    with pytest.raises(GenrecError, match=r"inter\.csv lacks column\(s\) item \(it has user, product\); name the "
                                          r"right ones with data\.item_column=<column>"):
        load_dataset(cfg)
    with pytest.raises(GenrecError, match=r"missing\.csv does not exist; pass data\.interactions="):
        load_dataset(DataConfig(format="table", interactions=str(tmp_path / "missing.csv")))
    (tmp_path / "inter.json").write_text("{}")
    with pytest.raises(GenrecError, match="unknown extension"):
        load_dataset(DataConfig(format="table", interactions=str(tmp_path / "inter.json")))
    (tmp_path / "inter.csv").write_text("user,item,timestamp\nu,a,yesterday-ish\n")
    with pytest.raises(GenrecError, match="timestamp"):
        load_dataset(cfg)


def test_table_with_own_column_names_rating_threshold_and_item_id_column(tmp_path):
    """Name the columns instead of renaming files; ratings below data.min_rating are dropped; an items file whose
    ID column is called item_id works, and all its other columns are the item's fields."""
    pd.DataFrame({"reader": ["r1", "r1", "r1", "r2", "r2"], "book": ["a", "b", "c", "a", "c"],
                  "stars": [5, 2, 4, 3, 1], "when": [3, 1, 2, 1, 2]}).to_csv(tmp_path / "inter.csv", index=False)
    pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"], "genre": ["x", "y", "z"]}).to_csv(
        tmp_path / "books.csv", index=False)
    cfg = DataConfig(format="table", interactions=str(tmp_path / "inter.csv"), items=str(tmp_path / "books.csv"),
                     user_column="reader", item_column="book", time_column="when", rating_column="stars",
                     min_rating=3, min_interactions=0)
    ds = load_dataset(cfg)
    assert ds.user_ids == ["r1", "r2"] and [[ds.item_ids[i] for i in s] for s in ds.sequences] == [["c", "a"], ["a"]]
    assert [t.tolist() for t in ds.timestamps] == [[2, 3], [1]]
    assert dict(zip(ds.item_ids, ds.items)) == {"c": {"title": "C", "genre": "z"}, "a": {"title": "A", "genre": "x"}}
    cfg_bad = DataConfig(format="table", interactions=str(tmp_path / "inter.csv"), user_column="reader",
                         item_column="book", rating_column="score", min_rating=3)
    with pytest.raises(GenrecError, match=r"lacks column\(s\) score .* data\.rating_column=<column>"):
        load_dataset(cfg_bad)


@pytest.mark.parametrize("values, message", [
    (["10", "20", "x", "40"], "column timestamp holds unix seconds but data row 3 has 'x'"),
    (["2014-01-01", "2014-01-02", "2014-01-03", "soon"], "column timestamp holds dates but data row 4 has 'soon'"),
])
def test_table_one_bad_timestamp_is_reported_with_its_row(tmp_path, values, message):
    lines = ["user,item,timestamp"] + [f"u,{item},{v}" for item, v in zip("abcd", values)]
    (tmp_path / "inter.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(GenrecError, match=message):
        load_dataset(DataConfig(format="table", interactions=str(tmp_path / "inter.csv"), min_interactions=0))
