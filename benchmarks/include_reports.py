"""Copy the generated report tables into benchmarks/README.md, between its include markers.

    zotune bench report benchmarks/cost/*.toml benchmarks/convergence/*.toml
    python benchmarks/include_reports.py

A marker pair ``<!-- include: PATH -->`` ... ``<!-- end include -->`` is replaced by the file at PATH
(relative to benchmarks/), so every table in the README is the output of `zotune bench report`.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
PATTERN = re.compile(r"(<!-- include: (?P<path>\S+) -->\n).*?(<!-- end include -->)", re.S)


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")

    def body(match: re.Match[str]) -> str:
        included = (HERE / match["path"]).read_text(encoding="utf-8")
        included = "\n".join(line for line in included.splitlines() if not line.startswith("<!-- made by"))
        return f"{match.group(1)}{included.strip()}\n{match.group(3)}"

    readme.write_text(PATTERN.sub(body, text), encoding="utf-8")


if __name__ == "__main__":
    main()
