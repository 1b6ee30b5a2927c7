"""Sources of training examples: labelled (qrels + hard negatives) and unlabelled (random crops)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tessera.datasets import Document


@dataclass
class Example:
    query: str
    docs: list[str]  # positive first, then hard negatives (document texts)
    doc_ids: list[str]
    positives: set[str] = field(default_factory=set)  # every id judged relevant to the query
    teacher: list[float] | None = None


class QrelsSource:
    """One example per labelled query: a positive from the qrels plus sampled hard negatives."""

    def __init__(
        self,
        corpus: dict[str, Document],
        queries: dict[str, str],
        qrels: dict[str, dict[str, int]],
        negatives: int,
        teacher: dict[tuple[str, str], float] | None = None,
    ) -> None:
        self.corpus = corpus
        self.queries = queries
        self.qrels = {q: {d for d, s in rel.items() if s > 0} for q, rel in qrels.items()}
        self.qids = [q for q in queries if self.qrels.get(q)]
        self.negatives = negatives
        self.pools: dict[str, list[str]] = {}
        self.teacher = teacher
        self._doc_ids = list(corpus)

    def __len__(self) -> int:
        return len(self.qids)

    def set_pools(self, pools: dict[str, list[str]]) -> None:
        self.pools = pools

    def example(self, index: int, rng: random.Random) -> Example:
        qid = self.qids[index]
        positives = self.qrels[qid]
        pos = rng.choice(sorted(positives))
        pool = [d for d in self.pools.get(qid, []) if d not in positives]
        if len(pool) >= self.negatives:
            negs = rng.sample(pool, self.negatives)
        else:
            negs = list(pool)
            while len(negs) < self.negatives:
                d = rng.choice(self._doc_ids)
                if d not in positives and d not in negs:
                    negs.append(d)
        ids = [pos, *negs]
        teacher = None
        if self.teacher is not None:
            teacher = [self.teacher.get((qid, d), 0.0) for d in ids]
        return Example(self.queries[qid], [self.corpus[d].full_text for d in ids], ids, positives, teacher)


class CropSource:
    """Unlabelled pairs: two independent random word spans of the same document serve as the
    query and its positive; other documents in the batch are the negatives."""

    def __init__(self, corpus: dict[str, Document], query_words: tuple[int, int] = (8, 24),
                 doc_words: tuple[int, int] = (48, 160)) -> None:
        self.corpus = corpus
        self.ids = [d for d, doc in corpus.items() if len(doc.full_text.split()) >= query_words[0]]
        self.query_words = query_words
        self.doc_words = doc_words
        self.negatives = 0

    def __len__(self) -> int:
        return len(self.ids)

    def set_pools(self, pools: dict[str, list[str]]) -> None:  # no mined negatives for crops
        pass

    @staticmethod
    def _crop(words: list[str], bounds: tuple[int, int], rng: random.Random) -> str:
        n = min(len(words), rng.randint(*bounds))
        start = rng.randint(0, len(words) - n)
        return " ".join(words[start : start + n])

    def example(self, index: int, rng: random.Random) -> Example:
        doc_id = self.ids[index]
        words = self.corpus[doc_id].full_text.split()
        return Example(self._crop(words, self.query_words, rng), [self._crop(words, self.doc_words, rng)],
                       [doc_id], {doc_id})
