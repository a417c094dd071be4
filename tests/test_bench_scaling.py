"""bench/worker_scaling.py runs end to end: it checks the benchmark works, not its timings."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.support.services import ROOT

TIMEOUT = 240
NUMBER = r"(\d+(?:\.\d+)?)"
ROW = re.compile(
    rf"^\s*(?P<workers>\d+)\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s*$",
    re.MULTILINE,
)


@pytest.mark.worker
@pytest.mark.timeout(TIMEOUT + 60)
def test_quick_scaling_benchmark_prints_a_row_per_concurrency():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLASK_SKIP_DOTENV": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "worker_scaling.py"), "--quick"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark stops its worker and its Redis on the way out.
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"the quick benchmark did not finish in {TIMEOUT}s:\n{output}")

    assert process.returncode == 0, output
    rows = {int(m["workers"]): [float(m.group(i)) for i in range(2, 7)] for m in ROW.finditer(output)}
    assert set(rows) == {1, 2, 4}, output
    for workers, values in rows.items():
        assert all(value > 0 for value in values), (workers, output)
    assert "CPUs" in output and "load average" in output, output
    assert "Traceback" not in output, output
