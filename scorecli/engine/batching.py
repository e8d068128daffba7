"""Tokenise texts with offsets, mark response tokens, apply the BOS policy, cut windows, sort and pack batches.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from scorecli.base.errors import ModelError
from scorecli.data.words import joined
from scorecli.inputs.records import Spans

# Texts longer than this many characters are tokenised in pieces of about this size (see Encoder._pieces),
# so that tokenising a huge text never holds more than a piece's worth of the tokenizer's own structures.
PIECE_CHARS = 1 << 16
# Tokens are kept only where at least this much of the piece follows them (half a piece, if less): far more
# than any special token or ordinary word, and the overlap check below catches the rest.
LOOKAHEAD_CHARS = 4096
# Unicode's White_Space characters (Rust's char::is_whitespace, which the tokenizers library trims offsets by):
# Python's str.isspace also counts the separators U+001C to U+001F, which no tokenizer trims.
WHITESPACE = frozenset(chr(c) for c in range(0x3001) if chr(c).isspace()) - frozenset("\x1c\x1d\x1e\x1f")

_NO_POSITIONS = np.zeros(0, dtype=np.int64)


@dataclass
class Encoded:
    """A text as the model sees it: `ids` is the whole sequence, of which `ids[n_prefix:]` are text tokens.

    `response` marks, for each text token, whether it lies in a response span (every token of a plain text
    does); `targets` marks, for each position of `ids`, whether its token gets a log-probability.
    `unscored` counts the characters of the scored text (see `unscored_chars`) that no token holds.

    Where the encoder was asked for the rows after each stretch of response tokens, `after` holds the position
    in `ids` of each stretch's next token, whose row is the predictive distribution after the stretch (-1 where
    unknown: a truncated text's last stretch). A stretch that ends the text is followed by one more id, the
    end token, fed never but a label: its row is the distribution after the whole text. `extra` are the
    positions among `after` that are targets only for that row, not token rows.
    """

    ids: np.ndarray
    offsets: np.ndarray
    n_prefix: int
    truncated: bool
    response: np.ndarray
    targets: np.ndarray
    unscored: int = 0
    after: np.ndarray = field(default_factory=lambda: _NO_POSITIONS)
    extra: np.ndarray = field(default_factory=lambda: _NO_POSITIONS)

    @cached_property
    def n_scored(self) -> int:
        """How many rows the sequence has: its tokens that get a log-probability, and its rows after stretches."""
        # Counted once: a huge text's targets are millions long, and each of its windows asks.
        return int(self.targets.sum())

    @property
    def text_targets(self) -> np.ndarray:
        """Whether each of the text's tokens is a token row (rows after stretches aside): a view where it can be."""
        end = self.n_prefix + len(self.offsets)
        targets = self.targets[self.n_prefix : end]
        inside = self.extra[self.extra < end]
        if len(inside):
            targets = targets.copy()
            targets[inside - self.n_prefix] = False
        return targets


@dataclass(frozen=True)
class Window:
    """A slice `ids[begin:end]` fed to the model, scoring the targets at positions in [first, end)."""

    doc: int
    begin: int
    end: int
    first: int


def default_stride(max_length: int) -> int:
    """Half the window: each token after the first window is scored with at least that much context."""
    return max(1, max_length // 2)


def windows(doc: int, n: int, max_length: int | None, stride: int) -> list[Window]:
    """Windows over a sequence of n tokens so that each of positions 1..n-1 is a target exactly once.

    As in Hugging Face's "perplexity of fixed-length models": windows start at 0, stride, 2·stride, …,
    span max_length positions, and each scores the targets no earlier window scored.
    """
    if max_length is None or n <= max_length:
        return [Window(doc, 0, n, 1)]
    out, begin, first = [], 0, 1
    while True:
        end = min(begin + max_length, n)
        out.append(Window(doc, begin, end, first))
        if end == n:
            return out
        begin, first = begin + stride, end


def bos_token_id(tokenizer: object) -> int:
    """The token prepended as context: the tokenizer's BOS, else its EOS (as GPT-2 uses)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ModelError("the tokenizer has neither a BOS nor an EOS token to prepend: pass `bos=False`")


def partition_offsets(offsets: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Character offsets [n, 2] made to partition the text the tokens cover: joined in order, they rebuild it.

    Byte-level tokenizers give every token that holds a byte of a character the whole character's span, so
    the tokens of one split character overlap. Here each token ends where the next one starts, if that is
    sooner (a token that only starts a character gets an empty span at its position, the token that
    completes it gets the character), and starts where the one before it ended (a gap, such as a space the
    tokenizer's offsets trimmed, goes to the token that follows it). With `in_place`, `offsets` is changed and
    returned: a huge text's offsets are not copied.
    """
    out = offsets if in_place else offsets.copy()
    if len(out) < 2:
        return out
    # The ends change first, from the starts as the tokenizer gave them; the starts change last.
    ends = out[:, 1]
    np.minimum(ends[:-1], out[1:, 0], out=ends[:-1])
    np.maximum(ends, out[0, 0], out=ends)
    np.maximum.accumulate(ends, out=ends)
    out[1:, 0] = ends[:-1]
    return out


def unscored_chars(text: str, offsets: np.ndarray, spans: Spans | None, end: int, trimmed: bool = False) -> int:
    """How many characters of text[:end] in `spans` (all of it where None) no token's offsets [n, 2] cover.

    These are the characters a tokenizer drops (one with no token for a character, or a normalizer that
    removes it): no token holds them, so they are never scored. With `trimmed` (a tokenizer whose offsets
    leave out the spaces its tokens hold), a whitespace character outside every offset is taken as held.
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    if len(starts) > 1 and (starts[1:] < starts[:-1]).any():
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
    # A gap runs from where the tokens before it reach to where the next one starts (or the scored text ends).
    reach = np.maximum.accumulate(ends) if len(ends) else ends
    after = (np.flatnonzero(starts[1:] > reach[:-1]) + 1).tolist()
    gaps = [(int(reach[k - 1]), int(starts[k])) for k in after]
    if len(starts) and starts[0] > 0:
        gaps.insert(0, (0, int(starts[0])))
    gaps.append((int(reach[-1]) if len(reach) else 0, end))
    scored = ((0, end),) if spans is None else spans
    count = 0
    for a, b in gaps:
        for start, stop in scored:
            lo, hi = max(a, start), min(b, stop, end)
            if hi > lo:
                count += sum(c not in WHITESPACE for c in text[lo:hi]) if trimmed else hi - lo
    return count


def trims_offsets(tokenizer: object) -> bool:
    """Whether the tokenizer's offsets leave out spaces its tokens hold (a post-processor with trim_offsets)."""
    processor = getattr(getattr(tokenizer, "backend_tokenizer", None), "post_processor", None)
    if processor is None:
        return False
    try:
        config = json.loads(processor.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False

    def trims(node: object) -> bool:
        if isinstance(node, dict):
            return node.get("trim_offsets") is True or any(trims(v) for v in node.values())
        return isinstance(node, list) and any(trims(v) for v in node)

    return trims(config)


def response_mask(offsets: np.ndarray, spans: Spans | None) -> np.ndarray:
    """Whether each token (by its character offsets) overlaps a response span; all True where spans is None."""
    if spans is None:
        return np.ones(len(offsets), dtype=bool)
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        # A token that straddles a span's boundary counts as response: it holds response characters.
        mask |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
    return mask


class Encoder:
    """Turn texts into model sequences under one BOS policy, length limit and choice of scored tokens."""

    def __init__(
        self,
        tokenizer: object,
        bos: bool = True,
        max_length: int | None = None,
        truncate: bool = False,
        all_tokens: bool = False,
        piece_chars: int = PIECE_CHARS,
        end_id: int | None = None,
    ) -> None:
        """Prepare to encode with `tokenizer`; `max_length` bounds the fed sequence, BOS included.

        Texts longer than `piece_chars` characters are tokenised in pieces, to the very same tokens. With
        `end_id`, each sequence also gets the rows after its stretches of response tokens (Encoded.after),
        `end_id` being the label after the text's last token.
        """
        self.tokenizer = tokenizer
        self.end_id = end_id
        self.piece_chars = piece_chars
        self.trimmed = trims_offsets(tokenizer)
        self.bos_id = bos_token_id(tokenizer) if bos else None
        self.max_length = max_length
        self.truncate = truncate
        self.all_tokens = all_tokens

    def encode(
        self, texts: Sequence[str], spans: Sequence[Spans | None] | None = None, chat: bool = False
    ) -> list[Encoded]:
        """Tokenise texts in one call (`spans`: each text's response spans, None to score all of it).

        Plain texts are tokenised as plain text, rendered chats with their control tokens.
        """
        tokens: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(texts)
        short = [i for i, text in enumerate(texts) if len(text) <= self.piece_chars]
        if short:
            tokenised = self._tokenise([texts[i] for i in short], chat)
            for i, ids, offsets in zip(short, tokenised["input_ids"], tokenised["offset_mapping"]):
                tokens[i] = np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int32).reshape(-1, 2)
        # Truncation needs only the tokens that fit, and one more to tell that the text was cut.
        need = self.max_length + 1 if self.truncate and self.max_length is not None else None
        for i, text in enumerate(texts):
            if tokens[i] is None:
                tokens[i] = self._pieces(text, chat, need)
        rows = zip(texts, tokens, spans or [None] * len(texts))
        return [self._sequence(text, ids, offsets, text_spans) for text, (ids, offsets), text_spans in rows]

    def _tokenise(self, texts: list[str], chat: bool) -> dict:
        """The tokenizer's ids and character offsets of each text, special tokens as the text kind wants."""
        # split_special_tokens: a plain text that contains "<s>" or "<|im_start|>" is scored as the characters
        # it holds, never as the special token (which would double the BOS or smuggle in control tokens). A
        # rendered chat is the opposite: its template's markers are the control tokens the model was tuned on.
        return self.tokenizer(
            texts,
            add_special_tokens=False,
            split_special_tokens=not chat,
            return_offsets_mapping=True,
            return_attention_mask=False,
        )

    def _piece(self, text: str, start: int, size: int, chat: bool) -> tuple[np.ndarray, np.ndarray]:
        """Ids and offsets (in `text`) of the tokens of text[start : start + size], tokenised on its own."""
        tokenised = self._tokenise([text[start : start + size]], chat)
        # int32 (ids and character offsets both fit): a huge text's tokens take half the memory of int64.
        offsets = np.asarray(tokenised["offset_mapping"][0], dtype=np.int32).reshape(-1, 2) + start
        return np.asarray(tokenised["input_ids"][0], dtype=np.int32), offsets

    def _pieces(self, text: str, chat: bool, need: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The tokens of a long text, the same as tokenising it whole, from pieces of about `piece_chars`.

        Only tokens followed by at least a lookahead's worth of the piece are kept, and only where the next
        piece, begun at a token boundary there, tokenises the overlap between them the same way: so tokens
        kept never depend on where a piece was cut. Where no boundary agrees, the piece grows (at worst to
        the rest of the text, which is then tokenised whole). With `need`, stops once that many are known.
        """
        kept_ids: list[np.ndarray] = []
        kept_offsets: list[np.ndarray] = []
        start, size, kept = 0, self.piece_chars, 0
        piece = self._piece(text, start, size, chat)
        while start + size < len(text):
            if need is not None and kept >= need:
                return joined(kept_ids), joined(kept_offsets)
            lookahead = min(size // 2, LOOKAHEAD_CHARS)
            cut = _boundary(piece[1], start + size - lookahead)
            at = int(piece[1][cut - 1, 1]) if cut is not None else start
            if at > start:
                following = self._piece(text, at, size, chat)
                if _same_tokens(piece, cut, following, start + size - lookahead // 2):
                    kept_ids.append(piece[0][:cut])
                    kept_offsets.append(piece[1][:cut])
                    kept += cut
                    start, piece = at, following
                    continue
            size *= 2
            piece = self._piece(text, start, size, chat)
        kept_ids.append(piece[0])
        kept_offsets.append(piece[1])
        del piece
        return joined(kept_ids), joined(kept_offsets)

    def _sequence(self, text: str, ids: np.ndarray, offsets: np.ndarray, spans: Spans | None) -> Encoded:
        """One text's sequence: BOS prepended unless it already starts with it, truncated where asked."""
        prefix = [] if self.bos_id is None or (len(ids) and ids[0] == self.bos_id) else [self.bos_id]
        truncated = self.truncate and self.max_length is not None and len(prefix) + len(ids) > self.max_length
        if truncated:
            ids, offsets = ids[: self.max_length - len(prefix)], offsets[: self.max_length - len(prefix)]
        # The tokenizer's own offsets decide what is response: a token that holds any byte of a response
        # character counts, even where its partitioned span is empty. They also show the characters no token
        # holds (partitioned, the gaps go to the tokens after them); a truncated text's end is its cut.
        response = response_mask(offsets, spans)
        end = int(offsets[:, 1].max(initial=0)) if truncated else len(text)
        unscored = unscored_chars(text, offsets, spans, end, self.trimmed)
        # The tokenizer's offsets are this text's own (a copy, or the whole text's where truncated): no copy.
        offsets = partition_offsets(offsets, in_place=True)
        n = len(prefix) + len(ids)
        after = _NO_POSITIONS if self.end_id is None else _after_stretches(response, len(prefix), truncated)
        end = [self.end_id] if len(after) and after[-1] == n else []
        targets = np.zeros(n + len(end), dtype=bool)
        targets[len(prefix) : n] = True if self.all_tokens else response
        targets[:1] = False  # the first token of the sequence has no context to be predicted from
        known = after[after >= 0]
        extra = known[~targets[known]]
        targets[extra] = True
        ids = np.concatenate([np.asarray(prefix, ids.dtype), ids, np.asarray(end, ids.dtype)])
        return Encoded(ids, offsets, len(prefix), truncated, response, targets, unscored, after, extra)


def _after_stretches(response: np.ndarray, start: int, truncated: bool) -> np.ndarray:
    """The position after each stretch of response tokens (text tokens from `start` on); -1 where the text was cut."""
    if response.all():  # a plain text: one stretch, the whole of it
        ends = np.array([len(response) - 1] if len(response) else [], dtype=np.int64)
    else:
        ends = np.flatnonzero(response & ~np.append(response[1:], False))
    after = start + ends + 1
    if truncated and len(after) and after[-1] == start + len(response):
        after[-1] = -1  # the text goes on past its last token: what follows is not known
    return after


def _boundary(offsets: np.ndarray, after: int) -> int | None:
    """The first token index k, starting at or after `after`, where no character is shared with token k-1."""
    starts, ends = offsets[1:, 0], offsets[:-1, 1]
    # A character split across byte-level tokens gives both tokens its span: a cut there would repeat it.
    clean = np.flatnonzero((starts >= after) & (starts >= ends))
    return int(clean[0]) + 1 if len(clean) else None


def _same_tokens(piece: tuple[np.ndarray, np.ndarray], cut: int, following: tuple, until: int) -> bool:
    """Whether `piece` from token `cut` and `following` agree on all tokens that end by `until`."""
    ids, offsets = piece[0][cut:], piece[1][cut:]
    n = _ending_by(offsets, until)
    return (
        n > 0
        and n == _ending_by(following[1], until)
        and (np.array_equal(ids[:n], following[0][:n]) and np.array_equal(offsets[:n], following[1][:n]))
    )


def _ending_by(offsets: np.ndarray, until: int) -> int:
    """How many leading tokens end at or before `until`."""
    late = np.flatnonzero(offsets[:, 1] > until)
    return int(late[0]) if len(late) else len(offsets)


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


def collate(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences into (input_ids, labels), labels being the next tokens."""
    width = max(len(s) for s in sequences) - 1
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq) - 1
        input_ids[row, :n] = torch.tensor(seq[:-1])
        labels[row, :n] = torch.tensor(seq[1:])
    return input_ids, labels
