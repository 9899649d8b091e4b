"""One-time relabelling of results made before the authors' KerZOO and PeZO replaced zotune's readings.

Until 2026-11-29 the methods ``kerzoo`` and ``pezo`` were zotune's own readings of the papers (built before
the authors' code was known). Those readings are now named ``kerzoo-unbiased`` and ``pezo-block``, and
``kerzoo`` / ``pezo`` are the authors' algorithms. Every results line written before that date was made by
the readings, so this script renames the method labels in those lines (nothing else changes: numbers, seeds
and curves are untouched). It only touches lines that lack ``"relabelled"`` and marks each one it changes, so
running it twice changes nothing.

    python benchmarks/relabel_variants.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RENAME = {"kerzoo": "kerzoo-unbiased", "pezo": "pezo-block"}
NOTE = "method labels kerzoo/pezo renamed to kerzoo-unbiased/pezo-block (the variants that made this line)"


def rename_method(name: str) -> str:
    return "+".join(RENAME.get(part, part) for part in name.split("+"))


def relabel(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    if "method" in out:
        out["method"] = rename_method(out["method"])
    for key in ("rows", "peak_rss_mb", "samples_seconds"):
        if isinstance(out.get(key), dict):
            out[key] = {rename_method(k): v for k, v in out[key].items()}
    if isinstance(out.get("config"), dict) and "methods" in out["config"]:
        out["config"] = {**out["config"], "methods": [rename_method(m) for m in out["config"]["methods"]]}
    out["relabelled"] = NOTE
    return out


def main() -> None:
    for path in sorted(HERE.glob("*/results/*.jsonl")):
        lines = path.read_text(encoding="utf-8").splitlines()
        changed = 0
        out = []
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            if "relabelled" not in record:
                record = relabel(record)
                changed += 1
            out.append(json.dumps(record, sort_keys=True))
        path.write_text("\n".join(out) + "\n", encoding="utf-8")
        print(f"{path.relative_to(HERE)}: {changed} of {len(out)} lines relabelled")


if __name__ == "__main__":
    main()
