"""Peers run side by side in ``tessera bench search``: embeddings dumped once, a runner subprocess per peer
speaking benchmarks/peers/peer_protocol.py, results merged by name. The peer here is a real (tiny) engine:
brute-force MaxSim in numpy, run by this interpreter in place of a peer's venv."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tessera.cli import main

PROTOCOL = Path(__file__).resolve().parents[2] / "benchmarks" / "peers" / "peer_protocol.py"
RUNNER = """
import argparse, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from peer_protocol import claim_stdout, load_dump, serve

ap = argparse.ArgumentParser()
ap.add_argument("--dump"); ap.add_argument("--index"); ap.add_argument("--threads", type=int)
args = ap.parse_args()
claim_stdout()
print("engine chatter on stdout must not break the protocol")
d = load_dump(args.dump)
vecs = np.asarray(d["vectors"], dtype=np.float32)
doc_of = np.repeat(np.arange(len(d["lengths"])), d["lengths"])

def search(q, k):
    sims = vecs @ d["queries"][q].T  # [T, Lq]
    best = np.full((len(d["lengths"]), sims.shape[1]), -np.inf, dtype=np.float32)
    np.maximum.at(best, doc_of, sims)
    scores = best.sum(1)
    top = np.argsort(-scores, kind="stable")[:k]
    return top.tolist(), scores[top].tolist()

serve(search, {"engine": "numpy-maxsim", "build_s": 0.0, "bytes_per_vector": 256})
"""


def _peers_dir(tmp_path: Path) -> Path:
    peers = tmp_path / "peers"
    (peers / "numpy-maxsim" / "venv" / "bin").mkdir(parents=True)
    shutil.copy(PROTOCOL, peers / "peer_protocol.py")
    (peers / "numpy-maxsim" / "runner.py").write_text(RUNNER)
    (peers / "numpy-maxsim" / "venv" / "bin" / "python").symlink_to(sys.executable)
    return peers


def test_bench_runs_a_peer_side_by_side(tmp_path, capsys):
    args = ["bench", "search", "--synthetic", "6000", "--dim", "32", "--queries", "5", "--ncentroids", "128"]
    args += ["--methods", "exact,plaid", "--exact-queries", "2", "--block", "2", "--json"]
    args += ["--cache", str(tmp_path / "cache"), "--peers", "numpy-maxsim", "--peers-dir", str(_peers_dir(tmp_path))]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"exact", "plaid", "numpy-maxsim"}
    peer = result["numpy-maxsim"]
    assert peer["measured_queries"] == 5 and peer["p50_ms"] > 0
    assert peer["recall@10"] == 1.0  # brute force: the ground truth (60 documents, so no recall@100 check)
    assert peer["ndcg@10"] == result["exact"]["ndcg@10"]
    assert peer["peer"]["engine"] == "numpy-maxsim" and peer["bytes_per_vector"] == 256
    dumps = list((tmp_path / "cache" / "bench").glob("peers-*"))
    assert len(dumps) == 1 and (dumps[0] / "doc_vectors.npy").is_file()


def test_peer_errors_are_clean(tmp_path, capsys):
    base = ["bench", "search", "--synthetic", "2000", "--dim", "32", "--peers-dir", str(tmp_path)]
    assert main([*base, "--peers", "bogus"]) == 2
    assert "unknown peer 'bogus'" in capsys.readouterr().err
    assert main([*base, "--peers", "colbert-ai"]) == 2
    assert "no peer runner" in capsys.readouterr().err
    (tmp_path / "colbert-ai").mkdir()
    (tmp_path / "colbert-ai" / "runner.py").write_text("")
    assert main([*base, "--peers", "colbert-ai"]) == 2
    assert "setup.sh colbert-ai" in capsys.readouterr().err
