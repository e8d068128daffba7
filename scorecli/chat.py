"""Render chat conversations with the tokenizer's template and find the turns whose tokens are scored."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace

from scorecli.errors import InputError, ModelError, first_line
from scorecli.inputs import Record

DEFAULT_ROLES = ("assistant",)


def check_template(tokenizer: object) -> None:
    """Raise ModelError where the tokenizer cannot render conversations."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the model's tokenizer has no chat template, which --messages-field needs")


def render_chat(
    tokenizer: object, messages: Sequence[tuple[str, str]], roles: Sequence[str] = DEFAULT_ROLES
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The conversation as the model sees it, and the character spans of the contents of turns in `roles`."""
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
    spans, cursor = [], 0
    for turn, (role, content) in enumerate(messages, start=1):
        # Templates put each content in order, some trimmed of surrounding whitespace.
        for candidate in dict.fromkeys((content, content.strip())):
            at = text.find(candidate, cursor)
            if at >= 0:
                break
        else:
            raise ValueError(f"message {turn}'s content does not appear in the rendered conversation")
        cursor = at + len(candidate)
        if role in roles and candidate:
            spans.append((at, cursor))
    return text, tuple(spans)


def render_chats(
    records: Iterable[Record],
    tokenizer: object,
    roles: Sequence[str] = DEFAULT_ROLES,
    on_error: Callable[[Record, str], None] | None = None,
) -> Iterator[Record]:
    """Records with their conversations rendered into text and response spans; others pass unchanged.

    A conversation the template refuses raises InputError, or goes to `on_error` and is skipped.
    """
    for record in records:
        if record.messages is None:
            yield record
            continue
        check_template(tokenizer)
        try:
            text, spans = render_chat(tokenizer, record.messages, roles)
        except Exception as e:  # templates raise anything (jinja2 errors, ValueError) for a bad conversation
            reason = f"the chat template cannot render the conversation ({first_line(e)})"
            if on_error is None:
                raise InputError(f"{record.where}: {reason}") from None
            on_error(record, reason)
            continue
        yield replace(record, text=text, spans=spans, messages=None, chat=True)
