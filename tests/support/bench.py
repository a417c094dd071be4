"""Run a benchmark script's quick mode, as the smoke tests of bench/ do."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support.services import ROOT

#: A figure in a benchmark's table.
NUMBER = r"(\d+(?:\.\d+)?)"


def run_quick(script: str, timeout: float) -> str:
    """``python bench/<script> --quick``; its output once it exited 0, else the test fails."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FLASK_SKIP_DOTENV": "1"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: a benchmark stops its workers and its Redis on the way out.
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"the quick {script} did not finish in {timeout}s:\n{output}")
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    return output
