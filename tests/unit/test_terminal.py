"""Control characters in CLI output are written as escapes, never sent to the terminal."""

from __future__ import annotations

import pytest

from worker.terminal import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("a\rb\x00\x7f", "a\\x0db\\x00\\x7f"),
        ("\x9b31m\x85", "\\x9b31m\\x85"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\u2066x\u2069", "\\u2066x\\u2069"),
    ],
)
def test_printable_writes_control_characters_as_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_keeps_text_newlines_and_tabs() -> None:
    text = "Harbour View – Café 12,500\n\tlinked ✓ [green]"
    assert printable(text) == text
