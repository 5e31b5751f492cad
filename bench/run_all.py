"""Run every benchmark, one after another, each in its own process: `python -m bench.run_all`.

Prints each benchmark's table as it finishes (Markdown, ready for the README) and exits non-zero if
any benchmark crashed. Everything runs against local fakes on 127.0.0.1 and stops by itself.
`--quick` uses small counts (a smoke run of a minute or two instead of several minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench._common import ROOT

# (module, full-run arguments, quick-run arguments)
BENCHMARKS: tuple[tuple[str, list[str], list[str]], ...] = (
    ("bench.ledger", [], ["--count", "300", "--prefill", "1000"]),
    ("bench.imaging_speed", [], ["--repeat", "2", "--repeat-large", "1"]),
    ("bench.peer_openai", [], ["--count", "5", "--rounds", "1"]),
    ("bench.overhead", [], ["--count", "3"]),
    ("bench.ack_latency", [], ["--count", "30"]),
    ("bench.concurrency", [], ["--levels", "1", "10"]),
    ("bench.concurrency", ["--format", "jpeg"], ["--levels", "10", "--format", "jpeg"]),
    ("bench.bursts", [], ["--count", "10"]),
    # Needs PostgreSQL (RETOUCH_TEST_DATABASE_URL); says so and passes without it.
    ("bench.shard_takeover", [], ["--lease", "6", "--runs", "1"]),
    ("bench.job_takeover", [], ["--lease", "6", "--runs", "1"]),
    ("bench.burst_memory", [], ["--count", "50"]),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", nargs="*", default=[], help="module names to run, e.g. bench.ledger")
    args = parser.parse_args()
    failed = []
    for module, full, quick in BENCHMARKS:
        if args.only and module not in args.only:
            continue
        command = [sys.executable, "-m", module, *(quick if args.quick else full)]
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, check=False)
        print(f"\n({' '.join(command[1:])}: {time.monotonic() - started:.0f} s)", flush=True)
        if result.returncode != 0:
            failed.append(module)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
