"""SASRec-style sequential recommender: a small causal transformer over item-ID sequences.

It supplies the ID half of mix-up retrieval: item embeddings ``e_i`` that carry
collaborative signal, and a user state ``u`` (the transformer output after the
shopper's history). Read top to bottom: config, model (with its interface and persistence),
training data, training.

Design choices, and why:
- Full softmax over the whole catalog (no sampled negatives): catalogs here are at most
  tens of thousands of items, so the exact loss is affordable and avoids the
  popularity bias of sampled losses.
- Output weights are tied to the input item embeddings, so ``e_i`` is both what the
  model reads and what it scores against; ``score = u · e_i``.
- Every input token is item + kind (click/purchase) + position; targets are the next
  item whatever its kind, purchases weighted more (they are the goal).
- A BOS token opens every shopper's sequence, so the model also learns what people take
  first, and a shopper with no known history still gets a sensible state.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.data.dataset import Dataset
from models.metrics import NextItemEvents, next_item_events, recall_at_k, target_ranks

PAD = 0
KIND_INDEX = {"click": 1, "purchase": 2}  # 0 = pad / BOS
DEFAULT_KIND = "click"  # assumed when the caller does not say: clicks are the common event
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"


@dataclass
class SASRecConfig:
    """Hyper-parameters; recorded in the manifest of every saved model."""

    dim: int = 64
    layers: int = 2
    heads: int = 2
    ffn_mult: int = 1  # SASRec's point-wise feed-forward is d -> d -> d; GPT uses 4
    max_len: int = 50
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.0
    epochs: int = 40
    batch_size: int = 64
    purchase_weight: float = 2.0
    patience: int = 4  # epochs without validation improvement before stopping
    eval_k: int = 10
    eval_kinds: tuple[str, ...] = ("purchase", "click")
    max_eval_events: int = 2000
    seed: int = 0
    device: str = "cpu"  # training device ("auto": the GPU when torch sees one); saved models are CPU


# -- model -----------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then an MLP, both residual."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.ln2 = nn.LayerNorm(cfg.dim)
        hidden = cfg.ffn_mult * cfg.dim
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, cfg.dim), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        # no dropout on attention weights: on CPU it makes attention ~6x slower
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.mlp(self.ln2(x))


class SASRec(nn.Module):
    """The network plus its catalog: item ids in dataset order, index 1..n in the embedding."""

    def __init__(self, item_ids: Sequence[str], cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_ids = [str(i) for i in item_ids]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.bos = len(self.item_ids) + 1
        self.item_emb = nn.Embedding(len(self.item_ids) + 2, cfg.dim, padding_idx=PAD)
        self.kind_emb = nn.Embedding(len(KIND_INDEX) + 1, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        with torch.no_grad():  # scale ~ 1/sqrt(d): learning starts faster than with 0.02
            nn.init.normal_(self.item_emb.weight, std=cfg.dim ** -0.5)
            self.item_emb.weight[PAD].zero_()
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.normal_(self.kind_emb.weight, std=0.02)
        # items seen in training; the others' e_i were only ever pushed down as negatives
        self.register_buffer("seen", torch.zeros(len(self.item_ids), dtype=torch.bool))
        self.manifest: dict[str, object] = {}

    def forward(self, items: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """Hidden states [b, t, d] for left-padded token ids [b, t]."""
        t = items.shape[1]
        pos = torch.arange(t, device=items.device)
        x = self.drop(self.item_emb(items) + self.kind_emb(kinds) + self.pos_emb(pos))
        mask = attention_mask(items)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the catalog (items 1..n of the tied embedding table)."""
        return hidden @ self.item_emb.weight[1:self.bos].T

    # -- the interface the rest of stylestream uses ------------------------------------
    def item_embeddings(self) -> np.ndarray:
        """ID embeddings e_i [n_items, d], rows in catalog order (not normalised)."""
        return self.item_emb.weight[1:self.bos].detach().cpu().numpy().copy()

    def known_items(self) -> np.ndarray:
        """Bool [n_items]: which items have a trained ID embedding (else impute one)."""
        return self.seen.cpu().numpy().copy()

    def encode_history(self, history: Sequence[str], kinds: Sequence[str] | None = None
                       ) -> tuple[list[int], list[int]]:
        """Token ids for one history: unknown items skipped, BOS kept while it fits."""
        kinds = list(kinds) if kinds is not None else [DEFAULT_KIND] * len(history)
        if len(kinds) != len(history):
            raise ValueError(f"{len(history)} history items but {len(kinds)} kinds")
        toks = [(self.index[i] + 1, KIND_INDEX.get(k, KIND_INDEX[DEFAULT_KIND]))
                for i, k in zip(history, kinds, strict=True) if i in self.index]
        toks = [(self.bos, PAD), *toks][-self.cfg.max_len:]
        return [a for a, _ in toks], [b for _, b in toks]

    @torch.no_grad()
    def user_states(self, histories: Sequence[Sequence[str]],
                    kinds: Sequence[Sequence[str] | None] | None = None,
                    batch_size: int = 512) -> np.ndarray:
        """User states u [n, d] for many histories at once (evaluation, batch serving)."""
        self.eval()
        kinds = kinds if kinds is not None else [None] * len(histories)
        out = []
        for lo in range(0, len(histories), batch_size):
            enc = [self.encode_history(h, k) for h, k in
                   zip(histories[lo:lo + batch_size], kinds[lo:lo + batch_size], strict=True)]
            items, kd = left_pad([e[0] for e in enc], [e[1] for e in enc], self.cfg.max_len)
            dev = self.item_emb.weight.device
            out.append(self(items.to(dev), kd.to(dev))[:, -1].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.dim), np.float32)

    def user_state(self, history_item_ids: Sequence[str], kinds: Sequence[str] | None = None
                   ) -> np.ndarray:
        """The user state u [d] after a history (item ids in time order)."""
        return self.user_states([history_item_ids], [kinds])[0]

    def score(self, history: Sequence[str], kinds: Sequence[str] | None = None) -> np.ndarray:
        """Scores u · e_i over the whole catalog, in catalog order."""
        return self.item_embeddings() @ self.user_state(history, kinds)

    # -- persistence -------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """A folder with the weights and a manifest (version, data hash, config, items)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / MODEL_FILE)
        manifest = {**self.manifest, "config": asdict(self.cfg), "item_ids": self.item_ids}
        (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> SASRec:
        path = Path(path)
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        cfg_dict = manifest.pop("config")
        cfg_dict["eval_kinds"] = tuple(cfg_dict["eval_kinds"])
        model = cls(manifest.pop("item_ids"), SASRecConfig(**cfg_dict))
        model.load_state_dict(torch.load(path / MODEL_FILE, weights_only=True))
        model.manifest = manifest
        return model.eval()

    @property
    def version(self) -> str:
        return str(self.manifest.get("model_version", "untrained"))


def attention_mask(items: torch.Tensor) -> torch.Tensor:
    """Boolean [b, 1, t, t]: causal, pads never attended to (except by themselves, avoiding NaN)."""
    t = items.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
    keys = (items != PAD)[:, None, None, :]
    eye = torch.eye(t, dtype=torch.bool, device=items.device)
    return causal & (keys | eye)


def left_pad(items: Sequence[Sequence[int]], kinds: Sequence[Sequence[int]], length: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-align sequences so the newest token is always at the last position."""
    a = torch.zeros(len(items), length, dtype=torch.long)
    b = torch.zeros(len(items), length, dtype=torch.long)
    for r, (i, k) in enumerate(zip(items, kinds, strict=True)):
        if i:
            a[r, -len(i):] = torch.tensor(i[-length:])
            b[r, -len(k):] = torch.tensor(k[-length:])
    return a, b


# -- data --------------------------------------------------------------------------------------


@dataclass
class Windows:
    """Training windows: inputs, next-item targets (0 = ignore) and per-target weights."""

    items: torch.Tensor
    kinds: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor = field(repr=False)


def training_windows(train: pd.DataFrame, index: dict[str, int], bos: int,
                     cfg: SASRecConfig) -> Windows:
    """Cut every shopper's [BOS, items...] sequence into windows of ``max_len`` predictions.

    Windows are taken from the end backwards, so the most recent behaviour is always
    seen with full context; the first window of a long shopper may be short.
    """
    codes = train["item_id"].map(index)
    keep = codes.notna()
    frame = pd.DataFrame({"user": train["user_id"][keep], "item": codes[keep].astype(int) + 1,
                          "kind": train["kind"][keep].map(KIND_INDEX)})
    xs, ks, ys, ws = [], [], [], []
    length = cfg.max_len
    for _, rows in frame.groupby("user", sort=False):
        seq = [bos, *rows["item"].tolist()]
        kinds = [PAD, *rows["kind"].tolist()]
        for end in range(len(seq), 1, -length):
            lo = max(0, end - length - 1)
            xs.append(seq[lo:end - 1])
            ks.append(kinds[lo:end - 1])
            ys.append(seq[lo + 1:end])
            ws.append([cfg.purchase_weight if k == KIND_INDEX["purchase"] else 1.0
                       for k in kinds[lo + 1:end]])
    items, kinds_t = left_pad(xs, ks, length)
    targets, _ = left_pad(ys, ys, length)
    weights = torch.zeros(len(ws), length)
    for r, w in enumerate(ws):
        weights[r, -len(w):] = torch.tensor(w)
    return Windows(items, kinds_t, targets, weights)


def _frames(data: Dataset | tuple[pd.DataFrame, ...]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                               pd.DataFrame | None, str]:
    """(items, train, val or None, data hash) from a Dataset or (items, train[, val]) frames."""
    if isinstance(data, Dataset):
        train, val, _ = data.parts()
        return data.items, train, val, data.data_hash()
    items, train, *rest = data
    val = rest[0] if rest else None
    h = hashlib.sha256()
    for frame in (items, train, *([val] if val is not None else [])):
        h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return items, train, val, h.hexdigest()[:16]


# -- training ----------------------------------------------------------------------------------


def train_sasrec(data: Dataset | tuple[pd.DataFrame, ...], config: SASRecConfig | None = None,
                 progress: bool = True) -> SASRec:
    """Train on the train part with full softmax; keep the epoch best on validation Recall@k.

    ``data`` is a Dataset (its temporal split is used) or ``(items, train[, val])`` frames;
    without validation interactions it trains for ``config.epochs`` epochs.
    """
    cfg = config or SASRecConfig()
    torch.manual_seed(cfg.seed)
    items, train, val, data_hash = _frames(data)
    model = SASRec(items["item_id"].astype(str).tolist(), cfg)
    windows = training_windows(train, model.index, model.bos, cfg)
    model.seen[windows.targets[windows.targets != PAD] - 1] = True
    device = _device(cfg.device)
    model.to(device)
    windows = Windows(*(t.to(device) for t in (windows.items, windows.kinds, windows.targets, windows.weights)))
    events = _validation_events(model, train, val, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epoch, stale, history = -1.0, None, 0, 0, []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        loss = _train_epoch(model, windows, opt, cfg.batch_size, gen)
        recall = _validate(model, events, cfg.eval_k) if events is not None else math.nan
        history.append({"epoch": epoch, "loss": loss, f"val_recall@{cfg.eval_k}": recall})
        if progress:
            print(f"sasrec epoch {epoch:3d} loss {loss:.4f} val R@{cfg.eval_k} {recall:.4f} "
                  f"({time.perf_counter() - started:.1f}s)", file=sys.stderr)
        if events is None or recall > best:
            best, best_epoch, stale = recall, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.to("cpu")
    model.manifest = _manifest(model, data_hash, best, best_epoch, history,
                               time.perf_counter() - started, len(windows.items), events)
    return model.eval()


def _train_epoch(model: SASRec, w: Windows, opt: torch.optim.Optimizer, batch_size: int,
                 gen: torch.Generator) -> float:
    """One pass over shuffled windows; returns the weighted mean cross-entropy."""
    model.train()
    total, weight = 0.0, 0.0
    for batch in torch.randperm(len(w.items), generator=gen).split(batch_size):
        batch = batch.to(w.items.device)
        hidden = model(w.items[batch], w.kinds[batch])
        tgt, wt = w.targets[batch], w.weights[batch]
        live = tgt != PAD
        ce = F.cross_entropy(model.logits(hidden[live]), tgt[live] - 1, reduction="none")
        loss = (ce * wt[live]).sum() / wt[live].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float((ce.detach() * wt[live]).sum())
        weight += float(wt[live].sum())
    return total / max(weight, 1e-9)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _validation_events(model: SASRec, train: pd.DataFrame, val: pd.DataFrame | None,
                       cfg: SASRecConfig) -> NextItemEvents | None:
    if val is None or not len(val):
        return None
    events = next_item_events(model.item_ids, train, val, target_kinds=cfg.eval_kinds,
                              max_history=cfg.max_len, max_events=cfg.max_eval_events,
                              seed=cfg.seed)
    return events if len(events) else None


def _validate(model: SASRec, events: NextItemEvents, k: int) -> float:
    """Full-catalog Recall@k of u · e_i on the validation events."""
    scores = model.user_states(events.histories, events.kinds) @ model.item_embeddings().T
    return recall_at_k(target_ranks(scores, events.targets), k)


def _manifest(model: SASRec, data_hash: str, best: float, best_epoch: int,
              history: list[dict[str, float]], seconds: float, n_windows: int,
              events: NextItemEvents | None) -> dict[str, object]:
    """What is recorded with the model; the version is a hash of weights, data and config."""
    h = hashlib.sha256(data_hash.encode())
    h.update(json.dumps(asdict(model.cfg), sort_keys=True).encode())
    for v in model.state_dict().values():
        h.update(v.cpu().numpy().tobytes())
    return {
        "model": "sasrec",
        "model_version": f"sasrec-{h.hexdigest()[:12]}",
        "data_hash": data_hash,
        "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "n_items": len(model.item_ids),
        "n_known_items": int(model.seen.sum()),
        "n_windows": n_windows,
        "n_val_events": len(events) if events is not None else 0,
        "best_epoch": best_epoch,
        f"val_recall@{model.cfg.eval_k}": None if math.isnan(best) else best,
        "train_seconds": round(seconds, 2),
        "history": history,
    }
