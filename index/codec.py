"""Residual compression (ColBERTv2 / PLAID style).

A token vector is stored as the id of its nearest centroid (int32) plus its residual to that
centroid, quantised per dimension to ``nbits`` bits. Per dimension, bucket cut-offs are residual
quantiles at i/2^nbits and reconstruction values are the quantiles at the bucket midpoints. At 2 bits
and dim 128 a vector costs 4 + 32 = 36 bytes. Decompression uses a lookup table from each packed byte
to the reconstruction values of the dimensions it holds, so it is one gather per byte.

``quantizer="pq"`` replaces the per-dimension buckets by a product quantiser over the residual with the
same byte layout: byte j is the id (8 bits) of the nearest of 256 codewords (faiss k-means) for the
8/nbits dimensions that byte holds, so the size, the lookup table and every search method stay the
same; only the table's values are learned jointly per sub-vector instead of per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from tessera.index import kernels
from tessera.index.kernels import take

SUPPORTED_NBITS = (1, 2, 4)
QUANTIZERS = ("scalar", "pq")  # per-dimension buckets (ColBERTv2) or a product quantiser, same bytes
DEFAULT_NBITS = 2
CLUSTERED_NBITS = 4  # cluster representatives (CRISP) lose 1.7-4.7 nDCG@10 points to 2-bit codes, 0.6-2.2 to 4-bit
_CHUNK = 1 << 16  # vectors per assignment / compression block
_HNSW_WORK = 1 << 33  # vectors x centroids above which assignment uses an HNSW graph ...
_HNSW_MIN_CENTROIDS = 16384  # ... when there are this many centroids (below, BLAS is faster)

StopCheck = Callable[[], bool] | None  # polled between k-means iterations and encoding blocks


def default_nbits(clustered: bool) -> int:
    """Residual bits when none are asked for: 4 for a model that stores cluster representatives (few
    vectors per document, each standing for many tokens), 2 otherwise (docs/benchmarks.md)."""
    return CLUSTERED_NBITS if clustered else DEFAULT_NBITS


class Cancelled(Exception):
    """Training or encoding was stopped because the caller's ``should_stop`` returned True."""


def _check(should_stop: StopCheck) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("stopped on request")


CENTROIDS_PER_SQRT = 8  # PLAID/ColBERT use 16


def default_ncentroids(n_vectors: int) -> int:
    """2^floor(log2(8 sqrt(T))), never more than the number of vectors: half of PLAID's 16 sqrt(T).

    With one probed cell per query token (PLAID's ncells=1 at k <= 10), cells of PLAID's size held
    95.5% of the exact top-10 documents of SciFact (815k vectors, 8,192 centroids): a ceiling below
    the 0.97 recall wanted. Half as many centroids hold 98.5%, and k-means takes half the time."""
    if n_vectors <= 1:
        return 1
    k = 2 ** int(math.floor(math.log2(CENTROIDS_PER_SQRT * math.sqrt(n_vectors))))
    while k > n_vectors:
        k //= 2
    return max(1, k)


class ResidualCodec:
    """Centroids plus per-dimension residual quantiser; immutable once trained."""

    def __init__(
        self,
        centroids: torch.Tensor,
        cutoffs: torch.Tensor,
        weights: torch.Tensor,
        nbits: int,
        normalize: bool,
        train_error: float,
        device: str | torch.device = "cpu",
        codebooks: torch.Tensor | None = None,
    ) -> None:
        """``codebooks`` [dim*nbits/8, 256, 8/nbits] makes it a product quantiser (``cutoffs`` and
        ``weights`` are then unused)."""
        if nbits not in SUPPORTED_NBITS:
            raise ValueError(f"nbits must be one of {SUPPORTED_NBITS}, got {nbits}")
        dim = centroids.shape[1]
        per = 8 // nbits
        if dim % per:
            raise ValueError(f"dimension {dim} is not a multiple of {per} (needed for {nbits}-bit codes)")
        self.device = torch.device(device)
        self.centroids = centroids.float().contiguous().to(self.device)
        self.cutoffs = cutoffs.float().contiguous()  # [dim, 2^nbits - 1]
        self.weights = weights.float().contiguous()  # [dim, 2^nbits]
        self.codebooks = None if codebooks is None else codebooks.float().contiguous()  # [B, 256, per]
        self.quantizer = "scalar" if codebooks is None else "pq"
        self.nbits = nbits
        self.normalize = bool(normalize)
        self.train_error = float(train_error)
        self.trained_on = 0  # vectors the centroids were trained on (drives re-training as data grows)
        self.dim = dim
        self.per_byte = per
        self.bytes_per_vector = dim // per
        self._half_sq_norms = 0.5 * (self.centroids**2).sum(1)
        self._hnsw = None  # lazily built graph over the centroids for fast assignment
        # lut[j * 256 + b] = reconstruction values of the `per` dimensions packed in byte j with value b:
        # the codebooks of a product quantiser, or the per-dimension values of the buckets the byte packs.
        shifts = nbits * (per - 1 - torch.arange(per))
        if self.codebooks is not None:
            if self.codebooks.shape != (self.bytes_per_vector, 256, per):
                raise ValueError(
                    f"codebooks must have shape {(self.bytes_per_vector, 256, per)}, got {tuple(self.codebooks.shape)}"
                )
            lut = self.codebooks
        else:
            buckets = (torch.arange(256)[:, None] >> shifts[None, :]) & ((1 << nbits) - 1)  # [256, per]
            dims = torch.arange(self.bytes_per_vector)[:, None] * per + torch.arange(per)[None, :]  # [B, per]
            lut = self.weights[dims[:, None, :], buckets[None, :, :]]  # [B, 256, per]
        self._pq = None  # lazily built faiss.ProductQuantizer (encoding with quantizer="pq")
        self._lut = lut.reshape(self.bytes_per_vector * 256, per).to(self.device)
        self._byte_base = (torch.arange(self.bytes_per_vector, dtype=torch.int32) * 256).to(self.device)
        self._shifts = shifts.to(torch.uint8)

    @property
    def ncentroids(self) -> int:
        return int(self.centroids.shape[0])

    # -- training ---------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        vectors: torch.Tensor,
        nbits: int = 2,
        ncentroids: int | None = None,
        niter: int = 10,
        points_per_centroid: int = 64,
        seed: int = 0,
        device: str | torch.device = "cpu",
        should_stop: StopCheck = None,
        quantizer: str = "scalar",
        holdout: torch.Tensor | None = None,
    ) -> ResidualCodec:
        """Train centroids with faiss k-means on a sample, then residual quantiles (``quantizer="pq"``:
        a faiss product quantiser) on held-out data.

        ``holdout`` [n] bool marks the vectors of whole documents kept out of the k-means sample: the
        training error (the reference of drift detection) is measured on them. Vectors of documents the
        centroids were fitted on are reconstructed far better than those of unseen documents (about 2x
        on SciFact), so an error measured on them would make every new document look drifted.

        With ``should_stop``, k-means runs one iteration per faiss call and the check is polled
        between them (raising ``Cancelled``), so that a background re-training can stop quickly."""
        import faiss

        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")
        n, dim = vectors.shape
        if n == 0:
            raise ValueError("cannot train the index codec on zero vectors")
        k = min(ncentroids or default_ncentroids(n), n)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=gen)
        if holdout is not None and holdout.any() and not holdout.all():
            held_out = vectors[holdout][:65536]
            fit = perm[~holdout[perm]]
            k = min(k, fit.numel())
        else:
            held_out, fit = None, perm
        sample = vectors[fit[: max(k, min(fit.numel(), k * points_per_centroid))]].float()
        norms = vectors[perm[:4096]].float().norm(dim=1)
        normalize = bool(((norms - 1).abs() < 1e-2).all())
        use_gpu = torch.device(device).type == "cuda" and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
        opts = {
            "seed": seed,
            "spherical": normalize,
            "verbose": False,
            "max_points_per_centroid": points_per_centroid,
            "min_points_per_centroid": 1,
            "gpu": use_gpu,
        }
        x = np.ascontiguousarray(sample.numpy())
        if should_stop is None:
            km = faiss.Kmeans(dim, k, niter=niter, **opts)
            km.train(x)
        else:  # one iteration per call, each starting from the previous centroids
            km = faiss.Kmeans(dim, k, niter=1, **opts)
            for it in range(max(1, niter)):
                _check(should_stop)
                km.train(x, init_centroids=km.centroids if it else None)
        centroids = torch.from_numpy(km.centroids.copy())
        # Residual statistics on (up to) 64k vectors.
        held = vectors[perm[-min(n, 65536) :]].float()
        coarse = cls(centroids, torch.zeros(dim, (1 << nbits) - 1), torch.zeros(dim, 1 << nbits), nbits, normalize, 0.0)
        res = (held - centroids[coarse.assign(held, should_stop)]).numpy()
        levels = 1 << nbits
        cut_q = np.arange(1, levels) / levels
        w_q = (np.arange(levels) + 0.5) / levels
        cutoffs = torch.from_numpy(np.quantile(res, cut_q, axis=0).T.astype(np.float32).copy())
        weights = torch.from_numpy(np.quantile(res, w_q, axis=0).T.astype(np.float32).copy())
        codebooks = None
        if quantizer == "pq":
            codebooks = _train_pq(res, coarse.bytes_per_vector, seed)
        codec = cls(centroids, cutoffs, weights, nbits, normalize, 0.0, codebooks=codebooks)
        codec.train_error = codec.reconstruction_error(held if held_out is None else held_out)
        codec.trained_on = n
        return codec.to(device) if torch.device(device).type != "cpu" else codec

    def to(self, device: str | torch.device) -> ResidualCodec:
        moved = ResidualCodec(
            self.centroids.cpu(),
            self.cutoffs,
            self.weights,
            self.nbits,
            self.normalize,
            self.train_error,
            device,
            self.codebooks,
        )
        moved.trained_on = self.trained_on
        return moved

    # -- encoding ---------------------------------------------------------------------------------
    def assign(self, vectors: torch.Tensor, should_stop: StopCheck = None) -> torch.Tensor:
        """Nearest centroid (L2) of each vector, int32. Large CPU jobs search an HNSW graph over the
        centroids (near-exact, many times faster than the full product); small ones are exact."""
        n = vectors.shape[0]
        out = torch.empty(n, dtype=torch.int32)
        use_graph = (
            self.device.type == "cpu" and n * self.ncentroids >= _HNSW_WORK and self.ncentroids >= _HNSW_MIN_CENTROIDS
        )
        bar = tqdm(total=n, desc="assigning centroids", unit="vec", disable=n < 1 << 20, dynamic_ncols=True)
        for i in range(0, n, _CHUNK):
            _check(should_stop)
            v = vectors[i : i + _CHUNK].to(self.device, torch.float32)
            if use_graph:
                _, idx = self._graph().search(np.ascontiguousarray(v.numpy()), 1)
                out[i : i + _CHUNK] = torch.from_numpy(idx[:, 0].astype(np.int32))
            else:
                out[i : i + _CHUNK] = (v @ self.centroids.T - self._half_sq_norms).argmax(1).to(torch.int32).cpu()
            bar.update(v.shape[0])
        bar.close()
        return out

    def _graph(self):
        if self._hnsw is None:
            import faiss

            graph = faiss.IndexHNSWFlat(self.dim, 32)
            graph.hnsw.efConstruction = 80
            graph.add(np.ascontiguousarray(self.centroids.cpu().numpy()))
            graph.hnsw.efSearch = 32
            self._hnsw = graph
        return self._hnsw

    def compress(self, vectors: torch.Tensor, should_stop: StopCheck = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int32 [n], packed residuals uint8 [n, dim*nbits/8])."""
        n = vectors.shape[0]
        codes = self.assign(vectors, should_stop)
        packed = torch.empty(n, self.bytes_per_vector, dtype=torch.uint8)
        for i in range(0, n, _CHUNK):
            v = vectors[i : i + _CHUNK].to(self.device, torch.float32)
            packed[i : i + _CHUNK] = self._pack(v - self.centroids[codes[i : i + _CHUNK].to(self.device).long()])
        return codes, packed

    def _pack(self, res: torch.Tensor) -> torch.Tensor:
        """uint8 [m, dim*nbits/8] codes of residuals [m, dim] (on the CPU)."""
        if self.codebooks is not None:  # nearest codeword per sub-vector (faiss, on the CPU)
            return torch.from_numpy(self._product_quantizer().compute_codes(np.ascontiguousarray(res.cpu().numpy())))
        bucket = (res[:, :, None] > self.cutoffs.to(res.device)[None]).sum(-1)  # [m, dim]
        bucket = bucket.view(-1, self.bytes_per_vector, self.per_byte) << self._shifts.to(res.device).long()
        return bucket.sum(-1).to(torch.uint8).cpu()

    def decompress(self, codes: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """Reconstructed float32 vectors [n, dim] on the codec's device (two gathers, in-place adds)."""
        n = codes.shape[0]
        out = take(self.centroids, codes.to(self.device, torch.int32))  # numpy's gather on CPU: ~1.6x faster
        idx = packed.to(self.device).to(torch.int32) + self._byte_base
        out.view(n, self.bytes_per_vector, self.per_byte).add_(
            take(self._lut, idx.view(-1)).view(n, self.bytes_per_vector, self.per_byte)
        )
        if self.normalize:
            out.mul_(torch.linalg.vector_norm(out, dim=1, keepdim=True).clamp_min_(1e-12).reciprocal_())
        return out

    def score_max(
        self,
        codes: torch.Tensor,
        packed: torch.Tensor,
        pos: torch.Tensor,
        rows: torch.Tensor,
        query: torch.Tensor,
        best: torch.Tensor,
        trusted: bool = False,
        bf16: bool = False,
    ) -> None:
        """In place ``best[rows[i]] = max(best[rows[i]], decompressed vector pos[i] @ query.T)`` for the
        vectors (``codes``, ``packed``) of one segment: one fused pass on CPU where the compiled kernel
        runs (``kernels.gather_max_codes``; ``bf16`` as there), else ``decompress``, a matmul and a
        scatter-max."""
        if pos.numel() == 0:
            return
        if kernels.gather_max_codes(
            self.centroids, codes, packed, self._lut, self.normalize, pos, rows, query, best, trusted, bf16
        ):
            return
        p = pos.to(codes.device)
        kernels.scatter_max(best, rows, kernels.products(self.decompress(take(codes, p), take(packed, p)), query, bf16))

    def _product_quantizer(self):
        """faiss.ProductQuantizer holding ``codebooks`` (for encoding)."""
        if self._pq is None:
            import faiss

            pq = faiss.ProductQuantizer(self.dim, self.bytes_per_vector, 8)
            faiss.copy_array_to_vector(np.ascontiguousarray(self.codebooks.numpy().ravel()), pq.centroids)
            self._pq = pq
        return self._pq

    def reconstruction_error(self, vectors: torch.Tensor) -> float:
        """Mean squared L2 error of compress+decompress (used to detect drift of new data)."""
        if vectors.shape[0] == 0:
            return 0.0
        v = vectors.float().to(self.device)
        rec = self.decompress(*self.compress(v))
        return float(((rec - v) ** 2).sum(1).mean())

    # -- persistence ------------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {
            "centroids": self.centroids.cpu().numpy(),
            "cutoffs": self.cutoffs.numpy(),
            "weights": self.weights.numpy(),
        }
        if self.codebooks is not None:
            arrays["codebooks"] = self.codebooks.numpy()
        meta = {
            "nbits": self.nbits,
            "quantizer": self.quantizer,
            "normalize": self.normalize,
            "train_error": self.train_error,
            "trained_on": self.trained_on,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict, device: str | torch.device = "cpu"):
        codec = cls(
            torch.from_numpy(np.array(arrays["centroids"])),
            torch.from_numpy(np.array(arrays["cutoffs"])),
            torch.from_numpy(np.array(arrays["weights"])),
            int(meta["nbits"]),
            bool(meta["normalize"]),
            float(meta["train_error"]),
            device,
            torch.from_numpy(np.array(arrays["codebooks"])) if meta.get("quantizer", "scalar") == "pq" else None,
        )
        codec.trained_on = int(meta.get("trained_on", 0))
        return codec


def _train_pq(residuals: np.ndarray, m: int, seed: int) -> torch.Tensor:
    """[m, 256, dim/m] codebooks of a faiss product quantiser (m sub-vectors, 8 bits each) trained on
    ``residuals`` [n, dim] float32."""
    import faiss

    n, dim = residuals.shape
    if n < 256:  # faiss needs a point per codeword: repeat a tiny corpus (its residuals then code exactly)
        residuals = np.tile(residuals, (-(-256 // n), 1))
    pq = faiss.ProductQuantizer(dim, m, 8)
    pq.cp.seed = seed
    pq.cp.min_points_per_centroid = 1  # small corpora: fewer than 256 x 39 residuals is fine, just coarser
    pq.verbose = False
    pq.train(np.ascontiguousarray(residuals, dtype=np.float32))
    return torch.from_numpy(faiss.vector_to_array(pq.centroids).reshape(m, 256, dim // m).copy())
