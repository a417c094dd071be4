"""bench/context_overhead.py runs end to end: it checks the benchmark works, not its timings."""
from __future__ import annotations

import re

import pytest

from tests.support.bench import NUMBER, run_quick

TIMEOUT = 240
ROW = re.compile(
    rf"^(?P<metric>enqueue|throughput|replay)\b.*?\s{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+.*?(PASS|MISS)$",
    re.MULTILINE,
)


@pytest.mark.worker
@pytest.mark.timeout(TIMEOUT + 60)
def test_quick_benchmark_runs_and_prints_the_three_metrics():
    output = run_quick("context_overhead.py", TIMEOUT)
    rows = {}
    for match in ROW.finditer(output):
        rows.setdefault(match["metric"], []).append([float(match.group(i)) for i in (2, 3, 4)])
    assert set(rows) == {"enqueue", "throughput", "replay"}, output
    for metric, values in rows.items():
        for base, ours, ratio in values:
            assert base > 0 and ours > 0 and ratio > 0, (metric, output)
    assert "Traceback" not in output, output
