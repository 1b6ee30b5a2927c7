"""Retrieval metrics, computed by ir_measures (trec_eval semantics through pytrec_eval)."""

from __future__ import annotations

from collections.abc import Mapping

import ir_measures
from ir_measures import AP, RR, R, nDCG

# Reported name -> ir_measures measure. AP is computed over the retrieved run, so it is AP at the
# retrieval depth (1000 by default), like trec_eval's "map" over a 1000-deep run.
MEASURES = {"ndcg@10": nDCG @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10, "map": AP}

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def evaluate_run(qrels: Qrels, run: Run) -> dict[str, float]:
    """Mean of each measure over every judged query; a judged query absent from the run scores 0.

    (pytrec_eval skips queries that have no retrieved documents; averaging over all judged queries
    keeps a retriever from gaining by returning nothing.)
    """
    qrels = {q: dict(rel) for q, rel in qrels.items()}
    run = {q: dict(hits) for q, hits in run.items() if q in qrels and hits}
    by_measure = {m: name for name, m in MEASURES.items()}
    totals = dict.fromkeys(MEASURES, 0.0)
    if run:
        for metric in ir_measures.iter_calc(list(MEASURES.values()), qrels, run):
            totals[by_measure[metric.measure]] += float(metric.value)
    n = len(qrels)
    return {name: (total / n if n else 0.0) for name, total in totals.items()}
