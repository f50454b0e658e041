"""The `genrec` command: run the whole pipeline or one stage, and recommend from a trained model.

    genrec run -c configs/beauty.yaml [section.key=value ...] [--force]
    genrec prepare|embed|collab|quantize|train|evaluate -c CONFIG [overrides] [--force]
    genrec recommend -c CONFIG (--history ITEM [ITEM ...] | --user USER) [-k 10]
    genrec add-items -c CONFIG --items FILE --out DIR [--model DIR]
    genrec serve PATH [--port 8000] [--max-batch 64] [--max-wait-ms 5] [--no-batching]
    genrec train-query -c CONFIG [overrides]
    genrec search -c CONFIG "QUERY" [--history ITEM ...] [-k 10]

Works the same under `torchrun --nproc_per_node=N -m genrec.cli ...` (DDP; logging on rank 0 only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from genrec.errors import GenrecError
from genrec.rundir import RunDir

STAGE_HELP = {
    "prepare": "load the dataset, split it, write the catalogue, sequences and statistics",
    "embed": "encode every item's text with a sentence encoder",
    "collab": "train a SASRec whose item embeddings the semantic IDs are built from (collab.enabled)",
    "quantize": "assign semantic IDs with the quantizer (quantize.method) plus a collision level",
    "train": "train the model of model.kind (resumes from the last checkpoint)",
    "evaluate": "Recall/NDCG of the model's ranking methods on validation and test over the full catalogue",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrec", description="Generative retrieval with semantic IDs (TIGER).")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", help="YAML recipe (default: built-in defaults = configs/beauty.yaml)")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 run_dir=runs/x")

    run = sub.add_parser("run", help="run every stage in order, skipping the ones already done")
    with_config(run)
    run.add_argument("--force", action="store_true", help="rerun every stage even if its outputs are current")
    for stage, text in STAGE_HELP.items():
        sp = sub.add_parser(stage, help=text)
        with_config(sp)
        sp.add_argument("--force", action="store_true", help="rerun the stage even if its outputs are current")
    rec = sub.add_parser("recommend", help="top-k items for a history or a user, with titles and scores")
    with_config(rec)
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", nargs="+", metavar="ITEM", help="item IDs, oldest first")
    who.add_argument("--user", help="a user ID of the dataset (their whole sequence is the history)")
    rec.add_argument("-k", type=int, default=10, help="number of items (= beam size) (default 10)")
    rec.add_argument("--model", help="a model directory to use instead of <run_dir>/train/best (it carries its "
                                      "items; --user takes the users of run_dir)")
    rec.add_argument("--include-history", action="store_true", help="allow items already in the history")
    rec.add_argument("--method", help="a ranking method the model offers (default: its first, e.g. hybrid)")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add = sub.add_parser("add-items", help="add new items (with their text) to a trained model, no retraining")
    with_config(add)
    add.add_argument("--items", required=True, help="JSONL, CSV or Parquet: an item_id and text fields per item")
    add.add_argument("--out", required=True, help="the new model directory to write (must not exist yet)")
    add.add_argument("--model", help="the model to extend (default <run_dir>/train/best; an earlier add-items "
                                      "output adds to its catalogue)")
    serve = sub.add_parser("serve", help="an HTTP service and web page over a trained run or model directory")
    serve.add_argument("path", help="a run directory (runs/<name>) or a model directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-batch", type=int, default=64, help="histories per batched model call (default 64)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="how long a request waits for others to share its model call (default 5)")
    serve.add_argument("--no-batching", action="store_true", help="one model call per request")
    serve.add_argument("--threads", type=int, default=0,
                       help="torch threads (default: all cores but one, which the HTTP side needs; at least 1)")
    serve.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                       help="number format of the model (default auto: bfloat16 where the CPU has it natively)")
    tq = sub.add_parser("train-query", help="train the query model (text -> semantic IDs) of a run into <run>/query")
    with_config(tq)
    search = sub.add_parser("search", help="catalogue items for a natural-language query (personalised with "
                                           "--history)")
    search.add_argument("query", help="the query, e.g. 'red nail polish'")
    with_config(search)
    search.add_argument("--history", nargs="+", metavar="ITEM", help="item IDs, oldest first: personalised search")
    search.add_argument("-k", type=int, default=10, help="number of items (default 10)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _train_query(args: argparse.Namespace) -> int:
    from genrec.config import load_config
    from genrec.query.run import train_query

    _setup_logging(True)
    summary = train_query(load_config(args.config, args.overrides))
    print(json.dumps({k: summary[k] for k in ("valid", "test", "history_weight") if k in summary}, indent=2))
    return 0


def _search(args: argparse.Namespace) -> int:
    from genrec.config import load_config
    from genrec.query.searcher import Searcher, check_query

    _setup_logging(True)
    check_query(args.query)
    history, late = split_overrides(args.history or [])
    cfg = load_config(args.config, args.overrides + late)
    searcher = Searcher.load(cfg.run_dir)
    rec = None
    if history:
        from genrec.serve.recommender import Recommender

        rec = Recommender.load(cfg.run_dir)
    _print_items(searcher.search(args.query, args.k, history=history, recommender=rec), args.json)
    return 0


def _print_items(items: list, as_json: bool) -> None:
    """Ranked items (Recommendation or SearchHit) as a table or JSON."""
    if as_json:
        print(json.dumps([i.__dict__ for i in items], indent=2))
        return
    print(f"{'rank':<5}{'item':<14}{'score':>9}  title")
    for i in items:
        print(f"{i.rank:<5}{i.item_id:<14}{i.score:>9.3f}  {i.title[:90]}")


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from genrec.serve.app import create_app
    except ImportError as err:
        raise GenrecError(f"genrec serve needs FastAPI and uvicorn ({err.name} is missing); install them with "
                          f"pip install 'genrec[serve]'") from None
    import torch

    from genrec.serve.recommender import Recommender

    _setup_logging(True)
    torch.set_num_threads(args.threads if args.threads > 0 else _serving_threads())
    if not 1 <= args.port <= 65535 or args.max_batch < 1 or args.max_wait_ms < 0:
        raise GenrecError("--port must be 1..65535, --max-batch at least 1 and --max-wait-ms at least 0")
    rec = Recommender.load(args.path, dtype=args.dtype)
    searcher = None
    if (RunDir(args.path).query / "config.json").is_file():  # a run directory with a query model: /search too
        from genrec.query.searcher import Searcher

        searcher = Searcher.load(args.path)
    app = create_app(rec, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, batched=not args.no_batching,
                     searcher=searcher)
    logging.getLogger("genrec.serve").info(
        "%s: %d items, methods %s, %s on %d thread(s), %s", args.path, len(rec.item_ids), ", ".join(rec.methods),
        rec.dtype, torch.get_num_threads(), f"batches of up to {args.max_batch} waiting up to {args.max_wait_ms} ms"
        if not args.no_batching else "no batching")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0


def _serving_threads() -> int:
    """All cores but one: the HTTP side (parsing, answering) needs a core of its own, or it waits on the model's
    threads (on 2 cores, 1 model thread serves about 1.7x the requests of 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cores - 1)


def _setup_logging(is_main: bool) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _print_results(run: RunDir, ks: tuple[int, ...]) -> None:
    from genrec.evaluation.evaluator import format_results

    print(format_results(json.loads(run.results.read_text()), ks))


def split_overrides(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(item IDs, overrides) of the tokens after --history: a token `key=value` whose key is a setting (run_dir or
    section.key) is an override typed after the history, as in `--history A B run_dir=runs/x`."""
    from genrec.config import is_setting

    overrides = [t for t in tokens if "=" in t and is_setting(t.split("=", 1)[0])]
    return [t for t in tokens if t not in overrides], overrides


def _recommend(args: argparse.Namespace) -> int:
    from genrec.config import load_config
    from genrec.serve.recommender import Recommender

    _setup_logging(True)
    history, late = split_overrides(args.history or [])
    cfg = load_config(args.config, args.overrides + late)
    run = RunDir(cfg.run_dir)
    if args.model:
        rec = Recommender.load(args.model, run_dir=run.root if args.user is not None else None,
                               dtype=cfg.evaluate.dtype)
    else:
        rec = Recommender.load(run.root, dtype=cfg.evaluate.dtype)
    exclude = not args.include_history
    recs = rec.recommend(history, args.k, exclude_history=exclude, method=args.method) if args.user is None else \
        rec.recommend_user(args.user, args.k, exclude_history=exclude, method=args.method)
    method = args.method or rec.methods[0]
    limit = rec.model.ranking(method).list_size
    if len(recs) < args.k and 0 < limit < args.k:
        print(f"genrec: {len(recs)} of the {args.k} items asked for came back: {method} returns at most {limit} "
              f"(its candidates and the new items); --method dense ranks every item", file=sys.stderr)
    elif len(recs) < args.k:
        print(f"genrec: {len(recs)} of the {args.k} items asked for came back: the catalogue has "
              f"{len(rec.item_ids)} items{' and history items are removed (--include-history keeps them)' if exclude else ''}",
              file=sys.stderr)
    _print_items(recs, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "search" and all("=" in t for t in extra):  # overrides typed after an option
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _main(args)
    except GenrecError as err:
        print(f"genrec: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genrec: interrupted; run the same command again to resume (finished stages are kept, training "
              "continues from its last checkpoint)", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    from genrec.config import load_config
    from genrec.distributed import cleanup, compute_init

    if args.command == "recommend":
        return _recommend(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "train-query":
        return _train_query(args)
    if args.command == "search":
        return _search(args)
    if args.command == "add-items":
        from genrec.add_items import add_items

        _setup_logging(True)
        summary = add_items(load_config(args.config, args.overrides), args.items, args.out, args.model)
        print(f"{summary['added']} items added; {summary['model']} ranks {summary['items']} items")
        return 0
    cfg = load_config(args.config, args.overrides)
    import torch

    from genrec.pipeline import run
    from genrec.rundir import STAGES

    dist = compute_init()
    _setup_logging(dist.is_main)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    stages = STAGES if args.command == "run" else (args.command,)
    try:
        run(cfg, dist, stages=stages, force=args.force)
    finally:
        cleanup()
    if dist.is_main and "evaluate" in stages:
        _print_results(RunDir(cfg.run_dir), cfg.evaluate.ks)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
