"""Rebuild the bundled sample corpus (tessera/sample/corpus.jsonl) from the project's own docs.

Each Markdown section of README.md and docs/*.md becomes one or more passages of at most ~120 words.
The docs are the project's own text, so the sample corpus is licence-clean.
Run: python scripts/make_sample_corpus.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tessera" / "sample" / "corpus.jsonl"
MAX_WORDS = 120


def sections(path: Path):
    title, lines = path.stem, []
    for line in path.read_text().splitlines():
        m = re.match(r"^#{1,4}\s+(.*)", line)
        if m:
            if lines:
                yield title, " ".join(lines)
            title, lines = m.group(1).strip(), []
        elif line.strip() and not line.startswith("```") and not set(line.strip()) <= set("|-: "):
            lines.append(line.strip().strip("|").replace("|", " ").replace("`", ""))
    if lines:
        yield title, " ".join(lines)


def main() -> None:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    rows = []
    for f in files:
        for title, text in sections(f):
            words = text.split()
            for start in range(0, len(words), MAX_WORDS):
                chunk = " ".join(words[start : start + MAX_WORDS])
                if len(chunk.split()) >= 8:
                    rows.append({"_id": f"{f.stem}-{len(rows)}", "title": f"{f.stem}: {title}", "text": chunk})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} passages -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
