"""agent.yaml_import: yaml imported with its non-printable class pre-compiled as its complement
matches exactly the same characters, and PyYAML reads and rejects text exactly as before."""
import re
import subprocess
import sys

from agent.yaml_import import COMPLEMENT, YAML_NON_PRINTABLE


def test_the_complement_matches_the_same_code_points():
    every = "".join(map(chr, range(0x110000)))
    # re.UNICODE: compiled afresh (another cache key), with the same meaning for a str pattern
    original = [m.start() for m in re.compile(YAML_NON_PRINTABLE, re.UNICODE).finditer(every)]
    ours = [m.start() for m in re.compile(COMPLEMENT, re.UNICODE).finditer(every)]
    assert ours == original
    assert len(original) > 2000


_PROBE = """
import sys
if sys.argv[1] == "seeded":
    from agent.yaml_import import load_yaml
    yaml = load_yaml()
else:
    import yaml
print(yaml.reader.Reader.NON_PRINTABLE.pattern == COMPLEMENT)
for text in ("a: 1\\n", "a: \\x07\\n", "k: caf\\u00e9\\n", "x: \\ud800\\n", "- \\x85\\n", "\\ufffe: 1\\n"):
    try:
        print(repr(yaml.safe_load(text)))
    except yaml.YAMLError as e:
        print(type(e).__name__, str(e).replace("\\n", " | "))
""".replace("COMPLEMENT", repr(COMPLEMENT))


def test_pyyaml_reads_and_rejects_as_without_it():
    def probe(mode):
        return subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                              check=True, errors="backslashreplace").stdout.splitlines()

    seeded, plain = probe("seeded"), probe("plain")
    assert seeded[0] == "True"    # the pre-compiled class is the one yaml uses
    assert plain[0] == "False"
    assert seeded[1:] == plain[1:]
    assert any(line.startswith("ReaderError") for line in plain)
