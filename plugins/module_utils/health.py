# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting for services to be healthy: HTTP endpoints and Docker HEALTHCHECKs.

Standard library only.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

BODY_LIMIT = 65536
EXCERPT = 300


class HealthError(Exception):
    """A wait that cannot succeed or did not succeed in time."""


def parse_status_codes(values):
    """[200, "200-299", "204"] -> a set of ints. Raise ValueError on junk."""
    codes = set()
    for value in values or [200]:
        text = str(value).strip()
        if re.fullmatch(r"\d{3}", text):
            codes.add(int(text))
        elif re.fullmatch(r"\d{3}-\d{3}", text):
            low, high = (int(x) for x in text.split("-"))
            if low > high:
                raise ValueError(f"status range '{text}' is backwards")
            codes.update(range(low, high + 1))
        else:
            raise ValueError(f"status code '{value}' is neither NNN nor NNN-NNN")
    return codes


def json_lookup(doc, path):
    """Follow a dotted path ("build.version", "items.0.name") in parsed JSON."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise KeyError(path)
    return cur


def _same(actual, wanted):
    if isinstance(actual, bool) or isinstance(wanted, bool):
        return str(actual).lower() == str(wanted).lower()
    return actual == wanted or str(actual) == str(wanted)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Expectation:
    def __init__(self, status_codes=None, body_regex=None, json_path=None, json_value=None):
        self.status_codes = parse_status_codes(status_codes)
        try:
            self.body_regex = re.compile(body_regex) if body_regex else None
        except re.error as exc:
            raise ValueError(f"body_regex /{body_regex}/ is not a valid regular expression: {exc}") from None
        self.json_path = json_path
        self.json_value = json_value

    def judge(self, status, body):
        """Return None when the answer is good, else why it is not."""
        if status not in self.status_codes:
            return f"HTTP {status}, expected {describe_codes(self.status_codes)}"
        if self.body_regex and not self.body_regex.search(body):
            return f"body does not match /{self.body_regex.pattern}/"
        if self.json_path:
            try:
                value = json_lookup(json.loads(body), self.json_path)
            except ValueError:
                return "body is not JSON"
            except KeyError:
                return f"JSON has no field '{self.json_path}'"
            if self.json_value is not None and not _same(value, self.json_value):
                return f"{self.json_path} is {value!r}, expected {self.json_value!r}"
        return None


def describe_codes(codes):
    codes = sorted(codes)
    if len(codes) > 3 and codes[-1] - codes[0] + 1 == len(codes):
        return f"{codes[0]}-{codes[-1]}"
    return "/".join(str(c) for c in codes)


def probe(url, expect, timeout=5.0, headers=None, validate_certs=True, method="GET", follow_redirects=False):
    """One request. Returns a dict: ok, status, body (excerpt), error, ms."""
    handlers = [] if follow_redirects else [_NoRedirect()]
    if url.startswith("https://"):
        context = ssl.create_default_context() if validate_certs else ssl._create_unverified_context()
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    t0 = time.monotonic()
    status, body, error = None, "", None
    try:
        with opener.open(req, timeout=timeout) as resp:
            status = resp.status
            body = resp.read(BODY_LIMIT).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(BODY_LIMIT).decode("utf-8", "replace")
        except (OSError, ValueError):
            body = ""
    except urllib.error.URLError as exc:
        error = str(exc.reason)
    except (socket.timeout, TimeoutError):
        error = f"timed out after {timeout:g} s"
    except (OSError, ValueError) as exc:
        error = str(exc) or exc.__class__.__name__
    ms = round((time.monotonic() - t0) * 1000.0, 1)
    if error and "timed out" in error:
        error = f"timed out after {timeout:g} s"
    reason = error if error else expect.judge(status, body)
    return {"ok": reason is None, "status": status, "body": body[:EXCERPT], "error": error, "reason": reason, "ms": ms}


def wait_urls(
    urls,
    expect,
    successes=1,
    interval=1.0,
    timeout=5.0,
    deadline=60.0,
    initial_delay=0.0,
    headers=None,
    validate_certs=True,
    method="GET",
    follow_redirects=False,
    max_failures=0,
    clock=time.monotonic,
    sleep=time.sleep,
):
    """Poll every URL until each has ``successes`` good answers in a row.
    With ``max_failures``, stop as soon as that many bad answers were seen
    (a verification window that must not tolerate errors)."""
    start = clock()
    if initial_delay:
        sleep(initial_delay)
    streak = {u: 0 for u in urls}
    last = {u: None for u in urls}
    attempts = 0
    failures = 0
    while True:
        for url in urls:
            if streak[url] >= successes:
                continue
            result = probe(url, expect, timeout, headers, validate_certs, method, follow_redirects)
            attempts += 1
            last[url] = result
            streak[url] = streak[url] + 1 if result["ok"] else 0
            failures += 0 if result["ok"] else 1
            if max_failures and failures >= max_failures:
                raise HealthError(
                    f"{failures} bad answer(s) after {attempts} attempts (max_failures={max_failures}). "
                    f"{_describe_last(url, result)}",
                    {"attempts": attempts, "elapsed": round(clock() - start, 3), "last": last},
                )
        if all(n >= successes for n in streak.values()):
            return {"attempts": attempts, "elapsed": round(clock() - start, 3), "last": last}
        if clock() - start + interval > deadline:
            failing = [u for u in urls if streak[u] < successes]
            detail = "; ".join(_describe_last(u, last[u]) for u in failing)
            raise HealthError(
                f"not healthy within {deadline:g} s after {attempts} attempts "
                f"(wanted {successes} good answer(s) in a row). {detail}",
                {"attempts": attempts, "elapsed": round(clock() - start, 3), "last": last},
            )
        sleep(interval)


def _describe_last(url, result):
    if result is None:
        return f"{url}: never tried"
    if result["error"]:
        return f"{url}: {result['error']}"
    text = f"{url}: {result['reason'] or 'ok'}"
    if result["body"]:
        text += f"; body: {result['body'][:200]!r}"
    return text


def container_state(name, docker="docker", run=subprocess.run):
    proc = run(
        [docker, "inspect", "--type", "container", "--format", "{{json .State}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise HealthError(f"no container '{name}': {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)


def container_logs(name, docker="docker", lines=20, run=subprocess.run):
    proc = run([docker, "logs", "--tail", str(lines), name], capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip()


def wait_container(
    name,
    successes=1,
    interval=1.0,
    deadline=60.0,
    initial_delay=0.0,
    docker="docker",
    clock=time.monotonic,
    sleep=time.sleep,
    run=subprocess.run,
):
    """Wait until Docker reports the container's HEALTHCHECK as healthy.
    Fails at once when the container has no HEALTHCHECK or is not running."""
    start = clock()
    if initial_delay:
        sleep(initial_delay)
    attempts = 0
    streak = 0
    while True:
        state = container_state(name, docker, run)
        attempts += 1
        health = state.get("Health")
        if not state.get("Running") or state.get("Restarting"):
            raise HealthError(
                f"container '{name}' is {'crash-looping' if state.get('Restarting') else state.get('Status')} "
                f"(exit code {state.get('ExitCode')}"
                f"{', OOM-killed' if state.get('OOMKilled') else ''}). Last log lines:\n"
                f"{container_logs(name, docker, run=run)}",
                {"attempts": attempts, "elapsed": round(clock() - start, 3), "state": state},
            )
        if not health:
            raise HealthError(
                f"container '{name}' has no HEALTHCHECK: add one to the image or the container, "
                "or wait on an HTTP endpoint instead",
                {"attempts": attempts, "elapsed": round(clock() - start, 3), "state": state},
            )
        streak = streak + 1 if health.get("Status") == "healthy" else 0
        if streak >= successes:
            return {
                "attempts": attempts,
                "elapsed": round(clock() - start, 3),
                "status": "healthy",
                "failing_streak": health.get("FailingStreak", 0),
            }
        if clock() - start + interval > deadline:
            log = health.get("Log") or []
            tail = "; ".join(
                f"exit {entry.get('ExitCode')}: {(entry.get('Output') or '').strip()[:200]}" for entry in log[-3:]
            )
            raise HealthError(
                f"container '{name}' not healthy within {deadline:g} s after {attempts} checks: "
                f"health is {health.get('Status')}, failing streak {health.get('FailingStreak', 0)}. "
                f"Last health checks: {tail or 'none yet'}",
                {"attempts": attempts, "elapsed": round(clock() - start, 3), "state": state},
            )
        sleep(interval)
