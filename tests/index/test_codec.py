"""Residual codec: sizes, reconstruction quality, centroid assignment."""

from __future__ import annotations

import pytest
import torch

from tessera.index import codec as codec_module
from tessera.index.codec import ResidualCodec, default_ncentroids


@pytest.mark.parametrize("nbits, min_cos", [(1, 0.8), (2, 0.9), (4, 0.97)])
def test_reconstruction_improves_with_bits(corpus, nbits, min_cos):
    v = corpus.docs.vectors[:4000].float()
    codec = ResidualCodec.train(v, nbits=nbits, ncentroids=128, niter=4)
    codes, packed = codec.compress(v)
    assert codes.dtype == torch.int32 and packed.dtype == torch.uint8
    assert packed.shape == (4000, v.shape[1] * nbits // 8)
    rec = codec.decompress(codes, packed)
    assert (rec * v).sum(1).mean() >= min_cos  # unit vectors: mean cosine to the original


def test_128_dims_at_2_bits_cost_36_bytes():
    v = torch.nn.functional.normalize(torch.randn(3000, 128), dim=1)
    codec = ResidualCodec.train(v, nbits=2, ncentroids=64, niter=2)
    codes, packed = codec.compress(v[:10])
    assert codes.element_size() + packed.shape[1] == 36


def test_default_ncentroids_is_half_of_plaids_rule():
    assert default_ncentroids(815_000) == 4096  # PLAID: 8192
    assert default_ncentroids(1_000_000) == 4096
    assert default_ncentroids(10_000_000) == 16384
    assert default_ncentroids(5) == 4


def test_graph_assignment_agrees_with_exact(corpus, monkeypatch):
    v = corpus.docs.vectors.float()
    codec = ResidualCodec.train(v, nbits=2, ncentroids=256, niter=4)
    exact = codec.assign(v)
    monkeypatch.setattr(codec_module, "_HNSW_WORK", 1)
    monkeypatch.setattr(codec_module, "_HNSW_MIN_CENTROIDS", 1)
    graph = codec.assign(v)
    assert codec._hnsw is not None
    assert (graph == exact).float().mean() >= 0.98


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_product_quantiser_same_bytes_lower_error(corpus, nbits):
    """quantizer="pq": the same byte layout (and size) as the per-dimension code, a smaller error."""
    v = corpus.docs.vectors[:4000].float()
    scalar = ResidualCodec.train(v, nbits=nbits, ncentroids=128, niter=4)
    pq = ResidualCodec.train(v, nbits=nbits, ncentroids=128, niter=4, quantizer="pq")
    assert pq.quantizer == "pq" and scalar.quantizer == "scalar"
    assert torch.equal(pq.centroids, scalar.centroids)  # only the residual code differs
    codes, packed = pq.compress(v)
    assert packed.shape == (4000, v.shape[1] * nbits // 8) and packed.dtype == torch.uint8
    rec = pq.decompress(codes, packed)
    err = ((rec - v) ** 2).sum(1).mean()
    assert err == pytest.approx(pq.reconstruction_error(v), rel=1e-5)
    assert err < 0.8 * scalar.reconstruction_error(v)
    # each byte decodes to its codeword: the table is the codebooks, nothing else
    j = 3
    per = 8 // nbits
    torch.testing.assert_close(
        pq._lut.view(-1, 256, per)[j, packed[:, j].long()],
        pq.codebooks[j, packed[:, j].long()],
    )


def test_product_quantiser_round_trips_through_arrays(corpus):
    v = corpus.docs.vectors[:3000].float()
    codec = ResidualCodec.train(v, nbits=2, ncentroids=64, niter=2, quantizer="pq")
    arrays, meta = codec.to_arrays()
    assert meta["quantizer"] == "pq" and arrays["codebooks"].shape == (v.shape[1] // 4, 256, 4)
    again = ResidualCodec.from_arrays(arrays, meta)
    codes, packed = codec.compress(v[:500])
    c2, p2 = again.compress(v[:500])
    assert torch.equal(codes, c2) and torch.equal(packed, p2)
    assert torch.equal(again.decompress(codes, packed), codec.decompress(codes, packed))
    scalar_meta = ResidualCodec.train(v, nbits=2, ncentroids=64, niter=2).to_arrays()[1]
    assert scalar_meta["quantizer"] == "scalar"
    with pytest.raises(ValueError, match="quantizer must be one of scalar, pq"):
        ResidualCodec.train(v, nbits=2, ncentroids=64, quantizer="opq")


@pytest.mark.parametrize("n", [1, 50])
def test_product_quantiser_on_fewer_vectors_than_codewords(n):
    v = torch.nn.functional.normalize(torch.randn(n, 32, generator=torch.Generator().manual_seed(n)), dim=1)
    codec = ResidualCodec.train(v, nbits=2, quantizer="pq")
    rec = codec.decompress(*codec.compress(v))
    assert ((rec - v) ** 2).sum(1).max() < 1e-4
