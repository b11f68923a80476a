"""Start worker processes that begin their work together, and collect their JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_together(commands: list[list[str]], timeout: float = 180.0) -> list[dict[str, Any]]:
    """Run each command as a Python script; return the last JSON line each one printed.

    Every worker prints "ready" once it is set up and then waits for a line on stdin, which
    is sent to all of them only when all are ready, so that their work starts together.
    """
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    processes = [
        subprocess.Popen(
            [sys.executable, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for command in commands
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line == "ready", process.communicate(timeout=timeout)[1]
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            output, errors = process.communicate(timeout=timeout)
            assert process.returncode == 0, errors
            results.append(json.loads(output.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results
