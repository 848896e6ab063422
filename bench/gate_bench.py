"""How often the traffic gates roll back a good release, and how often they
miss a bad one: this checkout's gates against those of an earlier commit,
in the same run, on the same simulated windows.

    .venv/bin/python bench/gate_bench.py [--windows 200] [--rate 50] \
        [--seconds 10 30] [--before ee0c3c8] [--json FILE]

A window is what `Verifier._hold` sees: the previous release's recent
requests (the baseline from HAProxy's ring: as many as each version's
`traffic.baseline` keeps), then the new colour's
requests arriving at --rate a second (Poisson) for --seconds, the gates
asked every 0.1 s as the module asks them, and (for gates that have one)
once more at the end of the window with `final=True`. Response times are
log-normal (median 30 ms, p95 about 68 ms, whole milliseconds as HAProxy
logs them), 5xx independent of each other. Cases (each over --windows
windows, seeded, so both gates see the very same requests):

  good                    as before: no 5xx
  good, 0.5 % 5xx         as before: one request in 200 answers 5xx
  good, 2.5 % 5xx before  the previous release answered 2.5 % 5xx; so does this one
  good, 2 slow early      two requests among the first 20 take 1.5 s
  bad, +3 points          0 % before, 3 % now
  bad, +3 points on 2.5 % 2.5 % before, 5.5 % now
  bad, 3x p95             every response three times as slow
  bad, a fifth 5xx        the demo's v5: every 5th request 500

Per case and gate: the share of windows rolled back, and for the bad cases
the median time into the window at which they were. The earlier commit's
gates are read with `git show REV:plugins/module_utils/traffic.py`. Pure
computation: no server, no network.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TICK = 0.1

CASES = [
    # name, bad?, baseline 5xx share, new 5xx share, new slowdown, slow early
    ("good", False, 0.0, 0.0, 1.0, 0),
    ("good, 0.5 % 5xx", False, 0.005, 0.005, 1.0, 0),
    ("good, 2.5 % 5xx before", False, 0.025, 0.025, 1.0, 0),
    ("good, 2 slow early", False, 0.0, 0.0, 1.0, 2),
    ("bad, +3 points", True, 0.0, 0.03, 1.0, 0),
    ("bad, +3 points on 2.5 %", True, 0.025, 0.055, 1.0, 0),
    ("bad, 3x p95", True, 0.0, 0.0, 3.0, 0),
    ("bad, a fifth 5xx", True, 0.0, 0.2, 1.0, 0),
]


def load_traffic(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def earlier_traffic(rev):
    """module_utils/traffic.py as it was at REV, loaded as a module."""
    text = subprocess.run(
        ["git", "-C", ROOT, "show", f"{rev}:plugins/module_utils/traffic.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fd, path = tempfile.mkstemp(suffix=".py", prefix="traffic_before_")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    try:
        return load_traffic(path, "traffic_before")
    finally:
        os.unlink(path)


def latency(rng, slowdown):
    return round(slowdown * rng.lognormvariate(math.log(30), 0.5))


def kept(traffic):
    """How many of the previous release's requests TRAFFIC's baseline keeps."""
    return inspect.signature(traffic.baseline).parameters["last"].default


def window_requests(rng, case, rate, seconds, history):
    """[(arrival time, status, ms)] of the new colour, and the HISTORY
    requests of the previous release before it."""
    _name, _bad, base_rate, new_rate, slowdown, slow_early = case
    base = [(0.0, 500 if rng.random() < base_rate else 200, latency(rng, 1.0)) for _i in range(history)]
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        out.append((t, 500 if rng.random() < new_rate else 200, latency(rng, slowdown)))
    # Two of the first 20 requests are slow (a cold cache, a JIT warming).
    for i in rng.sample(range(min(20, len(out))), min(slow_early, len(out))):
        out[i] = (out[i][0], out[i][1], 1500)
    return base, out


def fill(traffic, records):
    tally = traffic.Tally()
    for _t, status, ms in records:
        tally.add({"status": status, "tr_ms": ms})
    return tally


def judge_window(traffic, gates, base, requests, seconds, before):
    """(rolled back?, seconds into the window) as Verifier._hold would say."""
    baseline = fill(traffic, base[-kept(traffic) :])
    tally = traffic.Tally()
    i, now = 0, 0.0
    base_p95 = baseline.figures()["p95_ms"] if baseline.requests >= gates.min_requests else None
    while True:
        done = now >= seconds
        while i < len(requests) and requests[i][0] <= now:
            _t, status, ms = requests[i]
            tally.add({"status": status, "tr_ms": ms})
            i += 1
        # Today's gates take the baseline's p95 and have no final judgement.
        reason = gates.judge(tally, base_p95) if before else gates.judge(tally, baseline, final=done)
        if reason:
            return True, now
        if done:
            return False, None
        now = round(now + TICK, 6)


def run_case(case, traffic, gates, windows, rate, seconds, seed, before, history):
    rng = random.Random(seed)
    caught, times = 0, []
    for _window in range(windows):
        base, requests = window_requests(rng, case, rate, seconds, history)
        bad, at = judge_window(traffic, gates, base, requests, seconds, before)
        if bad:
            caught += 1
            times.append(at)
    return {
        "rolled_back": caught,
        "windows": windows,
        "share": round(caught / windows, 4),
        "median_s": round(statistics.median(times), 1) if times else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="new colour's requests a second")
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0], help="window lengths")
    ap.add_argument("--before", default="ee0c3c8", help="the commit whose gates are the baseline")
    ap.add_argument("--json")
    args = ap.parse_args()

    now = load_traffic(os.path.join(ROOT, "plugins", "module_utils", "traffic.py"), "traffic_now")
    before = earlier_traffic(args.before)
    gates = {"before": (before, before.Gates(), True), "now": (now, now.Gates(), False)}
    results = []
    started = time.monotonic()
    history = max(kept(before), kept(now))
    print(
        f"{args.windows} windows per case, {args.rate:g} requests/s; baseline: the previous release's last "
        f"{kept(before)} requests before, {kept(now)} now"
    )
    print(f"{'window':>6}  {'case':<26} {'bad?':<4} {'before: rolled back':>22} {'now: rolled back':>22}")
    for seconds in args.seconds:
        for n, case in enumerate(CASES):
            row = {"window_s": seconds, "case": case[0], "bad": case[1]}
            for label, (traffic, g, is_before) in gates.items():
                row[label] = run_case(case, traffic, g, args.windows, args.rate, seconds, 1000 + n, is_before, history)
            results.append(row)

            def cell(r, bad=case[1]):
                at = f" ({r['median_s']} s)" if r["median_s"] is not None and bad else ""
                return f"{r['rolled_back']}/{r['windows']}{at}"

            print(
                f"{seconds:>5g}s  {case[0]:<26} {'bad' if case[1] else 'good':<4} "
                f"{cell(row['before']):>22} {cell(row['now']):>22}",
                flush=True,
            )
    print(f"({time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            summary = {"windows": args.windows, "rate": args.rate, "before": args.before, "results": results}
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
