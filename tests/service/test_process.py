"""``tessera.service.process.ServerProcess``: a real ``tessera serve`` child, health, metrics, API key, stop."""

from __future__ import annotations

import pytest

from tessera.client import Client, ServiceError
from tessera.errors import TesseraError
from tessera.service.process import ServerProcess


def test_start_metrics_key_and_clean_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_API_KEYS", "someone-elses-key")  # the child gets only the key given here
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", api_key="k1", metrics=True)
    with server:
        assert server.pid > 0
        assert "tessera_requests_in_flight" in server.metrics()
        with Client(server.target, api_key="k1", timeout=10.0) as client:
            assert client.list_collections() == []
        with Client(server.target, api_key="someone-elses-key", timeout=10.0, max_retries=0) as client:
            with pytest.raises(ServiceError) as err:
                client.list_collections()
            assert err.value.code == "UNAUTHENTICATED"
    assert server.proc.returncode == 0
    assert server.log_path.stat().st_size > 0


def test_failed_start_reports_the_log(tmp_path):
    missing = str(tmp_path / "missing.pem")
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", extra_args=["--tls-cert", missing, "--tls-key", missing]
    )
    with pytest.raises(TesseraError, match="exited with code"):
        server.start(60.0)
    with pytest.raises(TesseraError, match="without a metrics endpoint"):
        server.metrics()
