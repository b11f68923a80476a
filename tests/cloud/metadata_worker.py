"""A process racing others on one metadata store; run as a script, not collected.

Usage: python metadata_worker.py METADATA_URL

It opens the store, prints "ready" and waits for a line on stdin, the start signal that lets
every process begin at the same moment. Then it creates the service `org/prj/env/svc` and
the signing secret, unless another process did first. It prints one JSON line: the four ids
and the SHA-256 of the secret, so the secret itself never reaches the test's output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

from flamingock_async.backend._meta import metadata_store_from_url


async def main(url: str) -> None:
    async with metadata_store_from_url(url) as store:
        print("ready", flush=True)
        sys.stdin.readline()
        ids = await store.ensure_service("org", "prj", "env", "svc")
        secret = await store.signing_secret()
    digest = hashlib.sha256(secret.encode()).hexdigest()
    print(json.dumps({"ids": list(ids), "secret_sha256": digest}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
