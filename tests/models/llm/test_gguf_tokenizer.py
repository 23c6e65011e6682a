"""Gemma's tokenizer rebuilt from GGUF fields: merges follow the pieces' scores, <bos> is added."""

from __future__ import annotations

from models.llm.gguf_tokenizer import (
    BYTE,
    CONTROL,
    NORMAL,
    USER_DEFINED,
    as_vocab_piece,
    gemma_tokenizer,
    needs_own_tokenizer,
    spm_merges,
)

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def vocabulary(pieces: list[tuple[str, float, int]]) -> tuple[list[str], list[float], list[int]]:
    """A GGUF-style vocabulary: control tokens, the 256 byte pieces, then ``pieces``."""
    rows = [(t, -1000.0, CONTROL) for t in SPECIAL] + [(t, 0.0, BYTE) for t in BYTES] + pieces
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def tokenizer_for(pieces: list[tuple[str, float, int]]):
    tokens, scores, types = vocabulary(pieces)
    return gemma_tokenizer(tokens, scores, types, bos_id=2, eos_id=1, pad_id=0, unk_id=3)


CHARS = [(c, -100.0, NORMAL) for c in ("▁", "a", "b", "c")]


def test_words_are_whole_pieces_not_characters() -> None:
    tok = tokenizer_for(CHARS + [("ab", -1.0, NORMAL), ("▁ab", -2.0, NORMAL), ("abc", -3.0, NORMAL)])
    ids = tok("ab abc")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "ab", "▁ab", "c"]
    assert tok.decode(ids, skip_special_tokens=True) == "ab abc"


def test_a_higher_score_merges_first() -> None:
    tok = tokenizer_for(CHARS + [("ab", -1.0, NORMAL), ("abc", -2.0, NORMAL), ("▁ab", -3.0, NORMAL)])
    assert tok.convert_ids_to_tokens(tok("ab abc")["input_ids"]) == ["<bos>", "ab", "▁", "abc"]


def test_unknown_characters_fall_back_to_bytes_and_round_trip() -> None:
    tok = tokenizer_for(CHARS + [("ab", -1.0, NORMAL), ("  ", 0.0, USER_DEFINED)])
    text = "ab  é\n"
    ids = tok(text)["input_ids"]
    assert "<0xC3>" in tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_and_whitespace_pieces() -> None:
    tok = tokenizer_for(CHARS)
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<bos>", "<eos>", "<pad>", "<unk>")
    assert as_vocab_piece("   ") == "▁▁▁" and as_vocab_piece("a b") == "a b" and as_vocab_piece("\n") == "\n"


def test_control_and_byte_pieces_take_no_part_in_merges() -> None:
    tokens, scores, types = vocabulary(CHARS + [("ab", -1.0, NORMAL)])
    merges = spm_merges(tokens, scores, types)
    assert merges == [("a", "b")]


def test_only_gemma_needs_its_own_tokenizer() -> None:
    assert needs_own_tokenizer("gemma3_text") and needs_own_tokenizer("gemma2")
    assert not needs_own_tokenizer("llama")
