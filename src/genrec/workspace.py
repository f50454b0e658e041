"""What training, evaluation and serving read from the earlier stages of a run directory: the catalogue (with
its semantic IDs once quantized), the split and the users' tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrec.config import Config
from genrec.data.batches import user_buckets
from genrec.data.cold import training_items
from genrec.data.loaders import Dataset
from genrec.data.prepare import load_prepared
from genrec.data.splits import Split, make_split
from genrec.errors import GenrecError
from genrec.ids.catalog import Catalog
from genrec.ids.quantize import load_embeddings
from genrec.rundir import EMBEDDINGS, RunDir


@dataclass
class Workspace:
    catalog: Catalog
    split: Split
    user_bucket: np.ndarray  # [U] hashed user tokens (all 0 without them)


def load_sids(run: RunDir, num_items: int, codebook_size: int) -> np.ndarray:
    """The quantize stage's semantic IDs [N, C], checked against the catalogue and the codebook size."""
    path = run.sids
    rerun = "rerun 'genrec quantize' (or pass --force)"
    try:
        sids = np.load(path)
    except (FileNotFoundError, ValueError, OSError) as err:
        raise GenrecError(f"cannot read {path} ({type(err).__name__}); {rerun}")
    if sids.ndim != 2 or sids.shape[0] != num_items:
        raise GenrecError(f"{path} covers {sids.shape[0]} items but the catalog has {num_items}; {rerun}")
    if sids[:, :-1].max() >= codebook_size:
        raise GenrecError(f"{path} has codes >= quantize.codebook_size={codebook_size}; {rerun}")
    return sids.astype(np.int64)


def catalog_of(cfg: Config, run: RunDir, dataset: Dataset, with_sids: bool = True) -> Catalog:
    """The catalogue of `dataset`, with the run's semantic IDs and their trie when `with_sids`; the trie is built
    here, once, because building it is also the check that every ID is unique."""
    catalog = Catalog(dataset.item_ids, dataset.items, None, cfg.quantize.codebook_size)
    if with_sids:
        catalog.sids = load_sids(run, len(dataset.item_ids), cfg.quantize.codebook_size)
        try:
            catalog.trie  # noqa: B018  builds and keeps it
        except ValueError as err:
            raise GenrecError(f"{run.sids}: {err}; rerun 'genrec quantize' (or pass --force) so that the extra "
                              f"level makes every ID unique") from None
    return catalog


def load_workspace(cfg: Config, run: RunDir, with_sids: bool = True) -> Workspace:
    """The run's workspace; `with_sids=False` for a model that needs no semantic IDs (before quantize). Users get
    hashed tokens when the model's section asks for them (`num_user_buckets`). The catalogue carries the embed
    stage's text embeddings where it wrote them, and which items are new (in no training sequence)."""
    dataset = load_prepared(run.prepared)
    buckets = user_buckets(dataset.user_ids, getattr(cfg.model.section, "num_user_buckets", 0))
    split = make_split(dataset, cfg.data)
    catalog = catalog_of(cfg, run, dataset, with_sids)
    catalog.new_items = ~training_items(split.train, catalog.num_items)
    if (run.stage("embed") / EMBEDDINGS).is_file():
        catalog.text = load_embeddings(run.stage("embed"), normalize=True)
    return Workspace(catalog, split, buckets)
