"""Gemma's tokenizer rebuilt from a GGUF file, because transformers' own conversion loses it.

transformers 5.17 turns a Gemma GGUF's SentencePiece vocabulary into a BPE tokenizer with no
merges: every word falls apart into single characters, no ``<bos>`` is added, and the model
answers "1 1 1 …".  The GGUF holds all that is needed to do it right: the pieces, their scores
(SentencePiece's merge priority: a higher score merges first) and their types.  The merges are
recovered the way transformers recovers them from a ``.model`` file: every split of a piece into
two pieces of the vocabulary, ordered by the piece's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# llama.cpp's token types (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6


def needs_own_tokenizer(model_type: str) -> bool:
    """True for the model types (``config.model_type``) whose GGUF tokenizer transformers
    converts wrongly."""
    return model_type.startswith("gemma")


def as_vocab_piece(token: str) -> str:
    """Whitespace-only pieces (``"  "``) as the tokenizer sees them after its normaliser (``"▁▁"``)."""
    if token and not token.strip(" ") and " " in token:
        return "▁" * len(token)
    return token


def spm_merges(tokens: Sequence[str], scores: Sequence[float],
               types: Sequence[int]) -> list[tuple[str, str]]:
    """BPE merges recovered from a SentencePiece vocabulary: each piece that two others join
    into, highest score first (control and byte pieces take no part)."""
    from transformers.convert_slow_tokenizer import generate_merges

    vocab = {as_vocab_piece(t): i for i, t in enumerate(tokens)}
    mergeable = {as_vocab_piece(t): s for t, s, k in zip(tokens, scores, types, strict=True)
                 if k in (NORMAL, USER_DEFINED)}
    return generate_merges(vocab, mergeable)


def gemma_tokenizer(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int],
                    bos_id: int, eos_id: int, pad_id: int, unk_id: int) -> Any:
    """A ``GemmaTokenizer`` (BPE with byte fallback, spaces as ``▁``) that adds ``<bos>``."""
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    vocab = {as_vocab_piece(t): i for i, t in enumerate(tokens)}
    return GemmaTokenizer(vocab=vocab, merges=spm_merges(tokens, scores, types),
                          bos_token=tokens[bos_id], eos_token=tokens[eos_id],
                          pad_token=tokens[pad_id], unk_token=tokens[unk_id],
                          mask_token=None, add_bos_token=True, add_eos_token=False)


def gemma_tokenizer_from_gguf(gguf_file: Path) -> Any:
    """:func:`gemma_tokenizer` from the vocabulary stored in ``gguf_file``."""
    import gguf

    fields = gguf.GGUFReader(str(gguf_file)).fields

    def value(key: str) -> Any:
        return fields[key].contents()

    return gemma_tokenizer(value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores"),
                           value("tokenizer.ggml.token_type"),
                           bos_id=int(value("tokenizer.ggml.bos_token_id")),
                           eos_id=int(value("tokenizer.ggml.eos_token_id")),
                           pad_id=int(value("tokenizer.ggml.padding_token_id")),
                           unk_id=int(value("tokenizer.ggml.unknown_token_id")))
