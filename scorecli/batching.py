"""Tokenise texts with offsets, apply the BOS policy and truncation, sort by length and pack batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scorecli.errors import ModelError, UsageError


@dataclass
class Encoded:
    """A text as the model sees it: `ids` is the fed sequence, of which `ids[n_prefix:]` are text tokens."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    n_prefix: int
    truncated: bool

    @property
    def n_scored(self) -> int:
        """How many of the sequence's tokens get a score (every token that has a predecessor)."""
        return max(len(self.ids) - 1, 0)

    @property
    def first_scored(self) -> int:
        """Index, among the text tokens, of the first scored one (0 with a BOS, else 1)."""
        return 1 - self.n_prefix


def check_limits(batch_tokens: int | None, max_length: int | None) -> None:
    """Reject a token budget or length limit that cannot work (None means the default)."""
    if batch_tokens is not None and batch_tokens < 1:
        raise UsageError(f"--batch-tokens must be at least 1, not {batch_tokens}")
    if max_length is not None and max_length < 2:
        raise UsageError(f"--max-length must be at least 2, not {max_length}")


def bos_token_id(tokenizer: object) -> int:
    """The token prepended as context: the tokenizer's BOS, else its EOS (as GPT-2 uses)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ModelError("the tokenizer has neither a BOS nor an EOS token to prepend: use --no-bos")


class Encoder:
    """Turn texts into model sequences under one BOS policy and length limit."""

    def __init__(self, tokenizer: object, bos: bool = True, max_length: int | None = None) -> None:
        """Prepare to encode with `tokenizer`; `max_length` bounds the fed sequence, BOS included."""
        self.tokenizer = tokenizer
        self.bos_id = bos_token_id(tokenizer) if bos else None
        self.max_length = max_length

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Tokenise a list of texts in one call, as plain text: no special tokens are added or recognised."""
        # split_special_tokens: a text that contains "<s>" or "<|im_start|>" is scored as the characters it
        # holds, never as the special token (which would double the BOS or smuggle in control tokens).
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )
        prefix = [] if self.bos_id is None else [self.bos_id]
        limit = None if self.max_length is None else self.max_length - len(prefix)
        out = []
        for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"]):
            truncated = limit is not None and len(ids) > limit
            if truncated:
                ids, offsets = ids[:limit], offsets[:limit]
            out.append(Encoded(prefix + list(ids), [tuple(o) for o in offsets], len(prefix), truncated))
        return out


class TokenTexts:
    """Decode single token ids to text, caching each id's text (split UTF-8 characters decode to U+FFFD)."""

    def __init__(self, tokenizer: object) -> None:
        """Decode with `tokenizer`."""
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        """The text of each token id."""
        cache = self._cache
        missing = [i for i in set(ids) if i not in cache]
        for i in missing:
            cache[i] = self.tokenizer.decode([i])
        return [cache[i] for i in ids]


def pack(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group indices into batches, longest first, so that rows × longest row ≤ batch_tokens (≥ 1 row each)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def collate(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad sequences into (input_ids, labels, attention_mask), labels being the next tokens."""
    width = max(len(s) for s in sequences) - 1
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq) - 1
        input_ids[row, :n] = torch.tensor(seq[:-1])
        labels[row, :n] = torch.tensor(seq[1:])
        mask[row, :n] = 1
    return input_ids, labels, mask
