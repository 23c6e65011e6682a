"""Title encoders on ONNX Runtime: same token ids, same embeddings and same rankings as torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.title_encoder import LSTMConfig, LSTMTitleEncoder, MiniLMTitleEncoder, build_vocabulary
from models.title_encoder_onnx import ONNX_FILE, OnnxTitleEncoder, export_title_encoder

ATOL = 1e-4  # fp32 torch vs ONNX Runtime; measured ~1e-7 for both variants on CPU

TRAIN_TITLES = ["red linen dress", "blue wool coat", "black leather boots", "white cotton shirt",
                "green silk scarf", "red leather skirt", "blue denim jacket", "black wool scarf"]
CATALOG = [*TRAIN_TITLES, "pink cotton dress", "white leather trainers", "grey wool jumper",
           "navy silk blouse"]
# different lengths, an empty string, blank space, unknown words, punctuation and accents,
# and one title longer than both encoders' token limits (32 words, 64 word pieces)
BATCH = ["red dress", "", "   ", "qwzx unseen fabric words", "Crème brûlée silk scarf — sale!",
         "blue", "black leather boots " * 25, "white cotton shirt with long sleeves and pockets"]
QUERIES = ["red dress", "warm winter coat", "something leather", "zzz unknown", ""]


def assert_same_ranking(torch_enc, onnx_enc: OnnxTitleEncoder) -> None:
    """Cosine ranking of the catalog for every query is identical."""
    ref = torch_enc.encode(QUERIES) @ torch_enc.encode(CATALOG).T
    ours = onnx_enc.encode(QUERIES) @ onnx_enc.encode(CATALOG).T
    np.testing.assert_array_equal(np.argsort(-ours, axis=1, kind="stable"),
                                  np.argsort(-ref, axis=1, kind="stable"))


# -- LSTM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm(tmp_path_factory) -> tuple[LSTMTitleEncoder, Path]:
    torch.manual_seed(0)
    enc = LSTMTitleEncoder(build_vocabulary(TRAIN_TITLES), LSTMConfig(word_dim=16, hidden=16, dim=16))
    return enc, export_title_encoder(enc, tmp_path_factory.mktemp("lstm-onnx"))


def test_lstm_export_writes_graph_vocabulary_and_manifest(lstm) -> None:
    enc, folder = lstm
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / ONNX_FILE).is_file()
    assert (folder / "vocab.txt").read_text().split("\n")[:-1] == enc.vocab
    assert manifest["variant"] == "lstm" and manifest["dim"] == 16 and manifest["opset"] == 17
    assert 0 <= manifest["max_abs_diff"] <= ATOL


def test_lstm_onnx_matches_torch(lstm) -> None:
    enc, folder = lstm
    onnx_enc = OnnxTitleEncoder(folder, providers=["CPUExecutionProvider"])
    ids, mask = onnx_enc.token_ids(BATCH)
    np.testing.assert_array_equal(ids, enc.token_ids(BATCH).numpy())
    np.testing.assert_array_equal(mask, ids != 0)
    ours, ref = onnx_enc.encode(BATCH), enc.encode(BATCH)
    assert ours.shape == (len(BATCH), 16) and ours.dtype == np.float32 and onnx_enc.dim == 16
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # several batches (dynamic batch and length axes), a single row, nothing
    np.testing.assert_allclose(onnx_enc.encode(BATCH, batch_size=3), enc.encode(BATCH, batch_size=3),
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(onnx_enc.encode(["blue"]), enc.encode(["blue"]), atol=ATOL, rtol=0)
    assert onnx_enc.encode([]).shape == (0, 16)


def test_lstm_cosine_ranking_is_identical(lstm) -> None:
    enc, folder = lstm
    assert_same_ranking(enc, OnnxTitleEncoder(folder))


def test_default_providers_end_with_cpu(lstm) -> None:
    onnx_enc = OnnxTitleEncoder(lstm[1])
    assert onnx_enc.providers[-1] == "CPUExecutionProvider"


def test_export_refuses_other_objects(tmp_path) -> None:
    with pytest.raises(TypeError):
        export_title_encoder(object(), tmp_path)  # type: ignore[arg-type]


# -- MiniLM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> tuple[MiniLMTitleEncoder, Path]:
    enc = MiniLMTitleEncoder.pretrained()
    attention = enc.model[0].auto_model.config._attn_implementation
    folder = export_title_encoder(enc, tmp_path_factory.mktemp("minilm-onnx"))
    assert enc.model[0].auto_model.config._attn_implementation == attention  # restored after export
    return enc, folder


def test_minilm_onnx_matches_torch(minilm) -> None:
    enc, folder = minilm
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["variant"] == "minilm" and manifest["dim"] == 384 and manifest["opset"] == 17
    assert manifest["max_seq_length"] == 64 and 0 <= manifest["max_abs_diff"] <= ATOL
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    onnx_enc = OnnxTitleEncoder(folder, providers=["CPUExecutionProvider"])
    ids, mask = onnx_enc.token_ids(BATCH)
    feats = enc.model.preprocess(BATCH)
    assert ids.shape[1] == 64  # the long title is truncated like sentence-transformers does
    np.testing.assert_array_equal(ids, feats["input_ids"].numpy())
    np.testing.assert_array_equal(mask, feats["attention_mask"].numpy())
    ours, ref = onnx_enc.encode(BATCH), enc.encode(BATCH)
    assert ours.shape == (len(BATCH), 384) and ours.dtype == np.float32 and onnx_enc.dim == 384
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(onnx_enc.encode(["blue"]), enc.encode(["blue"]), atol=ATOL, rtol=0)
    np.testing.assert_allclose(onnx_enc.encode(BATCH, batch_size=3), ref, atol=ATOL, rtol=0)
    assert onnx_enc.encode([]).shape == (0, 384)


def test_minilm_cosine_ranking_is_identical(minilm) -> None:
    enc, folder = minilm
    assert_same_ranking(enc, OnnxTitleEncoder(folder))


def test_lstm_vector_does_not_depend_on_its_batch():
    """A title embeds the same alone or beside longer titles (index time vs query time)."""
    from models.title_encoder import LSTMTitleEncoder, build_vocabulary

    titles = ["red dress", "navy slim wool blazer with gold buttons and a long name", "black boots"]
    enc = LSTMTitleEncoder(build_vocabulary(titles))
    alone = enc.encode(["red dress"])
    mixed = enc.encode(titles)
    trained_path = enc(["red dress", titles[1]]).detach().numpy()[0]  # the padded training forward
    assert abs(alone[0] - mixed[0]).max() < 1e-6
    assert abs(alone[0] - trained_path).max() < 1e-5
