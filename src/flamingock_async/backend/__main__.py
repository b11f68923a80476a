"""`python -m flamingock_async.backend`: the same commands as `flamingock serve`."""

from __future__ import annotations

from .cli import serve

if __name__ == "__main__":
    serve(prog_name="python -m flamingock_async.backend")
