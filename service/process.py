"""``tessera serve`` as a child process on free local ports: start, wait until SERVING, read metrics, stop.

One helper for everything that runs a real server beside itself: ``tessera demo``, ``tessera bench
service`` and ``tessera bench load``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tessera.errors import TesseraError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``tessera serve --data-dir DIR`` on a free port of ``host``, its output appended to ``log_path``.

    ``api_key`` is passed in the environment (``TESSERA_API_KEYS``), never on the command line where
    ``ps`` shows it; with ``metrics=True`` the Prometheus endpoint listens on a free port too."""

    def __init__(
        self,
        data_dir: str | Path,
        log_path: str | Path,
        *,
        api_key: str | None = None,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
        metrics: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.api_key = api_key
        self.extra_args = list(extra_args or [])
        self.host = host
        self.port = free_port(host)
        self.metrics_port = free_port(host) if metrics else None
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise TesseraError("the server has not been started")
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tessera.cli", "serve", "--data-dir", str(self.data_dir)]
        cmd += ["--host", self.host, "--port", str(self.port)]
        if self.metrics_port is not None:
            cmd += ["--metrics-port", str(self.metrics_port)]
        return cmd + self.extra_args

    def start(self, wait_s: float = 600.0) -> ServerProcess:
        """Start and wait until the health check says SERVING (reconciling a big collection takes a while).

        Raises ``TesseraError`` with the log's last lines when the server exits or is not up in time."""
        from tessera.client import Client, ServiceError

        env = dict(os.environ)
        env.pop("TESSERA_API_KEYS", None)
        if self.api_key:
            env["TESSERA_API_KEYS"] = self.api_key
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + wait_s
        with Client(self.target, timeout=2.0, max_retries=0) as client:
            while True:
                if self.proc.poll() is not None:
                    self._close_log()
                    raise TesseraError(
                        f"the server exited with code {self.proc.returncode} while starting; "
                        f"last lines of {self.log_path}:\n{self.tail()}"
                    )
                try:
                    if client.health(timeout=2.0) == "SERVING":
                        return self
                except ServiceError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise TesseraError(f"the server was not SERVING after {wait_s:.0f} s; see {self.log_path}")
                time.sleep(0.2)

    def metrics(self) -> str:
        """The Prometheus exposition text (needs ``metrics=True``)."""
        if self.metrics_port is None:
            raise TesseraError("this server was started without a metrics endpoint (metrics=True)")
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def tail(self, lines: int = 15) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (drain, flush) and wait; returns the exit code. Killed, with an error, if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TesseraError(f"the server did not stop within {timeout_s:.0f} s of SIGTERM (killed)") from None
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
