"""bench/export_scaling.py runs end to end: it checks the benchmark works, not its timings."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.bench import NUMBER, run_quick
from tests.support.services import ROOT

TIMEOUT = 180
#: posts, ours s, naive s, time x, ours MB, naive MB, mem x, ours +MB, naive +MB
ROW = re.compile(
    rf"^\s*(?P<posts>\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x"
    rf"\s+(-?\d+(?:\.\d+)?)\s+(-?\d+(?:\.\d+)?)\s*$",
    re.MULTILINE,
)
#: posts, s3 s, ours s, s3/ours, s3 MB, s3 +MB
S3_ROW = re.compile(
    rf"^\s*(?P<posts>\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}\s+(-?\d+(?:\.\d+)?)\s*$",
    re.MULTILINE,
)
QUICK_SIZES = (2000, 20000)


@pytest.mark.timeout(TIMEOUT + 30)
def test_quick_benchmark_runs_and_prints_a_row_per_size():
    output = run_quick("export_scaling.py", TIMEOUT)
    rows = {int(match["posts"]): [float(match.group(i)) for i in range(2, 10)] for match in ROW.finditer(output)}
    assert sorted(rows) == list(QUICK_SIZES), output
    for posts, (ours_s, naive_s, time_x, ours_mb, naive_mb, mem_x, _ours_growth, _naive_growth) in rows.items():
        assert ours_s > 0 and naive_s > 0 and time_x > 0, (posts, output)
        # Whole-process peaks: an interpreter with Flask and SQLAlchemy loaded is tens of MB.
        assert ours_mb > 10 and naive_mb > 10 and mem_x > 0, (posts, output)
    s3_table = output[output.index("s3: ours streamed"):]
    s3_rows = {int(match["posts"]): [float(match.group(i)) for i in range(2, 7)]
               for match in S3_ROW.finditer(s3_table)}
    assert sorted(s3_rows) == list(QUICK_SIZES), output
    for posts, (s3_s, _ours_s, ratio, s3_mb, _growth) in s3_rows.items():
        assert s3_s > 0 and ratio > 0 and s3_mb > 10, (posts, output)
    # The targets are set for 1M posts: a quick run says so rather than judging 20k posts.
    assert "not measured" in output, output
    assert "PASS" not in output and "MISS" not in output, output


def test_a_bad_size_is_an_error_not_a_run():
    process = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "export_scaling.py"), "--sizes", "0,abc"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert process.returncode != 0
    assert "sizes" in process.stderr
