"""Bytes as 7-bit ASCII text, 8 characters per 7 bytes (base64 takes 4 per 3).

The Redis client reads answers as UTF-8 text, so a stored value must be valid UTF-8; every
ASCII character is, control characters included, and Redis strings are binary-safe. The
low seven bits of each byte are written as they are, followed by the bytes' high bits packed
seven to a character (the first byte's in the lowest bit).
"""

from __future__ import annotations

_LOW = bytes(b & 0x7F for b in range(256))
_HIGH_AS_DIGIT = bytes(0x31 if b & 0x80 else 0x30 for b in range(256))  # b"1" / b"0"
_DIGIT_AS_HIGH = bytes(0x80 if b == 0x31 else 0 for b in range(256))


def encode(data: bytes) -> str:
    """``data`` as ``len(data) + ceil(len(data) / 7)`` ASCII characters."""
    if not data:
        return ""
    high = int(data.translate(_HIGH_AS_DIGIT)[::-1], 2)  # bit i: byte i's high bit
    side = bytearray(-(-len(data) // 7))
    for at in range(len(side)):
        side[at] = high & 0x7F
        high >>= 7
    return (data.translate(_LOW) + bytes(side)).decode("ascii")


def decode(text: str) -> bytes:
    """The bytes ``encode`` wrote."""
    raw = text.encode("ascii")
    whole, rest = divmod(len(raw), 8)  # n bytes take 8 per 7, and one more for a remainder
    size = 7 * whole + (rest - 1 if rest else 0)
    if size <= 0:
        return b""
    high = 0
    for char in reversed(raw[size:]):
        high = (high << 7) | char
    highs = format(high, f"0{size}b")[::-1].encode().translate(_DIGIT_AS_HIGH)
    low = int.from_bytes(raw[:size], "big") | int.from_bytes(highs, "big")
    return low.to_bytes(size, "big")
