# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks a web release passes before and after it takes traffic.

- ``smoke``: the app's own paths (``/``, ``/login``, an API route), each with
  the status (and body or JSON field) it must answer; run against the new
  colour's private port before the switch, and through the public endpoint
  once it is live.
- ``canary``: traffic in steps (10 %, 50 %...) by HAProxy weights, each step
  held and judged on the new colour's real requests (module_utils/traffic).
- ``window``: after the switch, the real traffic of the new colour is judged
  (5xx ratio, p95 against the previous colour's) while the health path is
  probed through the public endpoint; a bad verdict switches traffic back at
  once, from here, without waiting for the next task.

Standard library only.
"""

from __future__ import annotations

import time

from .haproxy import HAProxyError, RuntimeClient, Switch, describe_servers, is_healthy
from .health import Expectation, probe
from .traffic import RING, Gates, Tally, Watcher, baseline, ring_history

FULL_WEIGHT = 100


class VerifyError(Exception):
    """A release that failed a check; ``facts`` holds the figures."""

    def __init__(self, message, facts):
        super().__init__(message)
        self.facts = facts


def normalize_checks(checks):
    """The smoke checks as the model gives them -> [(check, Expectation)].
    Raise ValueError naming the bad one."""
    out = []
    for i, check in enumerate(checks or []):
        if isinstance(check, str):
            check = {"path": check}
        if not isinstance(check, dict) or not str(check.get("path", "")).startswith("/"):
            raise ValueError(f"smoke check {i + 1} needs a path starting with '/', got {check!r}")
        unknown = set(check) - {"path", "status", "body_regex", "json_path", "json_value", "method"}
        if unknown:
            raise ValueError(f"smoke check {check['path']}: unknown key(s) {', '.join(sorted(unknown))}")
        status = check.get("status", [200])
        status = status if isinstance(status, list) else [status]
        try:
            expect = Expectation(status, check.get("body_regex"), check.get("json_path"), check.get("json_value"))
        except ValueError as exc:
            raise ValueError(f"smoke check {check['path']}: {exc}") from None
        method = str(check.get("method", "GET")).upper()
        if method not in ("GET", "HEAD"):
            raise ValueError(f"smoke check {check['path']}: method must be GET or HEAD (a check must change nothing)")
        out.append(({"path": check["path"], "method": method}, expect))
    return out


def smoke(base_url, checks, host_header=None, validate_certs=False, timeout=5.0):
    """Run every check once against BASE_URL. Returns the results; raise
    VerifyError listing every failed one."""
    headers = {"Host": host_header} if host_header else {}
    results = []
    for check, expect in checks:
        res = probe(base_url + check["path"], expect, timeout, headers, validate_certs, check["method"])
        results.append(
            {"path": check["path"], "ok": res["ok"], "status": res["status"], "reason": res["reason"], "ms": res["ms"]}
        )
    bad = [r for r in results if not r["ok"]]
    if bad:
        detail = "; ".join(f"{r['path']}: {r['reason']}" for r in bad)
        raise VerifyError(f"smoke checks failed on {base_url}: {detail}", {"smoke": results})
    return results


class Verifier:
    """Canary steps and the verification window of one release."""

    def __init__(
        self,
        socket_path,
        backend,
        server,
        baseline_server=None,
        gates=None,
        skip_paths=(),
        ring=RING,
        state_file=None,
        drain_timeout=30.0,
        clock=time.monotonic,
    ):
        self.client = RuntimeClient(socket_path)
        self.socket_path = socket_path
        self.backend = backend
        self.server = server
        self.baseline_server = baseline_server or None
        self.gates = gates or Gates()
        self.skip_paths = tuple(skip_paths)
        self.ring = ring
        self.state_file = state_file
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.baseline = None

    def read_baseline(self):
        """The previous colour's recent requests, from the ring's history."""
        if not self.baseline_server:
            self.baseline = None
            return None
        records = ring_history(self.client, self.ring, only=f"{self.backend}/{self.baseline_server}")
        self.baseline = baseline(records, self.backend, self.baseline_server, self.skip_paths)
        return self.baseline

    def _switch(self, active, weights):
        switch = Switch(
            self.client,
            self.backend,
            active,
            inactive_state="drain",
            weights=weights,
            health_timeout=15.0,
            drain_timeout=self.drain_timeout,
        )
        out = switch.run()
        if self.state_file:
            self.client.save_state(self.state_file)
        return out

    def switch_back(self, to):
        """All traffic to TO at once (the new colour drains)."""
        self._switch([to], {to: FULL_WEIGHT})
        return time.time()

    def _facts(self, watcher, **extra):
        tally = watcher.tally(self.server)
        bound = self.gates.latency_bound(self.baseline)
        facts = {
            "figures": tally.figures(),
            "baseline": self.baseline.figures() if self.baseline else None,
            "latency_bound_ms": bound,
            "enough_traffic": tally.requests >= self.gates.min_requests,
        }
        facts.update(extra)
        return facts

    def _hold(self, watcher, seconds, probe_fn=None, interval=0.5):
        """Judge the new colour's traffic for SECONDS; probe_fn() every
        INTERVAL (None, or why it failed). Returns (reason or None, seconds
        until the judgement)."""
        start = self.clock()
        next_probe = start
        next_health = start
        while True:
            now = self.clock()
            done = now - start >= seconds
            # The whole sample is judged once more, at the end, with the
            # confidence of a single judgement.
            reason = self.gates.judge(watcher.tally(self.server), self.baseline, final=done)
            if reason:
                return reason, round(now - start, 3)
            if probe_fn and now >= next_probe:
                reason = probe_fn()
                if reason:
                    return reason, round(self.clock() - start, 3)
                next_probe = now + interval
            if not probe_fn and now >= next_health:
                # Canary steps: HAProxy's own checks of the new colour.
                srv = describe_servers(self.client, self.backend).get(self.server)
                if srv and not is_healthy(srv):
                    return (
                        f"HAProxy marked {self.server} {srv['status'] or srv['op_state']} "
                        f"(check {srv['check_status'] or 'none'})",
                        round(now - start, 3),
                    )
                next_health = now + 1.0
            if done:
                return None, round(now - start, 3)
            time.sleep(0.1)

    def canary(self, steps, hold, back_to, sticky_map=None):
        """Traffic to the new colour in STEPS (percent, each below 100), each
        held HOLD seconds and judged; a bad step sends everything back to BACK_TO.
        STICKY_MAP: the haproxy.cfg map whose entry for the backend makes its
        cookie count (a visitor keeps its colour) for as long as the steps last."""
        results = []
        watcher = Watcher(self.socket_path, self.backend, self.ring, self.skip_paths).start()
        if sticky_map:
            out = self.client.command(f"add map {sticky_map} {self.backend} 1").strip()
            if out:
                watcher.stop()
                raise HAProxyError(
                    f"cannot turn on stickiness for {self.backend}: HAProxy said '{out}' for map {sticky_map} "
                    "(re-run site.yml with rollout_sticky set, so haproxy.cfg loads the map)"
                )
        try:
            for pct in steps:
                weights = {self.server: int(pct), back_to: FULL_WEIGHT - int(pct)}
                self._switch([self.server, back_to], weights)
                watcher.reset()
                reason, judged = self._hold(watcher, hold)
                step = {"percent": int(pct), "weights": weights, "held_s": judged}
                step.update(watcher.tally(self.server).figures())
                results.append(step)
                if reason:
                    at = self.switch_back(back_to)
                    raise VerifyError(
                        f"canary step {pct} %: {reason}. All traffic is back on {back_to}.",
                        self._facts(
                            watcher,
                            steps=results,
                            verdict="switched-back",
                            reason=reason,
                            switched_back=True,
                            switched_back_at=at,
                            judged_after_s=judged,
                        ),
                    )
            return self._facts(watcher, steps=results, verdict="passed")
        finally:
            if sticky_map:
                # After the steps the cookie is ignored again: the full switch
                # (or the switch back) moves every visitor.
                self.client.command(f"del map {sticky_map} {self.backend}")
            watcher.stop()

    def window(self, seconds, probe_fn, interval, back_to=None, smoke_fn=None, traffic=True):
        """After the switch: judge the traffic for SECONDS while probing.
        TRAFFIC=False: the probes alone (HAProxy has no request ring yet)."""
        if traffic:
            watcher = Watcher(self.socket_path, self.backend, self.ring, self.skip_paths).start()
        else:
            watcher = NoTraffic()
        start_wall = time.time()
        try:
            reason = smoke_fn() if smoke_fn else None
            judged = 0.0
            if not reason:
                reason, judged = self._hold(watcher, seconds, probe_fn, interval)
            if reason:
                at = self.switch_back(back_to) if back_to else None
                raise VerifyError(
                    reason,
                    self._facts(
                        watcher,
                        verdict="switched-back" if at else "failed",
                        reason=reason,
                        switched_back=bool(at),
                        switched_back_at=at,
                        judged_after_s=judged,
                        started_at=start_wall,
                    ),
                )
            facts = self._facts(watcher, verdict="kept", judged_after_s=judged, started_at=start_wall)
            if not facts["enough_traffic"]:
                facts["note"] = (
                    f"too little traffic to judge ({facts['figures']['requests']} requests, "
                    f"{self.gates.min_requests} needed): the health probes decided"
                )
            return facts
        finally:
            watcher.stop()


class NoTraffic:
    """Stands in for a Watcher when HAProxy has no request ring: no requests seen."""

    def tally(self, _server):
        return Tally()

    def stop(self):
        pass


def health_probe(url, expect, host_header=None, validate_certs=False, timeout=5.0):
    """A probe_fn for the window: None when good, else why not."""
    headers = {"Host": host_header} if host_header else {}
    counter = {"n": 0}

    def run():
        counter["n"] += 1
        res = probe(url, expect, timeout, headers, validate_certs)
        if res["ok"]:
            return None
        return f"health probe {counter['n']} of {url} failed: {res['reason']}"

    run.counter = counter
    return run


__all__ = ["HAProxyError", "Verifier", "VerifyError", "health_probe", "normalize_checks", "smoke"]
