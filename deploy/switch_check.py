"""Check that a running service takes a new model version without a failed request.

Sends predictions to NAME without a version (the newest ready one answers) in a loop; after `--after` answers it
starts COMMAND (which publishes the new version, or signals the server) and keeps sending while it runs. Passes
when COMMAND exited with 0, every prediction answered 200, and `--expect` answered `--streak` times in a row.
Used by deploy/image-test.sh and deploy/export-test.sh:

    python3 deploy/switch_check.py --url http://127.0.0.1:19080 --model basicmotions --expect 2 -- COMMAND...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

BODY = json.dumps({"sequences": [[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]]}).encode()


def call(url: str, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"{}")
    except OSError as exc:  # refused or reset: the worst kind of failure here
        return 0, {"error": str(exc)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="switch_check", description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--expect", required=True, help="the version that must end up answering")
    p.add_argument("--after", type=int, default=20, help="predictions before COMMAND starts")
    p.add_argument("--streak", type=int, default=20, help="answers in a row from --expect that end the check")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    answers: list[tuple[int, str | None]] = []
    ready: Counter[int] = Counter()
    process: subprocess.Popen[bytes] | None = None
    started = first = None
    streak = 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and (streak < args.streak or process is None or process.poll() is None):
        if len(answers) == args.after:
            print(f"after {len(answers)} predictions: {' '.join(command)}", flush=True)
            process, started = subprocess.Popen(command), time.monotonic()
        code, answer = call(f"{args.url}/v1/models/{args.model}/predict", BODY)
        answers.append((code, answer.get("model_version")))
        ready[call(f"{args.url}/ready")[0]] += 1
        streak = streak + 1 if answers[-1] == (200, args.expect) else 0
        if first is None and started is not None and answers[-1][1] == args.expect:
            first = time.monotonic() - started
        time.sleep(0.05)
    status = process.wait(timeout=max(1.0, deadline - time.monotonic())) if process else None

    failed = Counter(code for code, _ in answers if code != 200)
    print(f"{len(answers)} predictions; not 200: {dict(failed) or 'none'}")
    print(f"versions that answered: {dict(Counter(v for _, v in answers))}")
    first_text = "never" if first is None else f"{first:.1f} s after the command started"
    print(f"first answer from version {args.expect}: {first_text}")
    print(f"/ready while it happened: {dict(ready)}")
    problems = [
        f"command exited with {status}" if status != 0 else "",
        "failed predictions" if failed else "",
        f"version {args.expect} did not answer {args.streak} times in a row" if streak < args.streak else "",
    ]
    for problem in filter(None, problems):
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if any(problems) else 0


if __name__ == "__main__":
    raise SystemExit(main())
