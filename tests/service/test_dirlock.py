"""One process at a time opens a data directory; the lock goes with the process, even on SIGKILL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tessera.service.dirlock import DataDirInUse, DataDirLock
from tessera.service.engine import Engine

HOLD = """
import sys, time
from tessera.service.engine import Engine
e = Engine(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


def test_second_engine_on_the_same_folder_is_refused_until_the_first_closes(tmp_path):
    first = Engine(tmp_path)
    with pytest.raises(DataDirInUse, match="in use by another process"):
        Engine(tmp_path)
    first.close()
    Engine(tmp_path).close()


def test_lock_of_a_killed_process_is_released(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(DataDirInUse, match=f"pid {proc.pid}"):
            DataDirLock(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    DataDirLock(tmp_path).release()
