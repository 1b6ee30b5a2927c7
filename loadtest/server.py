"""Load-test helpers around a ``tessera serve`` child process (``tessera.service.process.ServerProcess``):
its memory and CPU sampled to a CSV."""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path


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
