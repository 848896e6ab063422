"""How long a bad release keeps traffic: from its first answer to traffic
back on the good one, at 50 requests/s.

    .venv/bin/python bench/verify_bench.py [--rounds 3] [--root DIR] [--json FILE]

Runs against the throwaway server of inventories/local (`make demo` makes
it), app demo, with the good release live. Each round deploys

  v5   /health fine, / answers 500 to every 5th request
  v6   /health fine, / answers in 0.4 s (the good one: a few ms)

while a paced client asks / at 50 requests/s and notes each answer's
time, status and version. Per run: when the bad version first answered,
when it last answered (traffic back), how many requests it answered (and
how many 5xx), and whether it still answered 5 s after ansible-playbook
ended ("never" switched back). After each run the good version is
redeployed if the bad one stayed live.

--root runs another checkout's playbooks (the code before this change:
its verification window only probed /health).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PORT = int(os.environ.get("ONEBOX_LOCAL_HTTP_PORT", "8080"))
HOST = "demo.localhost"
RATE = 50


def answer():
    """(status, version) of GET / (status 0: no answer)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        conn.request("GET", "/", headers={"Host": HOST})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        try:
            version = json.loads(body).get("version") if resp.status == 200 else None
        except ValueError:
            version = None
        return resp.status, version
    except (OSError, http.client.HTTPException):
        return 0, None


class Client(threading.Thread):
    """GET / at RATE requests/s (paced by start times, 2 threads so a slow
    answer does not lower the rate); bounded to 10 minutes."""

    def __init__(self):
        super().__init__(daemon=True)
        self.events = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _one(self, t):
        status, version = answer()
        with self.lock:
            self.events.append((t, status, version))

    def run(self):
        start = time.monotonic()
        n = 0
        while not self.stop.is_set() and time.monotonic() - start < 600:
            t = start + n / RATE
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            threading.Thread(target=self._one, args=(time.monotonic(),), daemon=True).start()
            n += 1


def deploy(root, version, extra=()):
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=os.path.join(root, ".ansible", "collections"),
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [
        "ansible-playbook",
        "-i",
        "inventories/local",
        "playbooks/deploy.yml",
        "-e",
        "app=demo",
        "-e",
        f"version={version}",
    ]
    cmd += [arg for e in extra for arg in ("-e", e)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    return t0, time.monotonic(), proc.returncode, proc.stdout + proc.stderr


def live_version():
    for _i in range(5):
        status, version = answer()
        if status == 200:
            return version
    return None


def run(root, bad, extra=()):
    good = live_version()
    client = Client()
    client.start()
    time.sleep(1)
    t0, t_end, rc, _out = deploy(root, bad, extra)
    time.sleep(5)
    client.stop.set()
    time.sleep(1)
    with client.lock:
        events = sorted(client.events)
    bad_events = [e for e in events if e[2] == bad or e[1] >= 500]
    figures = {"bad": bad, "good": good, "rc": rc, "playbook_s": round(t_end - t0, 2), "requests": len(events)}
    if bad_events:
        first, last = bad_events[0][0], bad_events[-1][0]
        still = last > t_end + 1
        figures.update(
            bad_answers=len(bad_events),
            errors_5xx=sum(1 for e in bad_events if e[1] >= 500),
            failed_other=sum(1 for e in events if e[1] == 0),
            live_to_back_s=None if still else round(last - first, 2),
            switched_back="never (still live 5 s after the deploy ended)" if still else "yes",
        )
    else:
        figures.update(bad_answers=0, live_to_back_s=0.0, switched_back="never live")
    if live_version() != good:
        # The bad release stayed live (the code before this change): put the good one back.
        deploy(root, good)
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", default=os.path.dirname(HERE), help="the checkout whose playbooks run")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument(
        "-e",
        dest="extra",
        action="append",
        default=[],
        help="extra vars for deploy.yml, such as '{\"app_smoke_checks\": []}' (judge on traffic alone)",
    )
    args = ap.parse_args()
    if live_version() not in ("v1", "v2"):
        raise SystemExit("the demo app must answer v1 or v2 on 127.0.0.1:8080 (make demo)")
    runs = {"v5": [], "v6": []}
    for i in range(args.rounds):
        for bad in runs:
            fig = run(args.root, bad, args.extra)
            runs[bad].append(fig)
            print(f"round {i + 1} {bad}: {json.dumps(fig)}", flush=True)
    summary = {}
    for bad, figs in runs.items():
        backs = [f["live_to_back_s"] for f in figs if f.get("live_to_back_s") is not None]
        summary[bad] = {
            "median_live_to_back_s": statistics.median(backs) if backs else None,
            "worst_live_to_back_s": max(backs) if backs else None,
            "switched_back": sorted({f["switched_back"] for f in figs}),
            "median_bad_answers": statistics.median([f["bad_answers"] for f in figs]),
            "median_5xx": statistics.median([f.get("errors_5xx", 0) for f in figs]),
            "median_playbook_s": statistics.median([f["playbook_s"] for f in figs]),
        }
        print(f"{bad}: {json.dumps(summary[bad])}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"runs": runs, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
