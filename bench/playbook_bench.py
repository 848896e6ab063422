"""deploy.yml, rollback.yml and a site.yml re-run on a warm server.

    .venv/bin/python bench/playbook_bench.py [--rounds 3] [--json FILE]

Runs against the throwaway server of inventories/local (`make demo` makes
and warms it: site.yml applied, the demo images loaded, v1 and v2 deployed
once). Each round:

  deploy    deploy.yml to the version that is not live (v1 <-> v2): lock,
            pre-deploy backup, new container on the idle colour, health
            wait, switch, the verify window, record
  onebox    `onebox rollback demo` on the server straight after: the
            standby colour still runs the previous release, one switch
  rollback  deploy.yml again, then rollback.yml: one switch plus the
            verify window, on the path a deploy takes
  site      site.yml again: must change nothing

Targets (issue 11): traffic back on the previous release within 3 s of
ansible-playbook's start (rollback, "new version first s"), within 1 s for
onebox; a deploy of an image already present within app_verify_seconds
(5 s here) + 10 s.

While each playbook runs, a probe asks the public endpoint (127.0.0.1:8080,
Host demo.localhost) for /health every 10 ms and notes which version
answered. Per run: wall time, time from the command's start until the
first and until the last answer switched to the new version, failed
requests, changed count, and the slowest steps (per task, from the
ansible.posix.json callback, which is what profile_tasks shows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

from httpcheck import version_at

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PORT = int(os.environ.get("ONEBOX_LOCAL_HTTP_PORT", "8080"))
HOST = "demo.localhost"


def ask():
    """The version /health names, or None for any failure."""
    return version_at(PORT, "/health", HOST)


class Probe(threading.Thread):
    """Ask /health every INTERVAL seconds; record (time, version or None)."""

    def __init__(self, interval=0.01):
        super().__init__(daemon=True)
        self.interval = interval
        self.answers = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            self.answers.append((t, ask()))
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - t)))


def playbook(name, *extra):
    """Run playbooks/NAME on the local server; (wall s, parsed json, rc)."""
    env = dict(
        os.environ,
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".ansible", "collections"),
    )
    cmd = ["ansible-playbook", "-i", "inventories/local", f"playbooks/{name}", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    try:
        out = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        out = {}
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return t0, wall, out


def steps(out):
    """[(task name, seconds)] of every task that ran, in order."""
    result = []
    for play in out.get("plays", []):
        for task in play["tasks"]:
            d = task["task"].get("duration") or {}
            if "start" in d and "end" in d:
                secs = _stamp(d["end"]) - _stamp(d["start"])
                result.append((task["task"]["name"], secs))
    return result


def _stamp(text):
    """The callback's ISO 8601 time (UTC, Z) as Unix time."""
    return datetime.fromisoformat(text).timestamp()


def changed(out):
    return sum(s.get("changed", 0) for s in out.get("stats", {}).values())


def on_server(*argv):
    """Run a command on the local server; (start, wall s, {})."""
    t0 = time.monotonic()
    proc = subprocess.run(["docker", "exec", "onebox-local", *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed (rc {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return t0, time.monotonic() - t0, {}


def measured(name, new_version, *extra):
    probe = Probe()
    probe.start()
    time.sleep(0.2)
    t0, wall, out = on_server("onebox", "rollback", "demo") if name == "onebox" else playbook(name, *extra)
    time.sleep(0.2)
    probe.stop.set()
    probe.join()
    answers = [(t - t0, v) for t, v in probe.answers if t >= t0]
    failed = sum(1 for _t, v in answers if v is None)
    first_new = next((t for t, v in answers if v == new_version), None)
    last_old = max((t for t, v in answers if v not in (None, new_version)), default=None)
    return {
        "wall_s": round(wall, 2),
        "first_new_s": None if first_new is None else round(first_new, 2),
        "only_new_after_s": None if last_old is None else round(max(last_old, first_new or 0), 2),
        "requests": len(answers),
        "failed": failed,
        "changed": changed(out),
        "steps": [(n, round(s, 2)) for n, s in steps(out)],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--no-site", action="store_true", help="leave out the site.yml re-run (about 85 s a round)")
    args = ap.parse_args()

    runs = {"deploy": [], "onebox": [], "rollback": [], "site": []}
    for r in range(args.rounds):
        before = ask()
        if before not in ("v1", "v2"):
            sys.exit(f"the demo must be live with v1 or v2 first (make demo); /health says {before!r}")
        target = "v2" if before == "v1" else "v1"
        runs["deploy"].append(measured("deploy.yml", target, "-e", "app=demo", "-e", f"version={target}"))
        runs["onebox"].append(measured("onebox", before))
        measured("deploy.yml", target, "-e", "app=demo", "-e", f"version={target}")
        runs["rollback"].append(measured("rollback.yml", before, "-e", "app=demo"))
        if not args.no_site:
            runs["site"].append(measured("site.yml", before))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['wall_s']} s" for k, v in runs.items() if v), flush=True)

    print("\n| playbook | wall s (median) | new version first s | only new after s | failed / requests | changed |")
    print("|---|---:|---:|---:|---:|---:|")
    runs = {k: v for k, v in runs.items() if v}
    for name, rs in runs.items():
        med = statistics.median
        firsts = [x["first_new_s"] for x in rs if x["first_new_s"] is not None]
        onlys = [x["only_new_after_s"] for x in rs if x["only_new_after_s"] is not None]
        label = "onebox rollback" if name == "onebox" else f"{name}.yml"
        worst = max(firsts) if firsts else None
        print(
            f"| {label} | {med([x['wall_s'] for x in rs]):.2f} ({', '.join(str(x['wall_s']) for x in rs)}) "
            f"| {f'{med(firsts):.2f} (worst {worst:.2f})' if firsts and name != 'site' else '-'} "
            f"| {f'{med(onlys):.2f}' if onlys and name != 'site' else '-'} "
            f"| {sum(x['failed'] for x in rs)} / {sum(x['requests'] for x in rs)} "
            f"| {', '.join(str(x['changed']) for x in rs)} |"
        )
    for name, rs in runs.items():
        per_step = {}
        for x in rs:
            for n, s in x["steps"]:
                per_step.setdefault(n, []).append(s)
        top = sorted(((statistics.median(v) * len(v) / len(rs), n) for n, v in per_step.items()), reverse=True)
        total = sum(s for s, _n in top)
        if name == "onebox":
            continue
        print(f"\n{name}.yml, slowest steps (median seconds per run; all steps {total:.2f} s):")
        for s, n in top[:8]:
            print(f"  {s:6.2f}  {n}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(runs, fh, indent=1)


if __name__ == "__main__":
    main()
