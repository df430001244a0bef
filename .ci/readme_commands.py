"""Print the command lines of the README's Quick start block, one per line (CI runs exactly these)."""
import re
import sys

with open(sys.argv[1] if len(sys.argv) > 1 else "README.md", encoding="utf-8") as f:
    text = f.read()
section = text.split("## Quick start", 1)[1]
block = re.search(r"```[^\n]*\n(.*?)```", section, re.S).group(1)
lines = [line for line in block.splitlines() if line.strip()]
if len(lines) != 2:
    sys.exit(f"the Quick start block must hold exactly two commands, found {len(lines)}")
print("\n".join(lines))
