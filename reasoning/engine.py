"""The intent engine: everything the intent route needs at serving time, assembled from a model
directory (written by `intentstream train --sft`) and the settings.

The catalog the model was trained with travels in the directory (catalog.parquet); item atoms
come from the embedder named in its metadata (MiniLM vectors cached per catalog version, or the
learned category vectors saved beside the model); the faiss index covers the catalog's atoms
(text catalogs only: learned category atoms are shared by a whole category).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contracts.settings import IntentSettings
from features.catalog import Catalog
from features.embedder import MiniLMEmbedder, item_embeddings
from reasoning.backends import LocalBackend, OpenAIBackend
from reasoning.errors import ModelNotFound
from reasoning.explanations import Explainer
from reasoning.index import ItemIndex
from reasoning.intent_model import AtomTable, IntentModel, set_torch_threads
from reasoning.retrieval import TagRetriever

log = logging.getLogger(__name__)


def load_catalog(model_dir: Path) -> Catalog:
    frame = pd.read_parquet(model_dir / "catalog.parquet")
    return Catalog.from_frames(frame)


def load_atoms(model_dir: Path, model: IntentModel, catalog: Catalog, cache_dir: Path) -> AtomTable:
    if (model_dir / "category_vectors.npy").exists():
        cats = (model_dir / "categories.txt").read_text().split("\n")
        vectors = np.load(model_dir / "category_vectors.npy")
        by_cat = dict(zip(cats, vectors))
        return AtomTable([], np.zeros((0, vectors.shape[1]), np.float32), by_cat, catalog)
    ids, vectors = item_embeddings(catalog, MiniLMEmbedder(cache_dir), cache_dir)
    return AtomTable(ids, vectors, None, catalog)


class IntentEngine:
    def __init__(self, model_dir: Path, config: IntentSettings, cache_dir: Path) -> None:
        if not (model_dir / "intent.json").exists():
            raise ModelNotFound(f"no intent model at {model_dir}; train one with `intentstream train --sft`")
        set_torch_threads(config.threads)
        self.config = config
        self.model_dir = model_dir
        self.model = IntentModel.load(model_dir)
        for unfitted in config.unfitted_route(self.model.meta):
            log.warning("intent model %s: its intent weight was fitted for another route than this one serves, "
                        "%s; train it again (`intentstream train --sft`) or set INTENTSTREAM_INTENT__WEIGHT_INTENT",
                        self.model.version, unfitted)
        self.catalog = load_catalog(model_dir)
        self.atoms = load_atoms(model_dir, self.model, self.catalog, cache_dir)
        self.tag_vectors = np.load(model_dir / "tag_vectors.npy")
        index = None
        if self.atoms.row:
            ids = list(self.atoms.row)
            index = ItemIndex(ids, self.atoms.vectors[[self.atoms.row[i] for i in ids]])
        self.index = index
        self.retriever = TagRetriever(self.model.vocab, self.catalog, self.tag_vectors, index,
                                      per_tag=config.items_per_tag, ann_per_tag=config.items_per_tag // 2,
                                      item_step=config.item_step)
        self.explainer = Explainer(self.catalog, self.model.vocab.tags, self.model.vocab.personas)
        if config.backend == "local":
            self.backend = LocalBackend(self.model, self.atoms, self.catalog)
        elif config.backend == "openai":
            self.backend = OpenAIBackend(
                config.openai_url, config.openai_model or str(model_dir), self.model, self.catalog, self.atoms,
                structured=config.openai_structured, prompt_embeds=config.openai_prompt_embeds,
                api_key=config.openai_api_key.get_secret_value() if config.openai_api_key else None)
        else:
            raise ValueError(f"unknown intent backend {config.backend!r}; choose local or openai")
        log.info("intent engine: model %s, %d tags, %d items, backend %s", self.model.version,
                 len(self.model.vocab), len(self.catalog), config.backend)

    @property
    def version(self) -> str:
        return self.model.version
