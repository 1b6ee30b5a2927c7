"""PackedDocuments against naive per-document lists."""

from __future__ import annotations

import pytest
import torch

from tessera.packed import PackedDocuments

DIM = 4
LENGTHS = [2, 0, 3, 1, 4]


def _docs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(n, DIM, generator=g).half(), torch.randint(0, 50, (n,), generator=g, dtype=torch.int32))
        for n in LENGTHS
    ]


def _pack(docs) -> PackedDocuments:
    return PackedDocuments(
        torch.cat([v for v, _ in docs]) if docs else torch.empty(0, DIM).half(),
        torch.cat([t for _, t in docs]) if docs else torch.empty(0, dtype=torch.int32),
        torch.tensor([len(t) for _, t in docs], dtype=torch.long),
    )


def _assert_holds(packed: PackedDocuments, docs) -> None:
    assert len(packed) == len(docs)
    off = packed.offsets
    for i, (v, t) in enumerate(docs):
        assert torch.equal(packed.doc(i), v)
        assert torch.equal(packed.token_ids[off[i] : off[i + 1]], t)


def test_offsets_len_dim_and_doc():
    docs = _docs()
    packed = _pack(docs)
    assert packed.offsets.tolist() == [0, 2, 2, 5, 6, 10]
    assert packed.dim == DIM and len(packed) == 5
    _assert_holds(packed, docs)


@pytest.mark.parametrize("indices", [[4, 0, 2], [1], [3, 3, 0], [], list(range(5))])
def test_select(indices):
    docs = _docs()
    for idx in (indices, torch.tensor(indices, dtype=torch.long)):
        _assert_holds(_pack(docs).select(idx), [docs[i] for i in indices])


@pytest.mark.parametrize("start,stop", [(0, 5), (1, 4), (2, 3), (1, 2), (4, 5)])
def test_padded(start, stop):
    docs = _docs()
    out, mask = _pack(docs).padded(start, stop)
    part = docs[start:stop]
    lmax = max(len(t) for _, t in part)
    assert out.shape == (len(part), lmax, DIM) and mask.shape == (len(part), lmax)
    assert out.dtype == torch.float32
    for row, (v, _) in enumerate(part):
        n = len(v)
        assert mask[row].tolist() == [True] * n + [False] * (lmax - n)
        assert torch.equal(out[row, :n], v.float())
        assert (out[row, n:] == 0).all()
    assert _pack(docs).padded(0, 5, dtype=torch.float16)[0].dtype == torch.float16


def test_padded_empty_range():
    out, mask = _pack(_docs()).padded(2, 2)
    assert out.shape == (0, 0, DIM) and mask.shape == (0, 0)


def test_concat():
    docs = _docs()
    a, b = _pack(docs[:2]), _pack(docs[2:])
    _assert_holds(PackedDocuments.concat([a, b]), docs)
    _assert_holds(PackedDocuments.concat([b, _pack([]), a]), docs[2:] + docs[:2])
    with pytest.raises(ValueError, match="nothing to concatenate"):
        PackedDocuments.concat([])


def test_save_and_load_round_trip(tmp_path):
    packed = _pack(_docs())
    packed.save(tmp_path / "docs.safetensors")
    loaded = PackedDocuments.load(tmp_path / "docs.safetensors")
    for name in ("vectors", "token_ids", "lengths"):
        a, b = getattr(loaded, name), getattr(packed, name)
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_save_non_contiguous_token_ids(tmp_path):
    docs = _docs()
    wide = torch.stack([torch.cat([t for _, t in docs])] * 2, dim=1)  # [T, 2]; column 0 is a strided view
    packed = PackedDocuments(torch.cat([v for v, _ in docs]), wide[:, 0], torch.tensor(LENGTHS))
    packed.save(tmp_path / "docs.safetensors")
    assert torch.equal(PackedDocuments.load(tmp_path / "docs.safetensors").token_ids, wide[:, 0])


def test_invalid_shapes_raise():
    v, t, n = torch.zeros(5, DIM).half(), torch.zeros(5, dtype=torch.int32), torch.tensor([2, 3])
    with pytest.raises(ValueError, match="2-D"):
        PackedDocuments(torch.zeros(5), t, n)
    with pytest.raises(ValueError, match="token_ids and vectors"):
        PackedDocuments(v, t[:4], n)
    with pytest.raises(ValueError, match="lengths do not add up"):
        PackedDocuments(v, t, torch.tensor([2, 2]))
