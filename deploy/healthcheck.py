"""Container health check: exit 0 when the service answers 200 on /ready, 1 otherwise.

The images have no curl; this needs only the standard library. The port comes from SEQSERVE_BIND (the address
gunicorn listens on, e.g. `0.0.0.0:8000`), so the check follows the service wherever it is told to listen.

    python /app/healthcheck.py [--path /ready] [--timeout 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

DEFAULT_BIND = "127.0.0.1:8000"
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def probe_url(bind: str, path: str) -> str:
    """The loopback URL for the first TCP address in a gunicorn bind list (`host:port[,host:port...]`)."""
    first = bind.split(",")[0].strip()
    if first.startswith(("unix:", "fd://")):
        raise ValueError(f"SEQSERVE_BIND={bind!r}: a health check over HTTP needs a TCP address")
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"SEQSERVE_BIND={bind!r}: expected HOST:PORT")
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="healthcheck", description=__doc__)
    p.add_argument("--path", default="/ready")
    p.add_argument("--timeout", type=float, default=4.0)
    args = p.parse_args(argv)
    try:
        url = probe_url(os.environ.get("SEQSERVE_BIND", DEFAULT_BIND), args.path)
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
