"""agent.ruby renders values as Ruby itself does: each string is compared with `ruby -e` (Ruby's own
String#inspect), including quotes, backslashes, interpolation marks, controls, non-ASCII and bytes that
are not UTF-8."""
import os
import shutil
import unicodedata

import pytest

from agent import ruby

# reads hex-encoded UTF-8 lines; prints, per line, the hex of the string's inspect and whether the
# string's one character is unassigned in Ruby's Unicode tables (the documented difference)
RUBY_SIDE = r"""
STDIN.each_line do |line|
  s = [line.strip].pack("H*").force_encoding("UTF-8")
  cn = s.valid_encoding? && s.length == 1 && s.match?(/\p{Cn}/) ? 1 : 0
  puts s.inspect.unpack1("H*") + " #{cn}"
end
"""

TRICKY = [
    "", "plain", 'q"uote', "back\\slash", "\\\\", '\\"', "#{x}", "#$x", "#@x", "#", "a#", "##{", "#x{",
    "\\#{", "#{#{}}", "é", "日本語", "😀", "a\u0301", "\n\r\t\f\v\b\a\x1b", "\x00", "\x01\x1f", "\x7f",
    "\x85", "\xa0", "\u00ad", "\u200b", "\u2028", "\u2029", "\ufeff", "\ue000", "\U000f0000", "\ufffd",
    "\uffff", "\u0378", "\U0010ffff", "\U0001d11e", "tab\there", "mix \"#{\\}\" \x00é\u2028",
    # not UTF-8: how Python holds such bytes (os.fsdecode, command-line arguments)
    os.fsdecode(b"\xff"), os.fsdecode(b"a\xe2\x82(b"), os.fsdecode(b"\xc3"), os.fsdecode(b"\xed\xa0\x80"),
    os.fsdecode(b"\x80\x80#{"),
]


def _ruby():
    found = shutil.which("ruby")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("ruby is needed (apt-get install ruby)")
        pytest.skip("ruby is needed: apt-get install ruby")
    return found


def _wire(s: str) -> str:
    """The bytes Ruby should see: surrogateescape'd bytes as themselves, other lone surrogates as the
    (invalid) UTF-8 a surrogate would have."""
    out = bytearray()
    for ch in s:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(code - 0xDC00)
        else:
            out += ch.encode("utf-8", "surrogatepass")
    return out.hex()


def ruby_inspect_all(strings: list[str]) -> list[tuple[str, bool]]:
    import subprocess
    done = subprocess.run([_ruby(), "-e", RUBY_SIDE], input="".join(_wire(s) + "\n" for s in strings),
                          capture_output=True, text=True, check=True, timeout=600)
    out = []
    for line in done.stdout.splitlines():
        text, cn = line.split(" ")
        out.append((bytes.fromhex(text).decode("utf-8", "surrogateescape"), cn == "1"))
    assert len(out) == len(strings)
    return out


class TestAgainstRuby:
    """Ruby's String#inspect is the reference; agent.ruby must print what it prints."""

    def test_tricky_strings(self):
        """Quotes, backslashes, #{ #$ #@, named and other controls, separators, non-ASCII, bad UTF-8."""
        expected = [text for text, _cn in ruby_inspect_all(TRICKY)]
        assert [ruby.inspect_str(s) for s in TRICKY] == expected

    def test_every_code_point(self):
        """Each code point alone, the whole of Unicode: equal, except characters Ruby's (older) Unicode
        tables leave unassigned while Python's assign them (the difference the module documents)."""
        points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
        theirs = ruby_inspect_all(points)
        differ = [(ch, text, cn) for ch, (text, cn) in zip(points, theirs, strict=True)
                  if ruby.inspect_str(ch) != text]
        explained = [ch for ch, _text, cn in differ if cn and unicodedata.category(ch) != "Cn"]
        assert [ch for ch, _t, _c in differ] == explained
        assert len(differ) < 1000   # a few hundred code points are new in Python's Unicode

    def test_arrays_and_hashes(self):
        """Array#inspect and Hash#inspect of strings, numbers, nil and booleans."""
        import subprocess
        code = 'p ["a\\"b", 1, nil, true, 1.0e+16, 1.0e-05, "#{"#"}{x}"]; p({"name"=>"u", "n"=>[1.5]})'
        done = subprocess.run([_ruby(), "-e", code], capture_output=True, text=True, check=True, timeout=60)
        expected = done.stdout.splitlines()
        assert ruby.inspect(['a"b', 1, None, True, 1e16, 1e-05, "#{x}"]) == expected[0]
        assert ruby.inspect(ruby.RubyHash([("name", "u"), ("n", [1.5])])) == expected[1]
        assert ruby.inspect_list(["AfterInstal"]) == '["AfterInstal"]'


class TestToS:
    """to_s as the agent interpolates a value: strings as they are, nil empty, the rest inspected."""

    def test_to_s(self):
        assert ruby.to_s(None) == ""
        assert ruby.to_s('a"b') == 'a"b'
        assert ruby.to_s(["a"]) == '["a"]'
        assert ruby.to_s(float("-inf")) == "-Infinity"
