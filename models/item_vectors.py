"""The mix-up vector of any catalog item, exactly as the bundle would have stored it.

Catalog updates bring titles the bundle never saw and items SASRec never trained: the
indexer (and a rebuild that carries the live catalog over to a new bundle) asks here for
their vectors ``x_i = [t̂_i ; ê_i]``, so an item indexed at training time and one indexed
from the stream are made by the same rules:

- the title half is the bundle's title encoder (ONNX) on the item's current title;
- the ID half is the bundle's own for the items it has (SASRec's trained embedding, or the
  one the bundle kept when validation chose no imputation), else imputed from the title and
  category with the bundle's imputer (text→ID projection, category mean, global mean) and
  marked imputed; items the bundle itself imputed are imputed again, from their current title.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.bundle import Bundle
from models.mixup import id_part, mixup_item_vectors
from models.recommender import embed_texts


@dataclass(frozen=True)
class ItemVectors:
    vectors: np.ndarray  # [n, d] float32, the stored x_i
    imputed: np.ndarray  # [n] bool: the ID half was imputed (SASRec has no vector for the item)


class ItemVectorizer:
    """Mix-up vectors for items given by id, title and category, in one bundle's space."""

    def __init__(self, bundle: Bundle, encoder: str | None = None):
        self.bundle = bundle
        self.encoder_name = encoder or bundle.chosen_encoder
        self.id_half = bundle.fusion(self.encoder_name).id_half
        self.text_dim = int(bundle.manifest["encoders"][self.encoder_name]["dim"])
        items = bundle.items()
        imputed = items["imputed"].to_numpy(bool) if "imputed" in items else np.zeros(len(items), bool)
        stored = bundle.item_vectors(self.encoder_name)
        ids = items["item_id"].astype(str).to_numpy()
        self._known_id_half = {i: stored[r, self.text_dim:] for r, i in enumerate(ids) if not imputed[r]}
        self._imputer = bundle.imputer(self.encoder_name)

    @property
    def dim(self) -> int:
        return self.text_dim + (next(iter(self._known_id_half.values())).shape[0] if self._known_id_half
                                else int(self._imputer.global_mean.shape[0]))

    def knows(self, item_id: str) -> bool:
        return item_id in self._known_id_half

    def vectors(self, item_ids: Sequence[str], titles: Sequence[str],
                categories: Sequence[str | None]) -> ItemVectors:
        """One stored vector per item; an empty title leaves the title half at zero."""
        titles_emb = embed_texts(self.bundle.title_encoder(self.encoder_name), titles)
        imputed = np.array([i not in self._known_id_half for i in item_ids], bool)
        ids = np.zeros((len(item_ids), self.dim - self.text_dim), np.float64)
        if imputed.any():
            rows = np.flatnonzero(imputed)
            cats = [categories[r] or None for r in rows]
            ids[rows] = id_part(self._imputer.impute(titles_emb[rows], cats), self.id_half)
        for r in np.flatnonzero(~imputed):
            ids[r] = self._known_id_half[item_ids[r]]
        # The known rows are already in stored form (ê_i or e_i): id_part of a unit row is itself.
        out = mixup_item_vectors(titles_emb, ids, "logit")
        return ItemVectors(out, imputed)
