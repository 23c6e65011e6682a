"""The model bundle: everything a recommendation needs, in one folder, under one version.

``stylestream train`` writes it (:func:`models.train.train_bundle`); evaluation, the Ray
Serve deployments, the Milvus index and the stream's fast path all read it, so offline
figures and live answers come from one artifact. Layout::

    bundle.json            manifest: version, data hash, choices made on validation, costs
    items.parquet          the catalog: item_id, title, category, brand, colour, price, in_stock,
                           known (SASRec trained an ID vector), imputed (ID vector imputed)
    sasrec/                the sequential ID model (e_i, user states u)
    llm/merged/            the LoRA-merged causal LM (torch engine)
    llm/onnx/              its ONNX export with a KV cache (ONNX Runtime engine)
    llm/lora/              the LoRA run (adapter + manifest), to adopt on another machine
    encoders/<name>/       each title encoder, exported to ONNX (serving encodes with it)
    vectors/<name>.npy     λ-free mix-up item vectors x_i for that encoder's fusion
    imputers/<name>.npz    text→ID imputer in that encoder's space (for new catalog items)
    validation.json        the validation answers the choices were made on

Loading is lazy and each part is loaded once per :class:`Bundle`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.gate import Gate
from models.mixup import Fusion, IdImputer

MANIFEST = "bundle.json"
FORMAT = 1
ITEMS = "items.parquet"
SASREC_DIR = "sasrec"
LLM_MERGED = "llm/merged"
LLM_ONNX = "llm/onnx"
LLM_LORA = "llm/lora"
VALIDATION = "validation.json"
ENGINES = ("onnx", "torch")


class BundleError(ValueError):
    """A folder that is not a usable model bundle; the message is one readable line."""


def encoder_dir(folder: Path, name: str) -> Path:
    return Path(folder) / "encoders" / name


def vectors_path(folder: Path, name: str) -> Path:
    return Path(folder) / "vectors" / f"{name}.npy"


def imputer_path(folder: Path, name: str) -> Path:
    return Path(folder) / "imputers" / f"{name}.npz"


def bundle_version(parts: dict[str, Any]) -> str:
    """A content version: the same data, models and choices give the same version."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return f"bundle-{digest[:12]}"


class Bundle:
    """A model bundle on disk; parts load on first use."""

    def __init__(self, folder: Path | str, manifest: dict[str, Any]):
        self.folder = Path(folder)
        self.manifest = manifest
        self._parts: dict[str, Any] = {}

    @classmethod
    def load(cls, folder: Path | str) -> Bundle:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise BundleError(f"{folder} is not a model bundle (no {MANIFEST}); build one with "
                              "`stylestream train --dataset DIR --out DIR`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read {path}: {exc}") from None
        if manifest.get("format") != FORMAT:
            raise BundleError(f"{folder}: bundle format {manifest.get('format')!r}, this version "
                              f"reads format {FORMAT}; rebuild it with `stylestream train`")
        bundle = cls(folder, manifest)
        missing = [str(p.relative_to(folder)) for p in bundle.required_files() if not p.exists()]
        if missing:
            raise BundleError(f"{folder}: incomplete bundle, missing {', '.join(missing)}")
        return bundle

    def required_files(self) -> list[Path]:
        files = [self.folder / ITEMS, self.folder / SASREC_DIR, self.folder / LLM_MERGED / "config.json"]
        for name in self.encoders:
            files += [encoder_dir(self.folder, name), vectors_path(self.folder, name)]
        return files

    # -- what the manifest says ------------------------------------------------------------
    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def data_hash(self) -> str:
        return str(self.manifest["dataset"]["data_hash"])

    @property
    def encoders(self) -> list[str]:
        return list(self.manifest["encoders"])

    @property
    def chosen_encoder(self) -> str:
        return str(self.manifest["chosen_encoder"])

    def fusion(self, encoder: str | None = None) -> Fusion:
        """The LLM path's fusion, chosen on the validation answers."""
        return Fusion.from_json(self.manifest["encoders"][encoder or self.chosen_encoder]["fusion"])

    def fast_fusion(self, encoder: str | None = None) -> Fusion:
        """The fast path's fusion (the last-title mix-up), chosen on validation; a bundle made
        before it had one gets its LLM fusion with the last title as the whole text query."""
        choice = self.manifest["encoders"][encoder or self.chosen_encoder]
        if "fast_fusion" in choice:
            return Fusion.from_json(choice["fast_fusion"])
        return self.fusion(encoder).with_anchor(1.0)

    def gate(self) -> Gate:
        """The gate before the LLM path; a bundle made before it had one sends every event."""
        data = self.manifest.get("gate")
        return Gate.from_json(data) if data else Gate.always("open")

    @property
    def max_history(self) -> int:
        return int(self.manifest["prompt"]["max_history"])

    @property
    def max_new_tokens(self) -> int:
        return int(self.manifest["prompt"]["max_new_tokens"])

    def require_data(self, data_hash: str) -> None:
        """Refuse to evaluate or serve a bundle against a data set it was not trained on."""
        if data_hash != self.data_hash:
            raise BundleError(f"bundle {self.folder} was trained on data {self.data_hash}, "
                              f"not on this data set ({data_hash})")

    # -- parts ----------------------------------------------------------------------------
    def _part(self, key: str, load: Any) -> Any:
        if key not in self._parts:
            self._parts[key] = load()
        return self._parts[key]

    def items(self) -> pd.DataFrame:
        return self._part("items", lambda: pd.read_parquet(self.folder / ITEMS))

    def sasrec(self) -> Any:
        from models.sasrec import SASRec

        return self._part("sasrec", lambda: SASRec.load(self.folder / SASREC_DIR))

    def title_encoder(self, name: str | None = None) -> Any:
        from models.title_encoder_onnx import OnnxTitleEncoder

        name = name or self.chosen_encoder
        return self._part(f"encoder/{name}", lambda: OnnxTitleEncoder(encoder_dir(self.folder, name)))

    def item_vectors(self, name: str | None = None) -> np.ndarray:
        name = name or self.chosen_encoder
        return self._part(f"vectors/{name}", lambda: np.load(vectors_path(self.folder, name)))

    def imputer(self, name: str | None = None) -> IdImputer:
        return IdImputer.load(imputer_path(self.folder, name or self.chosen_encoder))

    def generator(self, engine: str = "onnx", device: str = "auto", threads: int = 0) -> Any:
        return llm_generator(self.folder, engine, device, threads)

    def validation(self) -> dict[str, Any]:
        path = self.folder / VALIDATION
        return json.loads(path.read_text()) if path.is_file() else {}


def llm_generator(folder: Path, engine: str = "onnx", device: str = "auto", threads: int = 0) -> Any:
    """The bundle's tuned LLM ready to generate: ONNX Runtime (its CUDA provider first
    unless ``device`` is "cpu") or torch; torch when the bundle has no ONNX export.
    ``threads`` caps the CPU threads it uses (0: all cores)."""
    if engine not in ENGINES:
        raise BundleError(f"engine must be onnx or torch, not {engine!r}")
    onnx_dir = Path(folder) / LLM_ONNX
    if engine == "onnx" and (onnx_dir / "model.onnx").is_file():
        from models.llm.onnx_export import OnnxGenerator

        return OnnxGenerator(onnx_dir, providers=["CPUExecutionProvider"] if device == "cpu" else None,
                             threads=threads)
    from models.llm.generate import Generator

    if threads:
        import torch

        torch.set_num_threads(threads)
    return Generator(Path(folder) / LLM_MERGED, device=device)
