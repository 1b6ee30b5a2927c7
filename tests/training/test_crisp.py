"""CRISP clustering against a slow Lloyd reference, gradient flow, indexing hooks, end-to-end training."""

import pytest
import torch
import torch.nn.functional as F
from test_trainer import config as train_config

from tessera.errors import DataError
from tessera.packed import PackedDocuments
from tessera.scoring import maxsim_scores
from tessera.training.checkpoints import load_encoder, save_checkpoint
from tessera.training.crisp import (
    ClusterSpec,
    CRISPModel,
    CRISPObjective,
    cluster,
    kmeans_assign,
    posthoc_documents,
    posthoc_kmeans,
)
from tessera.training.objectives import Batch
from tessera.training.pairs import Example
from tessera.training.trainer import Trainer


def _naive_kmeans(vectors, k, iters):
    """Plain-Python Lloyd: centroids start at tokens floor(j*n/k); an empty cluster keeps its centroid."""
    pts = [v.tolist() for v in vectors]
    n = len(pts)
    k = min(k, n)
    cents = [pts[(j * n) // k] for j in range(k)]

    def nearest(p):
        dists = [sum((a - b) ** 2 for a, b in zip(p, c, strict=True)) for c in cents]
        return dists.index(min(dists))

    for _ in range(iters):
        assign = [nearest(p) for p in pts]
        for c in range(k):
            members = [pts[i] for i in range(n) if assign[i] == c]
            if members:
                cents[c] = [sum(col) / len(members) for col in zip(*members, strict=True)]
    assign = [nearest(p) for p in pts]
    means = {}
    for c in range(k):
        members = [pts[i] for i in range(n) if assign[i] == c]
        if members:
            means[c] = [sum(col) / len(members) for col in zip(*members, strict=True)]
    return assign, means


def _batch(seed=0, b=4, length=9, dim=6):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, length, dim, generator=g), dim=-1)
    valid = torch.rand(b, length, generator=g) > 0.25
    valid[0] = True
    valid[1, 3:] = False  # a short text: 3 tokens at most
    return x, valid


def test_variants_parse():
    assert ClusterSpec.parse("C4x8") == ClusterSpec(query_count=4, doc_count=8)
    assert ClusterSpec.parse("c8x32", iters=2) == ClusterSpec(query_count=8, doc_count=32, iters=2)
    assert ClusterSpec.parse("C0x8") == ClusterSpec(query_count=None, doc_count=8)
    assert ClusterSpec.parse("R0.25") == ClusterSpec(query_ratio=0.25, doc_ratio=0.25)
    assert ClusterSpec.parse("R0.25x0.5") == ClusterSpec(query_ratio=0.25, doc_ratio=0.5)
    for bad in ("C4", "R2", "C4x0", "x", "R0"):
        with pytest.raises(DataError):
            ClusterSpec.parse(bad)


def test_cluster_counts_never_exceed_the_tokens():
    n = torch.tensor([0, 3, 8, 40])
    assert ClusterSpec.parse("C4x8").clusters(n, "doc").tolist() == [0, 3, 8, 8]
    assert ClusterSpec.parse("C4x8").clusters(n, "query").tolist() == [0, 3, 4, 4]
    assert ClusterSpec.parse("R0.25").clusters(n, "doc").tolist() == [0, 1, 2, 10]
    assert ClusterSpec.parse("C0x8").clusters(n, "query") is None


@pytest.mark.parametrize("k,iters", [(1, 3), (3, 0), (3, 4), (5, 2), (20, 4)])
def test_kmeans_matches_naive_lloyd(k, iters):
    x, valid = _batch()
    ks = torch.full((x.shape[0],), k)
    assign = kmeans_assign(x, valid, ks, iters)
    reps, mask = cluster(x, valid, ks, iters)
    for row in range(x.shape[0]):
        pos = valid[row].nonzero().flatten().tolist()
        ref_assign, ref_means = _naive_kmeans(x[row, pos], k, iters)
        assert assign[row, pos].tolist() == ref_assign
        assert (assign[row, ~valid[row]] == -1).all()
        assert sorted(mask[row].nonzero().flatten().tolist()) == sorted(ref_means)
        for c, mean in ref_means.items():
            torch.testing.assert_close(reps[row, c], torch.tensor(mean), rtol=1e-5, atol=1e-6)


def test_short_texts_keep_each_token_and_empty_texts_nothing():
    x, valid = _batch()
    valid[2] = False
    reps, mask = cluster(x, valid, torch.full((4,), 8), iters=3)
    short = x[1, valid[1]]
    assert int(mask[1].sum()) == short.shape[0]
    torch.testing.assert_close(reps[1][mask[1]], short)
    assert not mask[2].any() and torch.isfinite(reps).all()


def test_empty_clusters_are_dropped():
    a, b = F.normalize(torch.tensor([1.0, 0.0]), dim=0), F.normalize(torch.tensor([0.0, 1.0]), dim=0)
    x = torch.stack([a, a, b])[None]  # centroids start at a, a, b: the second one never wins a member
    reps, mask = cluster(x, torch.ones(1, 3, dtype=torch.bool), torch.tensor([3]), iters=2)
    assert mask.tolist() == [[True, False, True]]
    torch.testing.assert_close(reps[0, 0], a)
    torch.testing.assert_close(reps[0, 2], b)
    assert (reps[0, 1] == 0).all()


def test_gradients_flow_through_means_not_assignments():
    x, valid = _batch(seed=5)
    x = x.clone().requires_grad_(True)
    ks = torch.tensor([3, 2, 4, 3])
    reps, mask = cluster(x, valid, ks, iters=3)
    w = torch.randn(reps.shape, generator=torch.Generator().manual_seed(1))
    (reps * w).sum().backward()
    assign = kmeans_assign(x.detach(), valid, ks, 3)
    counts = F.one_hot(assign.clamp(min=0), reps.shape[1]).mul(valid[..., None]).sum(1)
    # means over fixed members: d(sum w . mean_c)/dx_l = w_c / |c| for l in c, and nothing else
    expected = torch.zeros_like(x)
    for row in range(x.shape[0]):
        for pos in range(x.shape[1]):
            c = int(assign[row, pos])
            if c >= 0:
                expected[row, pos] = w[row, c] / counts[row, c]
    torch.testing.assert_close(x.grad, expected)


def _crisp_encoder(encoder, variant):
    spec = ClusterSpec.parse(variant)
    encoder.config = spec.apply(encoder.config)
    encoder.model = CRISPModel.wrap(encoder.model, spec)
    return encoder


def test_index_time_reduction_matches_training_scores(tiny_encoder):
    enc = _crisp_encoder(tiny_encoder, "C3x6")
    queries = ["cancer cells", "a red fish in water"]
    docs = ["cancer cells in mice and human blood", "dog", "blue sun and the moon star over the city"]
    batch = Batch.from_examples([Example(queries[0], docs[:2], ["a", "b"], {"a"}),
                                 Example(queries[1], docs[1:2] + docs[2:], ["b", "c"], {"b"})])
    obj = CRISPObjective("C3x6")
    enc.model.eval()
    with torch.no_grad():
        train_scores = obj.scores(enc, batch)
    q = enc.encode_queries(queries)
    packed = enc.encode_documents(docs)
    assert q.shape == (2, 3, enc.dim)
    assert packed.lengths.tolist() == [6, 4, 6]  # "dog" has 4 tokens: [CLS], marker, dog, [SEP]
    assert (packed.token_ids == -1).all()
    index_scores = maxsim_scores(q, packed)
    cols = [0, 1, 1, 2]
    torch.testing.assert_close(train_scores, index_scores[:, cols], rtol=2e-3, atol=2e-3)


def test_crisp_objective_gradients_reach_projection_and_backbone(tiny_encoder):
    obj = CRISPObjective("R0.5")
    enc = obj.prepare(tiny_encoder)
    assert isinstance(enc.model, CRISPModel) and enc.config.doc_cluster_ratio == 0.5
    batch = Batch.from_examples([Example("cancer cells", ["cancer cells in mice", "dog"], ["a", "b"], {"a"}),
                                 Example("a red fish", ["red fish", "blue sun"], ["c", "d"], {"c"})])
    enc.model.train()
    loss, _ = obj.loss(enc, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert enc.model.linear.weight.grad.abs().sum() > 0
    assert enc.model.backbone.get_input_embeddings().weight.grad.abs().sum() > 0


def test_posthoc_kmeans_baseline():
    x, _ = _batch()
    reps = posthoc_kmeans(x[0], 3)
    assert reps.shape == (3, x.shape[-1])
    assert posthoc_kmeans(x[0, :2], 8).shape == (2, x.shape[-1])


def test_crisp_training_end_to_end_reloads(tmp_path, tiny_bert_dir):
    trainer = Trainer(train_config(tmp_path, tiny_bert_dir, objective="crisp", crisp="C2x4", max_steps=3))
    path = trainer.train()
    loaded = load_encoder(str(path))
    assert isinstance(loaded.model, CRISPModel)
    assert (loaded.config.query_clusters, loaded.config.doc_clusters) == (2, 4)
    q = ["what about red fish"]
    torch.testing.assert_close(loaded.encode_queries(q), trainer.encoder.encode_queries(q),
                               atol=1e-5, rtol=1e-4)
    docs = loaded.encode_documents(["the red fish study of red fish in human data", "dog"])
    assert docs.lengths.max() <= 4 and (docs.token_ids == -1).all()


def test_crisp_starts_from_an_existing_colbert_checkpoint(tmp_path, tiny_bert_dir, tiny_encoder):
    init = save_checkpoint(tiny_encoder, tmp_path / "colbert")
    cfg = train_config(tmp_path, tiny_bert_dir, objective="crisp", crisp="R0.5", init=str(init), max_steps=1)
    path = Trainer(cfg).train()
    loaded = load_encoder(str(path))
    assert isinstance(loaded.model, CRISPModel) and loaded.config.query_cluster_ratio == 0.5
    assert loaded.encode_queries(["red fish"]).shape == (1, 6, 16)  # half of query_maxlen 12


def test_crisp_loss_runs_under_bf16_autocast(tiny_encoder):
    """Mixed precision (``--amp`` on CUDA autocasts to bf16); CPU autocast exercises the same casts."""
    obj = CRISPObjective("C2x4")
    enc = obj.prepare(tiny_encoder)
    batch = Batch.from_examples([Example("cancer cells", ["cancer cells in mice", "dog"], ["a", "b"], {"a"}),
                                 Example("a red fish", ["red fish", "blue sun"], ["c", "d"], {"c"})])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = obj.loss(enc, batch)
    loss.backward()
    assert torch.isfinite(loss) and enc.model.linear.weight.grad.abs().sum() > 0


def test_posthoc_documents_batches_the_per_document_baseline():
    torch.manual_seed(0)
    lengths = torch.tensor([5, 0, 1, 12, 3, 9])
    vecs = F.normalize(torch.randn(int(lengths.sum()), 8), dim=-1).half()
    docs = PackedDocuments(vecs, torch.arange(len(vecs), dtype=torch.int32), lengths)
    for variant, counts in (("C2x4", [4, 0, 1, 4, 3, 4]), ("R0.25", [2, 0, 1, 3, 1, 3])):
        out = posthoc_documents(docs, ClusterSpec.parse(variant), iters=3, batch=4)  # batches cross lengths
        assert out.lengths.tolist() == counts and (out.token_ids == -1).all() and out.vectors.dtype == torch.float16
        for j in range(len(docs)):
            k = counts[j]
            expected = posthoc_kmeans(docs.doc(j).float(), k, iters=3) if k else docs.doc(j).float()
            torch.testing.assert_close(out.doc(j).float(), expected.half().float())
    with pytest.raises(DataError, match="unknown CRISP variant"):
        ClusterSpec.parse("X3")


def test_crisp_objective_scores_match_naive_kmeans_and_maxsim(tiny_encoder):
    """The objective's in-batch scores against plain Python: Lloyd on each text's vectors, then MaxSim
    between the query's and each document's cluster means (empty clusters left out)."""
    enc = _crisp_encoder(tiny_encoder, "C2x3")
    obj = CRISPObjective("C2x3")
    batch = Batch.from_examples([Example("cancer cells in blood", ["cancer cells in mice", "dog"], ["a", "b"], {"a"}),
                                 Example("a red fish", ["red fish and blue sun over water", "sun"], ["c", "d"], {"c"})])
    enc.model.eval()
    with torch.no_grad():
        scores = obj.scores(enc, batch)
        q = enc.query_forward(*enc.tokenize_queries(batch.queries))
        d, keep = enc.document_forward(*enc.tokenize_documents(batch.docs))
    iters = obj.spec.iters
    want = torch.zeros(len(batch.queries), len(batch.docs))
    for i in range(len(batch.queries)):
        _, q_means = _naive_kmeans(q[i], 2, iters)
        for j in range(len(batch.docs)):
            _, d_means = _naive_kmeans(d[j][keep[j]], 3, iters)
            want[i, j] = sum(max(sum(a * b for a, b in zip(qm, dm, strict=True)) for dm in d_means.values())
                             for qm in q_means.values())
    torch.testing.assert_close(scores, want, atol=1e-4, rtol=1e-4)
