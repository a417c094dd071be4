"""Process hygiene for whatever starts servers here: tests, benchmarks, `make run`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys


def die_with_parent(signum: int = signal.SIGKILL):
    """A ``preexec_fn``: on Linux the child gets ``signum`` when its parent dies, however
    it dies, so a killed test run or benchmark leaves no worker behind; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None

    def _set_parent_death_signal() -> None:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signum)

    return _set_parent_death_signal


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process's group (it was started with ``start_new_session``), wait, then
    SIGKILL; and SIGKILL the group once more, so no child (a prefork pool) survives."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
