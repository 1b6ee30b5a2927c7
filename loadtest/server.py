"""A ``tessera serve`` child process for load tests: start, wait until SERVING, sample its memory, stop."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tessera.errors import TesseraError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (threads included), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """``tessera serve --data-dir DIR`` on a free local port, logging to ``log_path``."""

    def __init__(
        self,
        data_dir: str | Path,
        log_path: str | Path,
        *,
        api_key: str | None = None,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.api_key = api_key
        self.extra_args = list(extra_args or [])
        self.host = host
        self.port = free_port(host)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tessera.cli", "serve", "--data-dir", str(self.data_dir)]
        cmd += ["--host", self.host, "--port", str(self.port), *self.extra_args]
        return cmd

    def start(self, wait_s: float = 600.0) -> ServerProcess:
        """Start and wait until the health check says SERVING (reconciling a big collection takes a while)."""
        from tessera.client import Client, ServiceError

        env = dict(os.environ)
        env.pop("TESSERA_API_KEYS", None)
        if self.api_key:
            env["TESSERA_API_KEYS"] = self.api_key  # not on the command line, where `ps` shows it
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + wait_s
        with Client(self.target, timeout=2.0, max_retries=0) as client:
            while True:
                if self.proc.poll() is not None:
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
                time.sleep(0.25)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (drain, flush), wait; returns the exit code. Killed (and an error) if it hangs."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TesseraError(f"the server did not stop within {timeout_s:.0f} s of SIGTERM (killed)") from None
        code = self.proc.returncode
        self._close_log()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ResourceSampler:
    """Samples a process's RSS and CPU use, and the machine's load average, to a CSV every ``every_s``."""

    COLUMNS = ("time_s", "elapsed_s", "rss_mb", "cpu_pct", "loadavg_1m")

    def __init__(self, pid: int, path: str | Path, every_s: float = 5.0) -> None:
        self.pid = pid
        self.path = Path(path)
        self.every_s = every_s
        self.rows: list[tuple[float, float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = last_t = time.monotonic()
        last_cpu = cpu_seconds(self.pid) or 0.0
        with self.path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(self.COLUMNS)
            while True:
                rss, cpu = rss_mb(self.pid), cpu_seconds(self.pid)
                if rss is None or cpu is None:
                    return
                now = time.monotonic()
                pct = 100.0 * (cpu - last_cpu) / (now - last_t) if now > last_t else 0.0
                load = float(Path("/proc/loadavg").read_text().split()[0])
                row = (round(time.time(), 1), round(now - t0, 1), round(rss, 1), round(pct, 1), load)
                self.rows.append(row)
                out.writerow(row)
                fh.flush()
                last_t, last_cpu = now, cpu
                if self._stop.wait(self.every_s):
                    return

    def stop(self) -> list[tuple[float, float, float, float, float]]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.rows
