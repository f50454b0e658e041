"""`genrec.Recommender`: load once, answer many; the same answers as the model itself, one history or many in
one batch, from a run or a self-contained model directory; the CLI's traps (overrides after --history, fewer
than k items, a model of another run)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY

import genrec
from genrec.cli import main
from genrec.data.batches import Batch
from genrec.errors import GenrecError
from genrec.models.checkpoint import load_model
from genrec.models.tiger import Tiger
from genrec.serve.recommender import shape_bucket


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    run_dir = tmp_path_factory.mktemp("rec") / "run"
    overrides = [f"run_dir={run_dir}", f"data.path={tiny_data}", "train.max_steps=40", "train.eval_every=20",
                 "train.warmup_steps=5", "train.batch_size=16", "collab.max_steps=20", "collab.eval_every=10",
                 "evaluate.splits=[valid]"]
    assert main(["run", "-c", str(TINY), *overrides]) == 0
    return run_dir, overrides


def test_recommend_is_the_models_ranking_for_one_and_many_histories(trained):
    run_dir, _ = trained
    rec = genrec.Recommender.load(run_dir, dtype="float32")
    ids = rec.item_ids
    histories = [[ids[0], ids[1]], [ids[5]], [ids[9], ids[3], ids[7]]]
    many = rec.recommend(histories, k=5)
    assert len(many) == 3 and all(len(r) == 5 for r in many)
    alone = rec.recommend(histories[2], k=5)  # one history: one list, the same as in a batch (padding aside)
    assert [r.item_id for r in alone] == [r.item_id for r in many[2]]
    assert [r.score for r in alone] == pytest.approx([r.score for r in many[2]], abs=1e-5)
    model = load_model(run_dir / "train" / "best")
    for history, recs in zip(histories, many):
        items, scores = model.ranking("generative").recommend(
            Batch(torch.zeros(1, dtype=torch.long), torch.tensor([[ids.index(i) for i in history]])), 5, True)
        assert [r.item_id for r in recs] == [ids[i] for i in items[0].tolist()]
        assert [r.score for r in recs] == pytest.approx(scores[0].tolist(), abs=1e-5)
        assert [r.rank for r in recs] == [1, 2, 3, 4, 5] and not {r.item_id for r in recs} & set(history)
    kept = rec.recommend(histories[0], k=64, exclude_history=False)
    assert set(histories[0]) <= {r.item_id for r in kept}
    exact = rec.recommend(histories[0], k=5, method="exact")
    # exact scoring ranks every item by the same log-probability that beam search approximates from above
    assert exact[0].score >= many[0][0].score - 1e-5 and [r.score for r in exact] == sorted(
        (r.score for r in exact), reverse=True)


def test_batch_shapes_are_few_and_never_lose_a_history():
    sizes = [shape_bucket(n) for n in range(1, 65)]
    assert all(n <= s <= n + 15 for n, s in zip(range(1, 65), sizes)) and len(set(sizes)) <= 12
    assert sizes[:4] == [1, 2, 3, 4] and shape_bucket(5) == 8 and shape_bucket(17) == 24 and shape_bucket(64) == 64


def test_bfloat16_answers_each_history_as_float32_does_up_to_rounding(trained):
    """Under bf16 a batch is padded to a few shapes with repeated histories: each history still gets its own
    answer (the float32 one, up to bf16 rounding), and the padding's answers are dropped."""
    run_dir, _ = trained
    f32, b16 = (genrec.Recommender.load(run_dir, dtype=d) for d in ("float32", "bfloat16"))
    assert (f32.dtype, b16.dtype) == ("float32", "bfloat16")
    ids = f32.item_ids
    histories = [[ids[i], ids[i + 7]] for i in range(0, 30, 5)]  # 6 histories: ranked as a batch of 8
    exact, rounded = f32.recommend(histories, k=5), b16.recommend(histories, k=5)
    assert len(rounded) == 6
    for a, b in zip(exact, rounded):
        assert len({r.item_id for r in a} & {r.item_id for r in b}) >= 4
        assert b[0].score == pytest.approx(a[0].score, abs=0.05)
    with pytest.raises(GenrecError, match="dtype 'half' is not one of auto, float32, bfloat16"):
        genrec.Recommender.load(run_dir, dtype="half")


def test_a_model_directory_recommends_on_its_own(trained, tmp_path):
    """The model directory carries its item IDs and titles: copied anywhere, it answers as the run does."""
    run_dir, _ = trained
    alone = tmp_path / "model"
    shutil.copytree(run_dir / "train" / "best", alone)
    items = [json.loads(line) for line in (alone / "items.jsonl").read_text().splitlines()]
    prepared = [json.loads(line) for line in (run_dir / "prepare" / "items.jsonl").read_text().splitlines()]
    assert [i["item_id"] for i in items] == [i["item_id"] for i in prepared]
    rec, ref = genrec.Recommender.load(alone), genrec.Recommender.load(run_dir)
    history = ref.item_ids[10:13]
    assert rec.recommend(history, k=7) == ref.recommend(history, k=7)
    assert all(r.title for r in rec.recommend(history, k=7))
    with pytest.raises(GenrecError, match="model directory, which knows no users"):
        rec.recommend_user("U00003")
    # the Hugging Face conventions: from_pretrained / save_pretrained round trip
    model = Tiger.from_pretrained(alone)
    model.save_pretrained(tmp_path / "exported")
    again = genrec.Recommender.load(tmp_path / "exported")
    assert again.recommend(history, k=7) == ref.recommend(history, k=7)
    with pytest.raises(GenrecError, match="holds a tiger model, not a SASRec"):
        from genrec.models.sasrec import SASRec

        SASRec.from_pretrained(alone)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.recommend("S00001"), "a history is a list of item IDs"),
    (lambda r: r.recommend([["S00001"], []]), "a history is empty"),
    (lambda r: r.recommend(["S00001"], k=65), "k must be between 1 and the catalogue's 64 items"),
    (lambda r: r.recommend(["S00001"], method="beam"), "method 'beam' is not offered"),
    (lambda r: r.recommend([["S00001", 3]]), "history 0 is not a list of item IDs"),
])
def test_bad_calls_say_what_is_wrong(trained, call, message):
    rec = genrec.Recommender.load(trained[0])
    with pytest.raises(GenrecError, match=message):
        call(rec)


def test_an_override_after_the_history_is_an_override(trained, tmp_path, capsys):
    """`--history A B run_dir=...`: run_dir is a setting, not an item ID."""
    run_dir, overrides = trained
    ids = genrec.Recommender.load(run_dir).item_ids
    rest = [o for o in overrides if not o.startswith("run_dir=")]
    assert main(["recommend", "-c", str(TINY), *rest, "--history", ids[0], ids[1], f"run_dir={run_dir}", "--json",
                 "-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_fewer_items_than_asked_are_announced(trained, capsys):
    run_dir, overrides = trained
    ids = genrec.Recommender.load(run_dir).item_ids
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", ids[0], ids[1], "-k", "64", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 62
    assert "62 of the 64 items asked for came back" in captured.err and "--include-history" in captured.err


def test_the_hybrids_limit_is_announced_and_another_method_can_be_asked_for(hybrid_run, capsys):
    run_dir, overrides = hybrid_run
    rec = genrec.Recommender.load(run_dir, dtype="float32")  # as the CLI runs it (evaluate.dtype=float32)
    assert rec.methods[0] == "hybrid"
    limit = rec.model.ranking("hybrid").list_size
    k = limit + 5
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", rec.item_ids[0], "-k", str(k), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) <= limit
    assert f"hybrid returns at most {limit}" in captured.err and "--method dense" in captured.err
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", rec.item_ids[0], "-k", str(k), "--json",
                 "--method", "dense"]) == 0
    captured = capsys.readouterr()
    want = rec.recommend([rec.item_ids[0]], k=k, method="dense")
    assert [r["item_id"] for r in json.loads(captured.out)] == [r.item_id for r in want] and len(want) == k
    assert main(["recommend", "-c", str(TINY), *overrides, "--history", rec.item_ids[0], "--method", "nope"]) == 2
    assert "method 'nope' is not offered" in capsys.readouterr().err


def test_training_validates_only_the_ranking_it_selects_on(hybrid_run):
    logged = [json.loads(line) for line in (hybrid_run[0] / "train" / "log.jsonl").read_text().splitlines()]
    valid = {key.split("/")[1] for row in logged for key in row if key.startswith("valid/")}
    assert valid == {"generative"}


def test_a_model_of_another_run_is_refused_for_its_users(trained, tmp_path, tiny_data, capsys):
    """A model trained on other items is never used with this run's users: the item IDs are compared."""
    run_dir, overrides = trained
    other = tmp_path / "other"
    shutil.copytree(run_dir / "train" / "best", other)
    rows = (other / "items.jsonl").read_text().splitlines()
    (other / "items.jsonl").write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same items, another order
    assert main(["recommend", "-c", str(TINY), *overrides, "--model", str(other), "--user", "U00003"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ranks other items than the data of" in err
