"""bench/context_overhead.py runs end to end: it checks the benchmark works, not its timings."""
from __future__ import annotations

import re

import pytest

from tests.support.bench import NUMBER, run_quick

TIMEOUT = 240
#: A row of the table: metric, compared sides, base, value, ratio, target, verdict.
ROW = re.compile(
    rf"^(?P<metric>enqueue|throughput|replay)\b.*?\s{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+.*?"
    r"(?P<verdict>PASS|MISS|info)$",
    re.MULTILINE,
)


@pytest.mark.worker
@pytest.mark.timeout(TIMEOUT + 60)
def test_quick_benchmark_runs_and_prints_the_three_targets_and_the_peer():
    output = run_quick("context_overhead.py", TIMEOUT)
    targets, info = [], []
    for match in ROW.finditer(output):
        base, ours, ratio = (float(match.group(i)) for i in (2, 3, 4))
        assert base > 0 and ours > 0 and ratio > 0, (match.group(0), output)
        (info if match["verdict"] == "info" else targets).append(match["metric"])
    # The three targets: two enqueue cases and throughput, each PASS or MISS.
    assert sorted(targets) == ["enqueue", "enqueue", "throughput"], output
    # The peer's throughput and the replay cost are reported without a target.
    assert {"throughput", "replay"} <= set(info), output
    assert re.search(r"sealed context header: \d+ bytes", output), output
    assert "Traceback" not in output, output
