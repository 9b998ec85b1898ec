"""tools/benchmark.py's orchestration helpers (the measurements themselves are the tool's job)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("fcnseg_benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_wait_until_idle_waits_out_a_busy_worker(benchmark):
    """A process that keeps computing for a second after it was asked (as the pipeline worker's
    prefetch threads do) is waited for; an idle one is not."""
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass\ntime.sleep(60)"])
    try:
        time.sleep(0.3)  # let it start spinning
        waited = benchmark.wait_until_idle(busy.pid)
        assert 0.8 <= waited < 10, waited
        assert benchmark.wait_until_idle(busy.pid) < 0.6  # now asleep
    finally:
        busy.kill()
        busy.wait()
    assert benchmark.wait_until_idle(busy.pid) < 0.1  # gone: nothing to wait for
