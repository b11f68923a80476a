"""One runner process for the failure cases: `python child.py STORE_URL`.

Waits until START_AT (epoch seconds) if set, so that many processes start together, then
runs the scenario's changes and prints the report as JSON. Exit codes: 0 done, 3 manual
intervention needed, 4 lock not acquired, 1 any other failure.
"""

from __future__ import annotations

import json
import os
import sys
import time

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

from tests.cases import scenario

from flamingock_async import (
    AsyncRunner,
    LockNotAcquiredError,
    LockSettings,
    ManualInterventionRequiredError,
)


async def main(store_url: str) -> int:
    lock = LockSettings(
        key="cases",
        lease=float(os.environ.get("LEASE", "2")),
        wait_timeout=float(os.environ.get("WAIT_TIMEOUT", "60")),
        poll_interval=0.1,
    )
    runner = AsyncRunner(store_url, scenario.changes(), lock=lock, manifest_cache=False)
    start_at = float(os.environ.get("START_AT", "0"))
    if start_at:
        await anyio.sleep(max(0.0, start_at - time.time()))
    try:
        report = await runner.run()
    except ManualInterventionRequiredError as error:
        print(json.dumps({"manual": error.change_id, "message": str(error)}))
        return 3
    except LockNotAcquiredError as error:
        print(json.dumps({"lock": str(error)}))
        return 4
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main, sys.argv[1]))
