"""Clients nobody here wrote work against the server: Node.js @grpc/grpc-js with @grpc/proto-loader
reading proto/, and grpc-requests (a generic client driven by server reflection)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from service_helpers import make_docs, start_server

from tessera.client import Client

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parents[1] / "proto"
NODE_DIR = HERE / "node_client"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    srv = start_server(tmp_path_factory.mktemp("foreign"))
    with Client(f"127.0.0.1:{srv.port}") as c:
        c.create_collection("sci", str(tiny_model_dir))
        c.upsert("sci", make_docs(40))
    yield srv
    srv.stop()


def _node_client() -> Path:
    """The Node test client with its npm packages installed (cached by the package.json content)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("Node.js client test skipped: `node` and `npm` are not on PATH (install Node.js >= 18)")
    spec = (NODE_DIR / "package.json").read_bytes()
    cache = Path(os.environ.get("TESSERA_CACHE_DIR", Path.home() / ".cache" / "tessera"))
    folder = cache / f"node-client-{hashlib.sha256(spec).hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "client.js"):
        shutil.copy(NODE_DIR / name, folder / name)
    if not (folder / "node_modules" / "@grpc" / "grpc-js").is_dir():
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--silent"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(
                "Node.js client test skipped: `npm install` took more than 5 minutes (registry unreachable?)"
            )
        if done.returncode != 0:
            pytest.skip(
                f"Node.js client test skipped: `npm install` failed (registry unreachable?): "
                f"{done.stderr[-500:]}"
            )
    return folder / "client.js"


def test_node_grpc_js_client(server):
    script = _node_client()
    target = f"127.0.0.1:{server.port}"
    done = subprocess.run(
        ["node", str(script), target, str(PROTO_ROOT), "sci", "protein expression in cancer cells"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["collections"] == ["sci"]
    with Client(target) as c:
        want = c.search("sci", "protein expression in cancer cells", k=5, method="plaid", fields=["text"])
        want_en = c.search(
            "sci", "protein expression in cancer cells", k=5, method="exact", filter={"lang": "en"}
        )
    hits = out["search"]["result"]["hits"]
    assert [h["id"] for h in hits] == want.ids
    assert [h["text"] for h in hits] == [h.text for h in want]
    assert hits[0]["metadata"]["fields"]["lang"]["stringValue"] in ("en", "fr", "de")
    assert [h["id"] for h in out["filtered"]["result"]["hits"]] == want_en.ids
    assert out["bad_k"]["error"] == {
        "code": "INVALID_ARGUMENT",
        "details": "options.k: must be positive, got 0",
    }
    assert out["unknown"]["error"]["code"] == "NOT_FOUND"


def test_reflection_client_lists_services_and_searches(server):
    grpc_requests = pytest.importorskip("grpc_requests", reason="grpc-requests (dev extra) is not installed")
    client = grpc_requests.Client.get_by_endpoint(f"127.0.0.1:{server.port}")
    assert {"tessera.v1.Tessera", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
        client.service_names
    )
    methods = set(client.service("tessera.v1.Tessera").method_names)
    assert {"Search", "BatchSearch", "BulkUpsert", "Rerank", "CreateCollection", "Stats"} <= methods
    resp = client.request(
        "tessera.v1.Tessera",
        "Search",
        {"collection": "sci", "query": {"text": "blood tumor"}, "options": {"k": 3, "fields": ["text"]}},
    )
    with Client(f"127.0.0.1:{server.port}") as c:
        want = c.search("sci", "blood tumor", k=3, fields=["text"])
    assert [h["id"] for h in resp["result"]["hits"]] == want.ids
    assert resp["result"]["hits"][0]["text"] == want[0].text
    health = client.request("grpc.health.v1.Health", "Check", {"service": "tessera.v1.Tessera"})
    assert health["status"] == "SERVING"
