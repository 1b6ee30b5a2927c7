"""The shipped `default` model: small files in the repo, loadable offline by name."""

from __future__ import annotations

import torch

from tessera.training.checkpoints import PRETRAINED_DIR, load_encoder

DEFAULT_DIR = PRETRAINED_DIR / "default"


def test_default_model_files_are_small():
    files = [p for p in DEFAULT_DIR.rglob("*") if p.is_file()]
    assert (DEFAULT_DIR / "tessera.json").is_file() and files
    assert sum(p.stat().st_size for p in files) < 5 * 1024 * 1024


def test_default_model_loads_by_name_and_ranks_sensibly():
    enc = load_encoder("default")
    assert enc.dim == 128 and enc.config.query_maxlen == 32 and enc.config.doc_maxlen == 180
    docs = enc.encode_documents(
        [
            "Aspirin irreversibly inhibits cyclooxygenase, reducing platelet aggregation.",
            "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
        ],
        progress=False,
    )
    q = enc.encode_queries(["Does aspirin affect platelet aggregation?"])
    assert q.shape == (1, 32, 128)
    assert torch.allclose(q.norm(dim=-1), torch.ones(1, 32), atol=1e-3)
    from tessera.scoring import maxsim_scores

    scores = maxsim_scores(q, docs)[0]
    assert scores[0] > scores[1]
