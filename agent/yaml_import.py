"""``import yaml`` for the deployment path, ~7 ms cheaper.

PyYAML's pure-Python reader compiles, when ``yaml`` is imported, a character class of every printable
character (``yaml.reader.Reader.NON_PRINTABLE``): its large ranges make ``re`` fill a 64K-entry table
in Python, about a tenth of ``cdsim local``'s run for a small bundle. Before the first import of yaml,
``load_yaml()`` puts into ``re``'s cache, under that pattern's exact text, the same set written as its
complement (the few non-printable ranges), which compiles in a fraction of the time and matches the
same characters (tests/test_yaml_import.py checks every code point). Where ``re`` keeps its cache
differently, nothing is put there and yaml compiles its own pattern as usual.

Pure: no I/O. Imports yaml (and re) only when called.
"""
from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import types

# PyYAML 5.1-6.x: yaml/reader.py, Reader.NON_PRINTABLE
YAML_NON_PRINTABLE = "[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010ffff]"
# the same set of characters: everything the class above leaves out, and nothing else
COMPLEMENT = "[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x84\x86-\x9F\uD800-\uDFFF\uFFFE\uFFFF]"


def load_yaml() -> types.ModuleType:
    """The ``yaml`` module, imported the cheaper way the first time."""
    if "yaml" not in sys.modules:
        _seed_non_printable()
    import yaml

    return yaml


def _seed_non_printable() -> None:
    import re

    cache = getattr(re, "_cache", None)
    key = (str, YAML_NON_PRINTABLE, 0)  # re._compile's key: (type(pattern), pattern, flags)
    if isinstance(cache, dict) and key not in cache:
        cache[key] = re.compile(COMPLEMENT)
