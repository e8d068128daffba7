"""Render chat conversations with the tokenizer's template and find the turns whose tokens are scored.

Layer: engine. It must not import the run folder, the analysis, the executors or the front of scorecli, nor rich,
typer, ray, plotly or lm_eval.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace

from scorecli.base.errors import InputError, ModelError, first_line
from scorecli.inputs.records import CHOICE_ROLE, Record

DEFAULT_ROLES = ("assistant",)


def check_template(tokenizer: object) -> None:
    """Raise ModelError where the tokenizer cannot render conversations."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the model's tokenizer has no chat template, which chats (`messages`) need")


def render_chat(
    tokenizer: object, messages: Sequence[tuple[str, str]], roles: Sequence[str] = DEFAULT_ROLES
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The conversation as the model sees it, and the character spans of the contents of turns in `roles`.

    Each turn is found by rendering the conversation once more with every content replaced by a unique
    marker: searching for the content itself could land on the template's own text (a reply "a" inside
    "assistant"). Templates that trim contents are matched by putting back the trimmed contents.
    """
    text = _apply(tokenizer, messages)
    markers = [f"scorecliturn{i}x{uuid.uuid4().hex}" for i in range(len(messages))]
    marked = _apply(tokenizer, [(role, marker) for (role, _), marker in zip(messages, markers)])
    for trimmed in (False, True):
        pieces, spans, cursor, length = [], [], 0, 0
        for (role, content), marker in zip(messages, markers):
            at = marked.find(marker, cursor)
            if at < 0:
                raise ValueError("the template does not show every message's content")
            content = content.strip() if trimmed else content
            pieces.append(marked[cursor:at])
            length += at - cursor
            if role in roles and content:
                spans.append((length, length + len(content)))
            pieces.append(content)
            length += len(content)
            cursor = at + len(marker)
        if "".join(pieces) + marked[cursor:] == text:
            return text, tuple(spans)
    raise ValueError("the template changes the messages' contents, so the scored turns cannot be located")


def _apply(tokenizer: object, messages: Sequence[tuple[str, str]]) -> str:
    """Render (role, content) pairs with the tokenizer's chat template, as text."""
    return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)


def render_chats(
    records: Iterable[Record],
    tokenizer: object,
    roles: Sequence[str] = DEFAULT_ROLES,
    on_error: Callable[[Record, str], None] | None = None,
) -> Iterator[Record]:
    """Records with their conversations rendered into text and response spans; others pass unchanged.

    A conversation the template refuses raises InputError, or goes to `on_error` and is skipped. A choice
    after a conversation (Record.choice) is its last turn, and the only one scored.
    """
    for record in records:
        if record.messages is None:
            yield record
            continue
        check_template(tokenizer)
        try:
            if record.choice is None:
                text, spans = render_chat(tokenizer, record.messages, roles)
            else:
                text, spans = render_chat(tokenizer, record.messages, (CHOICE_ROLE,))
                spans = spans[-1:]
        except Exception as e:  # templates raise anything (jinja2 errors, ValueError) for a bad conversation
            reason = f"the chat template cannot render the conversation ({first_line(e)})"
            if on_error is None:
                raise InputError(f"{record.where}: {reason}") from None
            on_error(record, reason)
            continue
        yield replace(record, text=text, spans=spans, messages=None, chat=True)
