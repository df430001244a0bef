"""Ruby's renderings of values, as the agent (Ruby 3.1) interpolates them into its messages.

``inspect`` is Ruby's ``#inspect`` of a loaded YAML value (``nil``, ``true``, ``1.0e+16``, ``"a\\"b"``,
``["a", 1]``, ``{"name"=>"u"}``), ``to_s`` its ``#to_s``, ``inspect_list`` ``Array#inspect`` of strings.
String#inspect of a UTF-8 string, as Ruby's ``rb_str_inspect`` does it:

* ``"`` and ``\\`` are escaped; ``#`` is escaped when ``{``, ``$`` or ``@`` follows (it would interpolate);
* ``\\n \\r \\t \\f \\v \\b \\a \\e`` by name;
* a character Ruby's Unicode tables call unprintable (controls but U+0085, line and paragraph separators,
  unassigned code points) as ``\\uXXXX``, or ``\\u{XXXXX}`` above U+FFFF;
* a byte that is not UTF-8 as ``\\xHH``: Python holds such bytes as lone surrogates (the
  ``surrogateescape`` of command-line arguments and file names), so a surrogate is shown as its byte(s).

Every other character is shown as itself. The one difference left: characters assigned after Unicode 13
(Ruby 3.1's tables) are printable here and escaped by Ruby as unassigned. Pure: no I/O, no cdsim imports.
"""
from __future__ import annotations

import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["RubyHash", "inspect", "inspect_float", "inspect_list", "inspect_str", "to_s"]

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f", "\v": "\\v", "\b": "\\b",
          "\a": "\\a", "\x1b": "\\e", '"': '\\"', "\\": "\\\\"}
# general categories Ruby's (Onigmo's) [[:print:]] leaves out: controls, unassigned, surrogates and the
# line/paragraph separators; U+0085 (a control) is printable there
_UNPRINTABLE = frozenset(("Cc", "Cn", "Cs", "Zl", "Zp"))


class RubyHash:
    """A loaded YAML mapping: pairs in order, later duplicates replacing earlier ones in place."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[object, object]]):
        self.pairs = pairs


def _not_utf8(ch: str) -> str:
    """A lone surrogate: the byte it stands for (surrogateescape), else its UTF-8-shaped bytes."""
    code = ord(ch)
    raw = bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else ch.encode("utf-8", "surrogatepass")
    return "".join(f"\\x{b:02X}" for b in raw)


def _category(ch: str) -> str:
    import unicodedata  # here: most strings are ASCII, and the agent's messages are read at start-up
    return unicodedata.category(ch)


def inspect_str(s: str) -> str:
    """Ruby's ``String#inspect`` of a UTF-8 string."""
    out = []
    for i, ch in enumerate(s):
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch == "#" and s[i + 1:i + 2] in ("{", "$", "@"):
            out.append("\\#")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(_not_utf8(ch))
        elif code < 0x20 or (code >= 0x7F and code != 0x85 and _category(ch) in _UNPRINTABLE):
            out.append(f"\\u{code:04X}" if code < 0x10000 else f"\\u{{{code:X}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def inspect_float(f: float) -> str:
    """Ruby's ``Float#to_s`` (which is also its inspect): ``1.0``, ``1.0e+16``, ``Infinity``, ``NaN``."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    r = repr(f)  # Python switches to exponent form at the same thresholds as Ruby
    if "e" in r:
        mant, exp = r.split("e")
        return (mant if "." in mant else mant + ".0") + "e" + exp
    return r


def inspect(v: object) -> str:
    """Ruby 3.1 ``inspect`` of a loaded YAML value: ``["a", 1]``, ``{"name"=>"u"}``, ``nil``."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        return inspect_float(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return inspect_str(v)
    if isinstance(v, (list, tuple)):
        return inspect_list(v)
    if isinstance(v, RubyHash):
        return "{" + ", ".join(f"{inspect(k)}=>{inspect(x)}" for k, x in v.pairs) + "}"
    return str(v)


def inspect_list(items: Iterable[object]) -> str:
    """Ruby's ``Array#inspect``: ``["a", "b"]``."""
    return "[" + ", ".join(inspect(x) for x in items) + "]"


def to_s(v: object) -> str:
    """Ruby ``to_s`` of a loaded YAML value (nil -> '', arrays and hashes -> inspect)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return inspect(v)
