"""bench/worker_scaling.py runs end to end: it checks the benchmark works, not its timings."""
from __future__ import annotations

import re

import pytest

from tests.support.bench import NUMBER, run_quick

TIMEOUT = 240
ROW = re.compile(
    rf"^\s*(?P<workers>\d+)\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s*$",
    re.MULTILINE,
)


@pytest.mark.worker
@pytest.mark.timeout(TIMEOUT + 60)
def test_quick_scaling_benchmark_prints_a_row_per_concurrency():
    output = run_quick("worker_scaling.py", TIMEOUT)
    rows = {int(m["workers"]): [float(m.group(i)) for i in range(2, 7)] for m in ROW.finditer(output)}
    assert set(rows) == {1, 2, 4}, output
    for workers, values in rows.items():
        assert all(value > 0 for value in values), (workers, output)
    assert "CPUs" in output and "load average" in output, output
    assert "Traceback" not in output, output
