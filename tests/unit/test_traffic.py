"""The traffic gates: parsing HAProxy's request log, the confidence bound,
the p95 bound, and the model's verification settings (SPEC R41)."""

from __future__ import annotations

import pytest
from ansible_collections.onebox.platform.plugins.module_utils.apps import ModelError, normalize, rollout_steps
from ansible_collections.onebox.platform.plugins.module_utils.traffic import (
    Gates,
    Tally,
    parse_line,
    percentile,
    percentile_bound,
    request_path,
    wilson_interval,
    wilson_lower,
)
from ansible_collections.onebox.platform.plugins.module_utils.verify import normalize_checks

# Lines as HAProxy 2.6 writes them to the ring (format raw, option httplog).
OK = (
    "10.0.0.5:41450 [24/Nov/2026:23:20:19.513] http app_shop/green 0/0/0/12/13 200 632 - - ---- "
    '1/1/0/0/0 0/0 "GET /cart?id=3 HTTP/1.1"'
)
FIVE = (
    "10.0.0.5:41462 [24/Nov/2026:23:20:19.523] https~ app_shop/green 0/0/0/4/4 500 217 - - ---- "
    '1/1/0/0/0 0/0 "POST /pay HTTP/1.1"'
)
NOSRV = (
    "10.0.0.5:41464 [24/Nov/2026:23:20:19.530] http app_shop/<NOSRV> 0/-1/-1/-1/0 503 217 - - SC-- "
    '1/1/0/0/0 0/0 "GET / HTTP/1.1"'
)
ABORT = (
    "10.0.0.5:41466 [24/Nov/2026:23:20:19.540] http app_shop/blue 0/0/0/-1/+2 -1 0 - - CR-- "
    '1/1/0/0/0 0/0 "GET / HTTP/1.1"'
)


def test_lines_are_parsed_into_server_status_and_time():
    assert parse_line(OK) == {"backend": "app_shop", "server": "green", "status": 200, "tr_ms": 12, "path": "/cart"}
    assert parse_line(FIVE)["status"] == 500 and parse_line(FIVE)["path"] == "/pay"
    assert parse_line(NOSRV)["server"] == "<NOSRV>"
    assert parse_line(ABORT)["status"] == -1 and parse_line(ABORT)["tr_ms"] == -1
    assert parse_line("Proxy http started.") is None
    assert parse_line("") is None


@pytest.mark.parametrize(
    "uri, path",
    [
        ("/events/feed?since=3", "/events/feed"),
        # HTTP/2 requests are logged in absolute form: before, a skipped
        # /events/* long poll over HTTP/2 counted as slow traffic.
        ("https://shop.example.com/events/feed?since=3", "/events/feed"),
        ("https://shop.example.com:8443/", "/"),
        ("https://shop.example.com", "/"),
        ("https://shop.example.com?x=1", "/"),
        ("http://[2001:db8::1]:80/health", "/health"),
        ("*", "*"),
        ("/a#frag", "/a"),
    ],
)
def test_request_paths_are_normalised_before_they_are_skipped(uri, path):
    assert request_path(uri) == path
    h2 = OK.replace("GET /cart?id=3 HTTP/1.1", f"GET {uri} HTTP/2.0")
    assert parse_line(h2)["path"] == path


def test_a_tally_counts_5xx_and_ignores_aborted_requests():
    t = Tally()
    for line in (OK, FIVE, ABORT):
        t.add(parse_line(line))
    assert t.figures() == {"requests": 2, "errors_5xx": 1, "error_rate": 0.5, "p95_ms": 12}


def test_wilson_lower_bound():
    assert wilson_lower(0, 100) == 0.0
    assert wilson_lower(0, 0) == 0.0
    # One error in 20: could be bad luck at a 1 % rate.
    assert wilson_lower(1, 20) < 0.01
    # Three in 20: not bad luck.
    assert wilson_lower(3, 20) > 0.01
    assert wilson_lower(50, 100) == pytest.approx(0.404, abs=0.002)
    low, high = wilson_interval(50, 100)
    assert high == pytest.approx(1 - low)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_percentile_is_nearest_rank():
    assert percentile([], 95) is None
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([1, 2, 3, 100], 95) == 100


def tally(n, errors=0, ms=5, slow=0, slow_ms=1500):
    """N requests: ERRORS of them 5xx; every one MS long but SLOW of them, SLOW_MS long."""
    t = Tally()
    t.requests, t.errors, t.times = n, errors, [slow_ms] * slow + [ms] * (n - slow)
    return t


def test_gates_judge_only_with_enough_requests():
    g = Gates(max_error_rate=0.01, min_requests=20)
    assert g.judge(tally(19, errors=19)) is None
    assert "19 of 20 requests answered 5xx" in g.judge(tally(20, errors=19))
    # One 5xx among many: under the limit with confidence.
    assert g.judge(tally(500, errors=1)) is None
    # 2 % of 500 is not overwhelming while the window runs; at its end it is over 1 %.
    assert g.judge(tally(500, errors=10)) is None
    assert "10 of 500 requests answered 5xx (2.0 %, over the 1 % limit)" in g.judge(tally(500, errors=10), final=True)


def test_a_release_answering_a_fifth_5xx_is_caught_within_its_first_requests():
    g = Gates(max_error_rate=0.01, min_requests=20)
    clean = tally(1000)
    assert "4 of 20 requests answered 5xx" in g.judge(tally(20, errors=4), clean)


def test_a_steady_share_of_5xx_from_before_the_deploy_is_not_the_releases():
    """Before: a previous release with 2.5 % of 5xx made every deploy fail."""
    g = Gates(max_error_rate=0.01, min_requests=20)
    before = tally(1000, errors=25)
    for n in (20, 100, 500, 2000):
        same = tally(n, errors=round(0.025 * n))
        assert g.judge(same, before) is None, n
        assert g.judge(same, before, final=True) is None, n
    # Three points more than before, over a sample that shows it.
    worse = tally(3000, errors=165)
    assert g.judge(worse, before, final=True).endswith("over the previous release's 2.5 % + 1 %)")
    # A baseline of fewer than min_requests is none: the absolute limit.
    assert "over the 1 % limit" in g.judge(tally(500, errors=15), tally(10), final=True)


def test_the_latency_bound_is_relative_with_a_floor():
    g = Gates(latency_factor=2, latency_floor_ms=100, min_requests=20)
    assert g.latency_bound(None) is None
    assert g.latency_bound(tally(10, ms=4)) is None, "too small a baseline"
    assert g.latency_bound(tally(1000, ms=4)) == 104
    assert g.latency_bound(tally(1000, ms=300)) == 600
    assert g.judge(tally(50, ms=90), tally(1000, ms=4)) is None
    assert "p95 response time 305 ms" in g.judge(tally(50, ms=305), tally(1000, ms=4))
    # No baseline: no latency gate.
    assert g.judge(tally(50, ms=5000)) is None


def test_two_slow_requests_among_the_first_twenty_do_not_decide():
    """Before: the nearest-rank p95 of 20 requests is their 19th, so two slow
    ones failed the gate and rolled a good release back."""
    g = Gates(latency_factor=2, latency_floor_ms=100, min_requests=20)
    base = tally(1000, ms=40)
    early = tally(20, ms=40, slow=2)
    assert g.judge(early, base) is None
    assert g.judge(early, base, final=True) is None
    # Six slow ones in 20 decide at once; four at the end of the window.
    assert "p95 response time 1500 ms" in g.judge(tally(20, ms=40, slow=6), base)
    assert g.judge(tally(20, ms=40, slow=4), base) is None
    assert "(at least 1500 ms)" in g.judge(tally(20, ms=40, slow=4), base, final=True)


def test_percentile_bounds_come_from_order_statistics():
    values = list(range(1, 1001))
    low, high = percentile_bound(values, 95, 1.96), percentile_bound(values, 95, 1.96, upper=True)
    assert low < 950 < high
    assert (low, high) == (936, 964)
    assert percentile_bound([], 95, 1.96) is None
    assert percentile_bound([7], 95, 3.5) == 7 and percentile_bound([7], 95, 3.5, upper=True) == 7


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_error_rate": 1.5}, "max_error_rate must be from 0 to 1"),
        ({"min_requests": 0}, "min_requests must be at least 1"),
        ({"latency_factor": 0.5}, "latency_factor must be at least 1"),
    ],
)
def test_bad_gates_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Gates(**kwargs)


def test_rollout_steps():
    assert rollout_steps([10, 50, 100]) == [10, 50]
    assert rollout_steps([]) == []
    assert rollout_steps([100]) == []
    for bad in ([50, 10], [0, 100], [10, 10], "10,50", [10, "x"], [150]):
        with pytest.raises(ValueError, match="rollout_steps"):
            rollout_steps(bad)


def test_smoke_checks_are_checked():
    checks = normalize_checks(["/", {"path": "/api", "status": "200-299", "json_path": "ok", "json_value": True}])
    assert [c[0]["path"] for c in checks] == ["/", "/api"]
    for bad, words in (
        (["login"], "starting with '/'"),
        ([{"path": "/", "stauts": 200}], "unknown key"),
        ([{"path": "/", "method": "POST"}], "must change nothing"),
        ([{"path": "/", "status": "2xx"}], "neither NNN"),
    ):
        with pytest.raises(ValueError, match=words):
            normalize_checks(bad)


def test_the_model_checks_verification_settings():
    web = {"name": "shop", "image": "shop", "domains": ["shop.test"], "health_path": "/health"}
    app = normalize([dict(web, rollout_steps=[10, 50, 100], smoke_checks=["/"])])[0]
    assert app["rollout_steps"] == [10, 50]
    with pytest.raises(ModelError) as err:
        normalize(
            [
                dict(web, rollout_steps=[60, 20], smoke_checks=["nope"], verify_max_error_rate=5),
                {"name": "mailer", "image": "shop", "kind": "worker", "smoke_checks": ["/"]},
            ]
        )
    text = str(err.value)
    assert "rollout_steps must rise" in text
    assert "starting with '/'" in text
    assert "verify_max_error_rate is a share from 0 to 1" in text
    assert "a worker serves no HTTP, so it takes no smoke_checks" in text


def test_skipped_paths_are_exact_or_prefixes():
    from ansible_collections.onebox.platform.plugins.module_utils.traffic import skipped

    assert skipped("/health", ["/health"])
    assert not skipped("/healthz", ["/health"])
    assert skipped("/events/42", ["/health", "/events/*"])
    assert not skipped("/event", ["/events/*"])
    web = {"name": "shop", "image": "shop", "domains": ["shop.test"], "health_path": "/health"}
    with pytest.raises(ModelError, match="verify_skip_paths must be a list of paths"):
        normalize([dict(web, verify_skip_paths=["events"])])
