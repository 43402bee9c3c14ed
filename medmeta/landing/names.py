"""File names as they come from a landing zone: any bytes, shown and stored without harm.

A POSIX file name is bytes. medmeta keeps it as ``str`` the way ``os.fsdecode`` does: valid UTF-8
decodes to its characters, every other byte becomes a lone surrogate U+DC80..U+DCFF
("surrogateescape"). Such a string can not be encoded as UTF-8, and a name may also hold control
characters or ANSI escape sequences that a terminal would obey. So:

- ``display_name`` is what a terminal may show: every character that is not printable (controls,
  ESC and so every ANSI sequence, C1 controls, format characters such as bidi overrides, line and
  paragraph separators) is written as a Python-style escape, an escaped byte as ``\\xNN``, and a
  backslash as ``\\\\``, so the shown text is one line, obeys nothing and tells names apart.
- ``name_bytes`` is the name's exact bytes, to hash or key it (``str.encode()`` raises on it).
- ``json_name`` is a form any JSON or UTF-8 writer accepts: the name itself when it is valid
  UTF-8, else its ``display_name``.
"""

from __future__ import annotations

_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # what "surrogateescape" makes of the bytes 0x80..0xFF
_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display_name(path: str) -> str:
    """``path`` escaped for a terminal: printable characters as they are, everything else as
    ``\\n``, ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``; a surrogate-escaped byte as ``\\xNN``."""
    if path.isprintable() and "\\" not in path:
        return path
    return "".join(_display_char(char) for char in path)


def _display_char(char: str) -> str:
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def name_bytes(path: str) -> bytes:
    """The bytes of a name kept as ``str`` with surrogateescape (what ``os.fsencode`` gives back).

    A lone surrogate that no byte can stand for (one read from JSON, say) is kept as its own
    UTF-8-style bytes ("surrogatepass"), so every ``str`` has bytes.
    """
    try:
        return path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogatepass")


def json_name(path: str) -> str:
    """``path`` when it encodes as UTF-8, else its ``display_name``: safe for any text writer."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return display_name(path)
    return path
