"""The word-start tokens of a tokenizer: the set B of the beginning-of-word correction (Pimentel & Meister 2024).

A word's tokens under the tokenizers almost every model uses (GPT-2's byte-level `Ġ`, SentencePiece's `▁`)
carry the space *before* the word, so they do not say that the word ended: the token after it must start
another word, or the text must end. B holds the vocabulary entries whose text begins with whitespace (the
space mark, and the newline or tab bytes, which end a whitespace-separated word as well), plus added tokens
that strip the space to their left. Found from the tokenizer itself; no model needed.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
METASPACE = "\u2581"  # ▁, SentencePiece's space


@dataclass(frozen=True)
class WordStarts:
    """A tokenizer's word-start tokens (`ids`, sorted; None where no correction applies) and what was done, in words.

    `end_id` is the token that counts as a word end after the last token of a text: the EOS where the
    tokenizer has one, else one of B itself (B alone then).
    """

    ids: np.ndarray | None
    correction: str
    end_id: int | None = None

    def mask(self, vocab_size: int) -> np.ndarray:
        """Whether each of `vocab_size` token ids is a word-start token (all False where none are)."""
        out = np.zeros(vocab_size, dtype=bool)
        if self.ids is not None:
            out[self.ids[self.ids < vocab_size]] = True
        return out


@cache
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's map from the printable character standing for each byte back to the byte (GPT-2's)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _byte_level_text(token: str) -> str:
    """A byte-level token's text (its bytes as UTF-8; a split character as U+FFFD)."""
    decoder = _byte_decoder()
    if any(c not in decoder for c in token):
        return token  # an added token, written as it is
    return bytes(decoder[c] for c in token).decode("utf-8", errors="replace")


def _metaspace_text(token: str) -> str:
    """A SentencePiece token's text: ▁ as the space it stands for, a byte-fallback token <0xNN> as its byte."""
    byte = _BYTE_FALLBACK.match(token)
    if byte:
        return bytes([int(byte.group(1), 16)]).decode("utf-8", errors="replace")
    return token.replace(METASPACE, " ")


def _steps(spec: dict | None) -> list[dict]:
    """A tokenizer component's steps: itself, or the members of a Sequence."""
    if not spec:
        return []
    inner = spec.get("decoders") or spec.get("pretokenizers") or spec.get("normalizers")
    return [step for part in inner for step in _steps(part)] if inner else [spec]


def _scheme(spec: dict) -> str:
    """How the tokenizer writes spaces into tokens: "byte-level", "metaspace", or "plain" (as they are)."""
    steps = [s for key in ("normalizer", "pre_tokenizer", "decoder") for s in _steps(spec.get(key))]
    kinds = {s.get("type") for s in steps}
    if "ByteLevel" in kinds:
        return "byte-level"
    replaces = (s for s in steps if s.get("type") == "Replace")
    if "Metaspace" in kinds or any(METASPACE in json.dumps(s, ensure_ascii=False) for s in replaces):
        return "metaspace"
    return "plain"


def word_starts(tokenizer: object, vocab_size: int) -> WordStarts:
    """The word-start tokens among the first `vocab_size` ids of a fast tokenizer, or why there are none."""
    try:
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
    except (AttributeError, ValueError):
        return WordStarts(None, "none: the tokenizer is not a fast (tokenizers) one, whose vocabulary can be read")
    model = spec.get("model") or {}
    suffix = model.get("end_of_word_suffix")
    if suffix:
        return WordStarts(
            None, f"none needed: the tokenizer marks word ends ({suffix!r}), so a word's tokens say where it ends"
        )
    scheme = _scheme(spec)
    text_of = {"byte-level": _byte_level_text, "metaspace": _metaspace_text, "plain": str}[scheme]
    added = getattr(tokenizer, "added_tokens_decoder", {})
    ids = {i for token, i in tokenizer.get_vocab().items() if i not in added and text_of(token)[:1].isspace()}
    # An added token is matched on the raw text: its content is its text (GPT-NeoX adds runs of spaces).
    ids |= {i for i, token in added.items() if token.lstrip or str(token.content)[:1].isspace()}
    ids = np.array(sorted(i for i in ids if i < vocab_size), dtype=np.int64)
    if not len(ids):
        return WordStarts(None, "none: no vocabulary entry begins with whitespace (no word-start mark)")
    mark = {"byte-level": "byte-level Ġ (space), Ċ (newline), …", "metaspace": f"{METASPACE} (space) and whitespace"}
    found = (
        f"{len(ids):,} word-start tokens whose text begins with whitespace ({mark.get(scheme, 'whitespace')}), "
        "added tokens that strip the space to their left"
    )
    return _correction(tokenizer, ids, vocab_size, found)


def given_word_starts(tokenizer: object, ids: object, vocab_size: int) -> WordStarts:
    """The word-start tokens a caller names (token `ids`), the tokenizer's EOS ending a text as for its own."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    return _correction(tokenizer, ids, vocab_size, f"{len(ids):,} word-start tokens given by the caller")


def _correction(tokenizer: object, ids: np.ndarray, vocab_size: int, found: str) -> WordStarts:
    """The correction with word-start tokens `ids` (described by `found`) and the tokenizer's EOS at a text's end."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos < vocab_size:
        end = f"EOS {tokenizer.convert_ids_to_tokens(eos)} (id {eos}) also ends a word after a text's last token"
    else:
        eos, end = int(ids[0]), "no EOS: B alone after a text's last token"
    return WordStarts(ids, f"beginning-of-word (Pimentel & Meister 2024): {found}; {end}", int(eos))
