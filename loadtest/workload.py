"""What the load test sends: the action mixes and the query texts (no Locust or gevent imports here)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_QUERIES = Path(__file__).with_name("queries.txt")

ACTIONS = ("search_plaid", "search_xtr", "search_prf", "search_exact", "batch_search", "get", "upsert", "delete")
MIXES: dict[str, dict[str, float]] = {
    # what a search service mostly sees: single searches, mostly with the default method
    "mixed": {
        "search_plaid": 50,
        "search_xtr": 12,
        "search_prf": 6,
        "search_exact": 2,
        "batch_search": 10,
        "get": 8,
        "upsert": 6,
        "delete": 6,
    },
    "read": {"search_plaid": 60, "search_xtr": 15, "search_prf": 8, "search_exact": 2, "batch_search": 15},
    "plaid": {"search_plaid": 1},  # capacity runs: plaid only
}


def parse_mix(text: str) -> dict[str, float]:
    """A named mix or ``ACTION=WEIGHT,...`` over ``ACTIONS``; ValueError naming ``--mix`` otherwise."""
    if text in MIXES:
        return MIXES[text]
    usage = f"use one of {', '.join(MIXES)} or ACTION=WEIGHT,... ({', '.join(ACTIONS)})"
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        try:
            if not sep or name.strip() not in ACTIONS:
                raise ValueError
            mix[name.strip()] = float(weight)
        except ValueError:
            raise ValueError(f"--mix {text!r}: {usage}") from None
    if not mix or sum(mix.values()) <= 0 or min(mix.values()) < 0:
        raise ValueError(f"--mix {text!r}: give non-negative weights, at least one positive")
    return mix


def load_queries(path: str | Path) -> list[str]:
    """Query texts: a text file (one per line, ``#`` comments) or BEIR ``queries.jsonl`` (``text``)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        texts = [str(json.loads(line).get("text", "")) for line in lines if line.strip()]
    else:
        texts = [line for line in lines if not line.lstrip().startswith("#")]
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{path}: no queries")
    return texts
