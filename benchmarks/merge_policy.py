"""Ingest in many small adds under two merge policies, side by side: what the merges rewrite, how many
segments the index holds, how long the ingest takes, and how fast ``plaid`` then searches.

Arms: ``tiered``, the index's policy (``merge_ratio``, ``max_segments``: the newest segments merge
geometrically), and ``smallest``, the policy before it (only past ``max_segments`` segments, all but
the ``max_segments // 2`` biggest merged into one), put in place of ``MultiVectorIndex._merge_newest``
for its arm (the merge itself is the same code). Each arm adds the same batches to its own index
folder, flushing after every add as the service does; re-trainings (``auto_retrain``) run to the end
before the next add, so that both arms see the same codec changes. Then both indexes answer the same
queries with ``plaid``, alternating arm by arm query by query. Prints one JSON object.

    python benchmarks/merge_policy.py --data /work/shared/data/scifact --batch 256 --out /tmp/merge
    python benchmarks/merge_policy.py --synthetic 500000 --batch 16 --no-retrain --out /tmp/merge-syn
    python benchmarks/merge_policy.py --simulate 21,500,4000,40000   # both policies on equal adds, sizes only
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from tessera.index import MultiVectorIndex, bench
from tessera.index.core import DEFAULT_SETTINGS, merge_run


def smallest_pick(sizes: list[int], cap: int) -> list[int]:
    """The merge policy before ``merge_ratio`` (index/core.py at 5665ac4): past ``cap`` segments, all but
    the ``cap // 2`` biggest are merged."""
    if len(sizes) <= cap:
        return []
    order = sorted(range(len(sizes)), key=lambda s: sizes[s])
    return order[: max(2, len(order) - cap // 2)]


def smallest_policy(self: MultiVectorIndex) -> None:
    self._merge(smallest_pick([s.n_vectors for s in self._snap.segments], self.settings["max_segments"]))


TIERED = MultiVectorIndex._merge_newest
POLICIES = {"tiered": TIERED, "smallest": smallest_policy}


def ingest(policy: str, data: bench.BenchData, batch: int, folder: Path, settings: dict) -> dict:
    MultiVectorIndex._merge_newest = POLICIES[policy]
    try:
        shutil.rmtree(folder, ignore_errors=True)
        index = MultiVectorIndex.create(folder, data.docs.dim, **settings)
        added = rewritten = retrainings = 0
        counts, seconds = [], 0.0
        for start in range(0, len(data.doc_ids), batch):
            end = min(start + batch, len(data.doc_ids))
            docs = data.docs.select(range(start, end))
            before = {id(s) for s in index.snapshot.segments}
            codec = index.snapshot.codec
            t0 = time.perf_counter()
            index.add(data.doc_ids[start:end], docs)
            index.wait_for_maintenance()
            index.flush()
            seconds += time.perf_counter() - t0
            added += docs.vectors.shape[0]
            if index.snapshot.codec is codec or codec is None:
                fresh = [s for s in index.snapshot.segments if id(s) not in before]
                rewritten += sum(s.n_vectors for s in fresh) - docs.vectors.shape[0]
            else:  # a re-training rewrites everything whatever the policy: not counted
                retrainings += 1
            counts.append(len(index.snapshot.segments))
        st = index.stats()
        index.close()
        return {
            "adds": len(counts),
            "vectors": added,
            "rewritten_by_merges": rewritten,
            "write_amplification": round((added + rewritten) / added, 2),
            "segments_final": counts[-1],
            "segments_max": max(counts),
            "segments_mean": round(statistics.mean(counts), 2),
            "retrainings": retrainings,
            "ingest_s": round(seconds, 2),
            "documents": st["documents"],
        }
    finally:
        MultiVectorIndex._merge_newest = TIERED


def simulate(adds: int) -> dict:
    """Both policies on ``adds`` adds of equal size (no deletes, default settings), on segment sizes
    alone: {policy: (write amplification, mean segments, final segments)}."""
    cap, ratio = DEFAULT_SETTINGS["max_segments"], DEFAULT_SETTINGS["merge_ratio"]
    out = {}
    for policy in POLICIES:
        sizes: list[int] = []
        written, counts = 0, []
        for _ in range(adds):
            sizes.append(1)
            written += 1
            if policy == "tiered":
                start = merge_run(sizes, ratio, cap)
                which = list(range(start, len(sizes))) if start < len(sizes) - 1 else []
            else:
                which = smallest_pick(sizes, cap)
            if which:
                merged = sum(sizes[s] for s in which)
                sizes = [x for s, x in enumerate(sizes) if s not in set(which)] + [merged]
                written += merged
            counts.append(len(sizes))
        out[policy] = (round(written / adds, 2), round(statistics.mean(counts), 2), len(sizes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="BEIR folder (encodings cached by tessera bench search)")
    ap.add_argument("--synthetic", type=int, metavar="VECTORS", help="the bench's synthetic vectors instead")
    ap.add_argument("--model", default="default")
    ap.add_argument("--cache", type=Path, default=bench.default_cache_dir())
    ap.add_argument("--batch", type=int, default=256, help="documents per add (the SDK's bulk upsert sends 256)")
    ap.add_argument("--out", type=Path, help="folder for the two indexes")
    ap.add_argument("--simulate", metavar="N,N,...", help="only the size model of both policies for N equal adds")
    ap.add_argument("--no-retrain", action="store_true", help="auto_retrain off (codec from the first add)")
    ap.add_argument("--ncentroids", type=int, help="centroids (default: the index's rule at the first add)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="passes over the queries")
    args = ap.parse_args()
    if args.simulate:
        for n in (int(x) for x in args.simulate.split(",")):
            print(json.dumps({"adds": n, **simulate(n)}))
        return
    if args.out is None:
        raise SystemExit("give --out (or --simulate)")
    torch.set_num_threads(args.threads)
    if args.synthetic:
        data = bench.synthetic_data(args.synthetic, 128, 100)
    elif args.data:
        data = bench.load_encoded(args.data, args.model, "test", args.cache)
    else:
        raise SystemExit("give --data or --synthetic")
    settings = {"auto_retrain": not args.no_retrain, "ncentroids": args.ncentroids}
    out = {"batch": args.batch, "settings": settings, "threads": args.threads}
    for policy in POLICIES:
        out[policy] = ingest(policy, data, args.batch, args.out / policy, settings)
    indexes = {p: MultiVectorIndex.open(args.out / p) for p in POLICIES}
    for p, index in indexes.items():
        out[p]["segment_docs"] = [s.n_docs for s in index.snapshot.segments]
    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    same, overlap = 0, 0.0
    queries = data.queries
    for rep in range(args.repeats + 1):  # the first pass warms up
        for q in range(queries.shape[0]):
            got = {}
            for p, index in indexes.items():
                t0 = time.perf_counter()
                got[p] = index.search(queries[q : q + 1], k=10, method="plaid")[0]
                if rep:
                    times[p].append((time.perf_counter() - t0) * 1e3)
            if rep == 1:
                a, b = ([h.id for h in got[p]] for p in POLICIES)
                same += a == b
                overlap += len(set(a) & set(b)) / max(1, len(a))
    for p in POLICIES:
        out[p]["plaid_p50_ms"] = round(statistics.median(times[p]), 3)
    out["search_ratio_tiered_vs_smallest"] = round(
        out["tiered"]["plaid_p50_ms"] / out["smallest"]["plaid_p50_ms"], 3
    )
    out["same_top10"] = f"{same}/{queries.shape[0]}"  # the same ids in the same order
    out["top10_overlap"] = round(overlap / queries.shape[0], 4)  # re-trainings may give the arms other codecs
    print(json.dumps(out))


if __name__ == "__main__":
    main()
