"""A remote worker: ``python -m pyper.worker nats://10.0.0.1:4222`` (or the console script
``pyper-worker``). It serves every remote run whose functions it can import, from its
working directory and ``sys.path``, ``workers`` items of each at once, until it is
stopped (Ctrl-C, SIGTERM: the items it held go to other workers). Credentials come from
the URL or the ``PYPER_NATS_*`` variables (README, "Remote tasks")."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

from . import _engine


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyper.worker",
        description="Serve the remote tasks of pyper pipelines (task(f, remote=...)).")
    parser.add_argument("url", nargs="?", default=os.environ.get("PYPER_NATS_URL"),
                        help="the NATS server's URL (default: $PYPER_NATS_URL)")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give the server's URL, or set PYPER_NATS_URL")
    # Functions are imported as a script beside them would import them.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # The engine serves with the interpreter released, and never returns to check for
    # signals: Ctrl-C and SIGTERM end the process at once, as they end a Rust worker.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _engine.serve_worker(args.url)
    except RuntimeError as error:
        print(f"pyper.worker: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
