"""evaluate() for the training objectives' models: dense (DupMAE) models over FAISS, the dupmae+rerank
two-stage search, CRISP checkpoints (representatives only), the post-hoc k-means baseline, and the
vectors-per-document and index-size figures of multi-vector runs."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import DOCS, QUERIES

from tessera.eval import evaluate
from tessera.eval.harness import EvalError
from tessera.scoring import maxsim_scores
from tessera.training.checkpoints import load_encoder, new_encoder, save_checkpoint
from tessera.training.config import EncoderConfig
from tessera.training.crisp import ClusterSpec, cluster_query_vectors, posthoc_kmeans

IDS = list(DOCS)
TEXTS = [f"{title} {text}".strip() for title, text in DOCS.values()]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dense_checkpoint(tmp_path_factory, tiny_bert_dir):
    """A saved DupMAE (one vector per text) checkpoint over the tiny random BERT."""
    torch.manual_seed(1)
    cfg = EncoderConfig(backbone=str(tiny_bert_dir), dim=8, query_maxlen=12, doc_maxlen=32, kind="dupmae",
                        bow_dim=16, bow_topk=8)
    return save_checkpoint(new_encoder(cfg), tmp_path_factory.mktemp("dense") / "model")


@pytest.fixture(scope="module")
def crisp_checkpoint(tmp_path_factory, tiny_bert_dir):
    """A saved CRISP C2x3 checkpoint over the tiny random BERT."""
    torch.manual_seed(2)
    cfg = ClusterSpec.parse("C2x3").apply(
        EncoderConfig(backbone=str(tiny_bert_dir), dim=16, query_maxlen=12, doc_maxlen=32))
    return save_checkpoint(new_encoder(cfg), tmp_path_factory.mktemp("crisp") / "model")


def _ranking(result_hits):
    return [[doc for doc, _ in row] for row in result_hits]


def _run(beir_dir, model, tmp_path, monkeypatch, **kwargs):
    """evaluate() and the run it scored (captured from evaluate_run)."""
    import tessera.eval.harness as harness

    seen = {}
    original = harness.evaluate_run

    def capture(qrels, run):
        seen["run"] = run
        return original(qrels, run)

    monkeypatch.setattr(harness, "evaluate_run", capture)
    result = evaluate(beir_dir, str(model), cache_dir=tmp_path / "cache", k=100, **kwargs)
    return result, seen["run"]


def test_dense_model_is_searched_by_inner_product(beir_dir, tmp_path, monkeypatch, dense_checkpoint):
    result, run = _run(beir_dir, dense_checkpoint, tmp_path, monkeypatch)
    assert result["vectors_per_doc"] == 1.0 and result["doc_cache"] == "miss"
    enc = load_encoder(str(dense_checkpoint))
    d = enc.encode_documents(TEXTS)
    q = enc.encode_queries(list(QUERIES.values()))
    expected = q @ d.T
    for i, qid in enumerate(QUERIES):
        got = run[qid]
        assert set(got) == set(IDS)  # every document (k >= corpus)
        for j, doc in enumerate(IDS):
            assert got[doc] == pytest.approx(float(expected[i, j]), rel=1e-4, abs=1e-4)
    again, _ = _run(beir_dir, dense_checkpoint, tmp_path, monkeypatch)
    assert again["doc_cache"] == "hit" and again["ndcg@10"] == result["ndcg@10"]


def test_dense_model_takes_only_exact(beir_dir, dense_checkpoint):
    with pytest.raises(EvalError, match="dense model"):
        evaluate(beir_dir, str(dense_checkpoint), method="plaid", use_cache=False)
    with pytest.raises(EvalError, match="dense model"):
        evaluate(beir_dir, str(dense_checkpoint), posthoc="C2x4", use_cache=False)


def test_two_stage_reranks_first_stage_candidates_exactly(beir_dir, tmp_path, monkeypatch, tiny_checkpoint,
                                                          dense_checkpoint):
    # 8 documents, so the first stage's 100 candidates are all of them: the rerank must equal exact MaxSim
    result, run = _run(beir_dir, tiny_checkpoint, tmp_path, monkeypatch, method="dupmae+rerank",
                       first_stage=str(dense_checkpoint))
    exact, exact_run = _run(beir_dir, tiny_checkpoint, tmp_path, monkeypatch)
    assert result["first_stage"] == str(dense_checkpoint) and result["params"] == {"candidates": 200}
    assert result["ndcg@10"] == pytest.approx(exact["ndcg@10"])
    for qid in QUERIES:
        assert run[qid].keys() == exact_run[qid].keys()
        for doc, score in run[qid].items():
            assert score == pytest.approx(exact_run[qid][doc], abs=2e-3)
    for key in ("index_build_seconds", "first_stage_seconds", "rerank_seconds", "ms_per_query",
                "vectors_per_doc", "index_code_bytes"):
        assert key in result


def test_two_stage_scores_only_the_first_stage_candidates(beir_dir, tmp_path, tiny_checkpoint, dense_checkpoint,
                                                          monkeypatch):
    """With a corpus larger than the candidate count, only the first stage's top candidates come back,
    ordered by exact MaxSim."""
    import random

    from eval_helpers import write_beir

    from tessera.training.testing import tiny_vocab

    words = [w for w in tiny_vocab() if w.isalpha() and len(w) > 2]
    rng = random.Random(0)
    docs = {f"x{i}": ("", " ".join(rng.sample(words, 3 + i % 5))) for i in range(130)}
    root = write_beir(tmp_path / "big", docs=docs, queries={"q1": "cancer tumor drug"}, qrels={"q1": {"x0": 1}})
    result, run = _run(root, tiny_checkpoint, tmp_path, monkeypatch, method="dupmae+rerank",
                       first_stage=str(dense_checkpoint), params={"candidates": 100})
    dense = load_encoder(str(dense_checkpoint))
    ids = list(docs)
    texts = [docs[i][1] for i in ids]
    first = (dense.encode_queries(["cancer tumor drug"]) @ dense.encode_documents(texts).T)[0]
    top = set(first.topk(100).indices.tolist())
    assert set(run["q1"]) == {ids[j] for j in top}
    mv = load_encoder(str(tiny_checkpoint))
    exact = maxsim_scores(mv.encode_queries(["cancer tumor drug"]), mv.encode_documents(texts))[0]
    for doc, score in run["q1"].items():
        assert score == pytest.approx(float(exact[ids.index(doc)]), abs=2e-3)


def test_two_stage_input_errors(beir_dir, tiny_checkpoint, dense_checkpoint):
    with pytest.raises(EvalError, match="needs --first-stage"):
        evaluate(beir_dir, str(tiny_checkpoint), method="dupmae+rerank", use_cache=False)
    with pytest.raises(EvalError, match="first-stage model .* multi-vector"):
        evaluate(beir_dir, str(tiny_checkpoint), method="dupmae+rerank", first_stage=str(tiny_checkpoint),
                 use_cache=False)
    with pytest.raises(EvalError, match="candidates must be an integer of at least 100"):
        evaluate(beir_dir, str(tiny_checkpoint), method="dupmae+rerank", first_stage=str(dense_checkpoint),
                 params={"candidates": 10}, use_cache=False)
    with pytest.raises(EvalError, match="takes only 'candidates'"):
        evaluate(beir_dir, str(tiny_checkpoint), method="dupmae+rerank", first_stage=str(dense_checkpoint),
                 params={"ncells": 2}, use_cache=False)
    with pytest.raises(EvalError, match="used by --method dupmae\\+rerank only"):
        evaluate(beir_dir, str(tiny_checkpoint), first_stage=str(dense_checkpoint), use_cache=False)


def test_crisp_checkpoint_indexes_only_representatives(beir_dir, tmp_path, monkeypatch, crisp_checkpoint):
    result, run = _run(beir_dir, crisp_checkpoint, tmp_path, monkeypatch)
    enc = load_encoder(str(crisp_checkpoint))
    packed = enc.encode_documents(TEXTS)
    assert (packed.lengths <= 3).all() and result["doc_vectors"] == int(packed.lengths.sum())
    assert result["query_vectors"] == 2
    assert result["index_code_bytes"] == result["doc_vectors"] * (4 + 16 * 4 // 8)  # 4 bits by default
    two_bit, _ = _run(beir_dir, crisp_checkpoint, tmp_path, monkeypatch, nbits=2)
    assert two_bit["index_code_bytes"] == result["doc_vectors"] * (4 + 16 * 2 // 8)
    # the index engine serves the representatives as usual: its exact search gives the same scores
    via_index, index_run = _run(beir_dir, crisp_checkpoint, tmp_path, monkeypatch, method="plaid",
                                params={"ncells": 8, "centroid_score_threshold": -1.0, "ndocs": 100})
    assert via_index["doc_cache"] == "hit" and via_index["index_memory_bytes"] > 0
    expected = maxsim_scores(enc.encode_queries(list(QUERIES.values())), packed)
    for i, qid in enumerate(QUERIES):
        for doc, score in run[qid].items():
            assert score == pytest.approx(float(expected[i, IDS.index(doc)]), abs=2e-3)
            if doc in index_run[qid]:
                assert index_run[qid][doc] == pytest.approx(score, abs=0.1)  # 4-bit residuals


def test_posthoc_clustering_matches_per_document_kmeans(beir_dir, tmp_path, monkeypatch, tiny_checkpoint):
    result, run = _run(beir_dir, tiny_checkpoint, tmp_path, monkeypatch, posthoc="C3x4", posthoc_iters=5)
    plain, _ = _run(beir_dir, tiny_checkpoint, tmp_path, monkeypatch)
    enc = load_encoder(str(tiny_checkpoint))
    packed = enc.encode_documents(TEXTS)
    assert result["posthoc"] == "C3x4" and result["query_vectors"] == 3 and plain["query_vectors"] == 12
    assert result["doc_vectors"] == int(packed.lengths.clamp(max=4).sum()) < plain["doc_vectors"]
    assert result["vectors_per_doc"] == pytest.approx(result["doc_vectors"] / len(IDS))
    q = cluster_query_vectors(enc.encode_queries(list(QUERIES.values())), ClusterSpec.parse("C3x4", 5))
    for j, doc in enumerate(IDS):
        reps = posthoc_kmeans(packed.doc(j).float(), 4, iters=5)
        expected = (q @ reps.half().float().T).max(-1).values.sum(-1)
        for i, qid in enumerate(QUERIES):
            assert run[qid][doc] == pytest.approx(float(expected[i]), abs=2e-3)


def test_posthoc_ratio_and_errors(beir_dir, tmp_path, monkeypatch, tiny_checkpoint, crisp_checkpoint):
    result, _ = _run(beir_dir, tiny_checkpoint, tmp_path, monkeypatch, posthoc="R0.25")
    lengths = load_encoder(str(tiny_checkpoint)).encode_documents(TEXTS).lengths
    assert result["doc_vectors"] == int(torch.ceil(lengths.double() * 0.25).sum())
    assert result["index_code_bytes"] == result["doc_vectors"] * (4 + 16 * 4 // 8)  # representatives: 4 bits
    plain, _ = _run(beir_dir, tiny_checkpoint, tmp_path, monkeypatch)
    assert plain["index_code_bytes"] == plain["doc_vectors"] * (4 + 16 * 2 // 8)
    with pytest.raises(EvalError, match="already a CRISP"):
        evaluate(beir_dir, str(crisp_checkpoint), posthoc="C2x3", use_cache=False)
    with pytest.raises(EvalError, match="exhaustively"):
        evaluate(beir_dir, "bm25", posthoc="C2x3", use_cache=False)
    from tessera.errors import DataError

    with pytest.raises(DataError, match="unknown CRISP variant"):
        evaluate(beir_dir, str(tiny_checkpoint), posthoc="K9", use_cache=False)


EVAL_ON_DEVICE = [
    ("tiny", {"method": "exact"}),
    ("tiny", {"method": "plaid"}),
    ("tiny", {"method": "xtr"}),
    ("tiny", {"method": "prf"}),
    ("tiny", {"method": "exact", "posthoc": "C2x3"}),
    ("crisp", {"method": "plaid"}),
    ("dense", {"method": "exact"}),
    ("tiny", {"method": "dupmae+rerank", "first_stage": "dense"}),
]


@pytest.mark.parametrize("model,kwargs", EVAL_ON_DEVICE, ids=lambda x: x if isinstance(x, str) else "-".join(
    str(v) for v in x.values()))
def test_evaluation_on_cuda_scores_as_on_the_cpu(beir_dir, tiny_checkpoint, crisp_checkpoint, dense_checkpoint,
                                                  model, kwargs, cuda):
    """``tessera eval --device cuda``: encoders, indexes and baselines on the GPU give the CPU's figures."""
    paths = {"tiny": tiny_checkpoint, "crisp": crisp_checkpoint, "dense": dense_checkpoint}
    kwargs = {k: str(paths[v]) if k == "first_stage" else v for k, v in kwargs.items()}
    on_gpu = evaluate(beir_dir, str(paths[model]), k=100, use_cache=False, device=cuda, **kwargs)
    on_cpu = evaluate(beir_dir, str(paths[model]), k=100, use_cache=False, device="cpu", **kwargs)
    for metric in ("ndcg@10", "recall@100"):
        assert on_gpu[metric] == pytest.approx(on_cpu[metric], abs=0.02), metric
