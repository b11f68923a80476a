"""Start the worker: `python -m jobs_worker` (settings in JOBS_STORE and JOBS_POLL_INTERVAL)."""

from __future__ import annotations

import logging
import sys

import anyio

from .worker import main

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
sys.exit(anyio.run(main))
