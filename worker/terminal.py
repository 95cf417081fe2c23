"""Text made safe for an operator's terminal: control characters shown, never obeyed.

Vendor data (ids, names, a vendor's error answer kept in a dead letter) reaches the command
line's output. An ``ESC`` in it would move the cursor, clear the screen or set the window
title (``\\x1b[2J``, ``\\x1b]0;title\\x07``), and a C1 control or a bidirectional override
would do the like or reorder what the operator reads; rich's markup escaping touches none of
these. Every C0 control but newline and tab, DEL, every C1 control and the bidirectional
embeddings, overrides and isolates are written as their Python escapes instead.
"""

from __future__ import annotations

import re

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as its escape (newlines and tabs kept)."""
    return _CONTROLS.sub(_escaped, text)
