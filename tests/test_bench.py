"""bench/context_overhead.py runs end to end: it checks the benchmark works, not its timings."""
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
    rf"^(?P<metric>enqueue|throughput|replay)\b.*?\s{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+.*?(PASS|MISS)$",
    re.MULTILINE,
)


@pytest.mark.worker
@pytest.mark.timeout(TIMEOUT + 60)
def test_quick_benchmark_runs_and_prints_the_three_metrics():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLASK_SKIP_DOTENV": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "context_overhead.py"), "--quick"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark stops its workers and its Redis on the way out.
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"the quick benchmark did not finish in {TIMEOUT}s:\n{output}")

    assert process.returncode == 0, output
    rows = {}
    for match in ROW.finditer(output):
        rows.setdefault(match["metric"], []).append([float(match.group(i)) for i in (2, 3, 4)])
    assert set(rows) == {"enqueue", "throughput", "replay"}, output
    for metric, values in rows.items():
        for base, ours, ratio in values:
            assert base > 0 and ours > 0 and ratio > 0, (metric, output)
    assert "Traceback" not in output, output
