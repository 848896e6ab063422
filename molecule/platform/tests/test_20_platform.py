"""Several apps on one server (issue 11), from the shipped production
inventory's onebox_apps: shop and blog on their own domains (HTTPS: the
certificates come from the ACME CA, HTTP redirects) and two workers of the
shop's image (mailer start-first, scheduler stop-first). Every deploy,
rollback and maintenance change of one app runs while every domain is under
load, and the apps it did not name must not notice: 0 failed requests, and
their containers keep their IDs and start times.

The tests run in file order and build on each other. Load goes only to the
target container."""

from __future__ import annotations

import json
import re
import urllib.error

import pytest
from onebox_molecule import Load, get_json, one_line, run_playbook

DOMAINS = {
    "shop.example.com": "shop",
    "www.shop.example.com": "shop",
    "blog.example.com": "blog",
    "example.com": "landing",
}
APPS = ("shop", "blog", "landing", "mailer", "scheduler")


def play(name, *extra):
    proc = run_playbook(name, "-l", "production", *extra, ONEBOX_WHO="molecule")
    return proc.returncode, one_line(proc)


def deploy(app, version):
    rc, out = play("deploy.yml", "-e", f"app={app}", "-e", f"version={version}")
    assert rc == 0, out[-3000:]
    return out


def containers(target):
    """{container name: (id, started at, running)} of every app container."""
    names = [f"{a}-{c}" for a in APPS for c in ("blue", "green")]
    out = target.run("docker container inspect " + " ".join(names)).stdout
    found = json.loads(out or "[]")
    return {c["Name"].lstrip("/"): (c["Id"], c["State"]["StartedAt"], c["State"]["Running"]) for c in found}


def of(snapshot, app):
    return {k: v for k, v in snapshot.items() if k.startswith(f"{app}-")}


def versions(base_url, host_header, n=20):
    return {get_json(base_url, host_header)[1]["version"] for _i in range(n)}


class Everywhere:
    """A Load on every domain at once."""

    def __init__(self, base_url):
        self.loads = {d: Load(base_url, d, threads=2, pause=0.03) for d in DOMAINS}

    def __enter__(self):
        for load in self.loads.values():
            load.__enter__()
        return self

    def __exit__(self, *exc):
        for load in self.loads.values():
            load.__exit__(*exc)

    def report(self):
        return {d: (load.failed, load.total, load.versions) for d, load in self.loads.items()}

    def assert_clean(self):
        for domain, load in self.loads.items():
            assert load.total > 50, f"{domain}: too little traffic to judge ({load.total})"
            assert load.failed == 0, f"{domain}: {load.failed} of {load.total} failed: {load.errors[:3]}"


def worker_log(target, container):
    """(docker time stamp, line) of a worker container's output."""
    out = target.check_output(f"docker logs -t {container}")
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if " " in line]


def running_colour(target, app):
    snap = containers(target)
    live = [n.rsplit("-", 1)[1] for n, v in of(snap, app).items() if v[2]]
    assert len(live) == 1, snap
    return live[0]


def test_each_app_deploys_on_its_own(base_url, target):
    for app in APPS:
        out = deploy(app, "v1")
        assert f"App {app} (" in out
    for domain in DOMAINS:
        assert versions(base_url, domain) == {"v1"}
    assert running_colour(target, "mailer") == "blue" and running_colour(target, "scheduler") == "blue"
    # Each app has its own HAProxy backend and history; the workers none in HAProxy.
    cfg = target.check_output("cat /etc/haproxy/haproxy.cfg")
    assert "backend app_shop" in cfg and "backend app_blog" in cfg and "app_mailer" not in cfg
    for app in APPS:
        assert target.file(f"/var/lib/onebox/{app}/releases.jsonl").contains('"version": "v1"')


def psql(target, sql, db="postgres", container="app-postgres"):
    return target.check_output(f'docker exec {container} psql -U postgres -X -A -t -d {db} -c "{sql}"').strip()


def test_each_app_has_its_database_where_the_model_says(target):
    names = psql(target, "SELECT datname FROM pg_database").split()
    assert "shop" in names and "blog" not in names
    assert "blog" in psql(target, "SELECT datname FROM pg_database", container="blog-postgres").split()

    # The shared PostgreSQL is on the networks of the apps whose database is
    # in it (the shop and its workers), the blog's own on the blog's alone.
    def on(network):
        net = json.loads(target.check_output(f"docker network inspect {network}"))[0]
        return sorted(
            c["Name"] for c in net["Containers"].values() if c["Name"].split("-")[-1] not in ("blue", "green")
        )

    assert on("onebox_shop") == ["app-postgres", "shop-redis"]
    assert on("onebox_mailer") == ["app-postgres", "shop-redis"]
    assert on("onebox_scheduler") == ["shop-redis"]
    assert on("onebox_blog") == ["blog-postgres"]
    # An app with neither a database nor a Redis has no way to one.
    assert on("onebox_landing") == []
    # The first deploys backed each database up in the deploying app's directory.
    for app in ("shop", "blog"):
        dumps = target.check_output(f"ls /var/backups/onebox/{app}")
        assert f"predeploy-{app}-" in dumps and "predeploy-" + ("blog" if app == "shop" else "shop") not in dumps


def test_each_database_has_its_own_backup_job(target):
    psql(
        target,
        "CREATE TABLE IF NOT EXISTS posts (id int); INSERT INTO posts VALUES (1), (2), (3)",
        "blog",
        "blog-postgres",
    )
    for job in ("shop", "blog"):
        assert target.service(f"onebox-backup@{job}.timer").is_enabled
        target.check_output(f"systemctl start onebox-backup@{job}.service")
        journal = target.check_output(f"journalctl -u onebox-backup@{job}.service --no-pager")
        assert f"backup of {job}:" in journal
        assert [f for f in target.check_output(f"ls /var/backups/onebox/{job}").split() if f.startswith(f"{job}-")]
    # One job per database: the shop's workers share the shop's.
    for worker in ("mailer", "scheduler"):
        assert not target.file(f"/etc/systemd/system/onebox-backup@{worker}.timer").exists
    # The blog's dump holds the blog's table; the shop's does not.
    newest = target.check_output("ls -t /var/backups/onebox/blog/blog-*.dump | head -1")
    assert "posts" in target.check_output(f"docker exec -i blog-postgres pg_restore -l < {newest}")
    newest = target.check_output("ls -t /var/backups/onebox/shop/shop-*.dump | head -1")
    assert "posts" not in target.check_output(f"docker exec -i app-postgres pg_restore -l < {newest}")


def test_deploying_one_app_leaves_the_others_alone(base_url, target):
    before = containers(target)
    with Everywhere(base_url) as load:
        deploy("shop", "v2")
    print("deploy shop v2:", load.report())
    load.assert_clean()
    assert load.loads["shop.example.com"].versions.get("v2") and load.loads["www.shop.example.com"].versions.get("v2")
    assert set(load.loads["blog.example.com"].versions) == {"v1"}
    assert versions(base_url, "shop.example.com") == {"v2"} and versions(base_url, "blog.example.com") == {"v1"}
    after = containers(target)
    for app in ("blog", "landing", "mailer", "scheduler"):
        assert of(after, app) == of(before, app), f"{app} was touched by a deploy of shop"


def test_rolling_one_app_back_leaves_the_others_alone(base_url, target):
    before = containers(target)
    with Everywhere(base_url) as load:
        rc, out = play("rollback.yml", "-e", "app=shop")
    assert rc == 0, out[-3000:]
    print("rollback shop:", load.report())
    load.assert_clean()
    assert versions(base_url, "www.shop.example.com") == {"v1"}
    after = containers(target)
    for app in ("blog", "landing", "mailer", "scheduler"):
        assert of(after, app) == of(before, app), f"{app} was touched by a rollback of shop"


def test_maintenance_of_one_app_leaves_the_others_alone(base_url, target):
    before = containers(target)
    shop = Load(base_url, "shop.example.com", threads=2, pause=0.03)
    with shop:
        rc, out = play("maintenance.yml", "-e", "app=blog", "-e", "maintenance=on")
        assert rc == 0, out[-3000:]
        with pytest.raises(urllib.error.HTTPError) as err:
            get_json(base_url, "blog.example.com")
        assert err.value.code == 503
        rc, out = play("maintenance.yml", "-e", "app=blog", "-e", "maintenance=off")
        assert rc == 0, out[-3000:]
    assert shop.failed == 0 and shop.total > 50, (shop.failed, shop.total, shop.errors[:3])
    assert versions(base_url, "blog.example.com") == {"v1"}
    after = containers(target)
    for app in APPS:
        assert of(after, app) == of(before, app), f"maintenance of blog touched {app}'s containers"


def check_graceful_stop(log, old):
    """The old worker finished the job it had when SIGTERM came, and said so."""
    lines = [text for _t, text in log]
    starts = [int(m.group(1)) for t in lines if (m := re.match(r"job (\d+) start", t))]
    assert starts, lines
    last = starts[-1]
    assert any(t.startswith(f"job {last} done") for t in lines), f"{old}: job {last} was cut: {lines[-4:]}"
    assert lines[-1].startswith(f"worker v1 stopped after job {last}"), lines[-3:]


def stamp(log, prefix, last=False):
    found = [t for t, text in log if text.startswith(prefix)]
    assert found, (prefix, log[-5:])
    return found[-1] if last else found[0]


def test_a_start_first_worker_has_no_gap(target):
    old = f"mailer-{running_colour(target, 'mailer')}"
    others = {a: of(containers(target), a) for a in ("shop", "blog", "landing", "scheduler")}
    out = deploy("mailer", "v2")
    assert "start-first" in out and "exit code 0" in out, out[-2000:]
    new = f"mailer-{running_colour(target, 'mailer')}"
    assert new != old
    old_log, new_log = worker_log(target, old), worker_log(target, new)
    check_graceful_stop(old_log, old)
    assert target.check_output(f"docker inspect -f '{{{{.State.ExitCode}}}}' {old}") == "0"
    # No gap: the new one took its first job before the old one stopped
    # (docker's RFC 3339 time stamps, same zone and width, compare as text).
    assert stamp(new_log, "job 1 start v2") < stamp(old_log, "worker v1 stopped", last=True)
    for app, snap in others.items():
        assert of(containers(target), app) == snap


def test_a_stop_first_worker_never_runs_twice(target):
    old = f"scheduler-{running_colour(target, 'scheduler')}"
    out = deploy("scheduler", "v2")
    assert "stop-first" in out, out[-2000:]
    new = f"scheduler-{running_colour(target, 'scheduler')}"
    old_log, new_log = worker_log(target, old), worker_log(target, new)
    check_graceful_stop(old_log, old)
    # Never both: the old one had stopped before the new one said a word.
    assert stamp(old_log, "worker v1 stopped", last=True) < stamp(new_log, "scheduler v2")


def test_a_worker_rolls_back_on_the_server_and_with_the_playbook(target):
    rc = target.run("onebox rollback mailer")
    assert rc.rc == 0, rc.stdout + rc.stderr
    assert "rolled back from v2 to v1" in rc.stdout
    status = target.check_output("onebox status mailer")
    assert "live on blue (v1)" in status and "worker (start-first)" in status, status
    rc, out = play("rollback.yml", "-e", "app=scheduler")
    assert rc == 0, out[-3000:]
    snap = containers(target)
    assert snap["scheduler-blue"][2] and not snap["scheduler-green"][2]
    last = json.loads(target.check_output("tail -n 1 /var/lib/onebox/scheduler/releases.jsonl"))
    assert last["action"] == "rollback" and last["version"] == "v1"


def test_a_stopped_worker_shows_in_the_metrics(target):
    """onebox metrics: onebox_app_up per app, 0 for a worker whose container
    stopped (the WorkerDown alert's input; Prometheus: the deploy scenario)."""
    assert target.service("onebox-metrics.timer").is_enabled
    target.check_output("mkdir -p /var/tmp/textfile")
    target.check_output("onebox metrics --textfile-dir /var/tmp/textfile")
    text = target.check_output("cat /var/tmp/textfile/onebox_apps.prom")
    for app, kind in (
        ("shop", "web"),
        ("blog", "web"),
        ("landing", "web"),
        ("mailer", "worker"),
        ("scheduler", "worker"),
    ):
        assert f'onebox_app_up{{app="{app}",kind="{kind}"}} 1' in text, text
    live = f"mailer-{running_colour(target, 'mailer')}"
    target.check_output(f"docker stop -t 10 {live}")
    try:
        target.check_output("onebox metrics --textfile-dir /var/tmp/textfile")
        assert 'onebox_app_up{app="mailer",kind="worker"} 0' in target.check_output(
            "cat /var/tmp/textfile/onebox_apps.prom"
        )
    finally:
        target.check_output(f"docker start {live}")


def test_several_apps_in_one_run_in_order(base_url, target):
    """A version map deploys the apps it names, in the model's order, under
    load on every domain; -e app=all with one version deploys every app."""
    workers = {a: of(containers(target), a) for a in ("mailer", "scheduler")}
    with Everywhere(base_url) as load:
        rc, out = play("deploy.yml", "-e", json.dumps({"versions": {"blog": "v2", "shop": "v2"}}))
    assert rc == 0, out[-3000:]
    print("versions shop=v2 blog=v2:", load.report())
    load.assert_clean()
    assert out.index("Deploying shop") < out.index("Deploying blog"), "not in the model's order"
    assert versions(base_url, "shop.example.com") == {"v2"} and versions(base_url, "blog.example.com") == {"v2"}
    for app, snap in workers.items():
        assert of(containers(target), app) == snap, f"{app} was touched"
    rc, out = play("deploy.yml", "-e", "app=all", "-e", "version=v1")
    assert rc == 0, out[-3000:]
    for app in APPS:
        last = json.loads(target.check_output(f"tail -n 1 /var/lib/onebox/{app}/releases.jsonl"))
        assert (last["action"], last["version"]) == ("deploy", "v1"), (app, last)
    rc, out = play("deploy.yml", "-e", "app=shop,blog", "-e", json.dumps({"versions": {"shop": "v2"}}))
    assert rc != 0 and "-e versions has no version for blog" in out


def test_bad_requests_are_refused_before_anything_changes(target):
    cfg = target.check_output("sha256sum /etc/haproxy/haproxy.cfg")
    rc, out = play("deploy.yml", "-e", "app=nope", "-e", "version=v2")
    assert (
        rc != 0
        and "-e app=nope names no app of this inventory; its apps are: shop, blog, landing, mailer, scheduler" in out
    )
    rc, out = play("deploy.yml", "-e", "version=v2")
    assert rc != 0 and "pick one with -e app=NAME" in out
    rc, out = play("maintenance.yml", "-e", "app=mailer", "-e", "maintenance=on")
    assert rc != 0 and "mailer is a worker" in out
    rc = target.run("onebox maintenance mailer on")
    assert rc.rc == 2 and "mailer is a worker" in rc.stderr
    # A model with two mistakes: each named, and site.yml stops before bootstrap.
    bad = [
        {"name": "shop", "image": "local/demo", "domains": ["shop.example.com"], "health_path": "/health"},
        {"name": "shop2", "image": "local/demo", "domains": ["shop.example.com"], "health_path": "/health"},
        {"name": "jobs", "image": "local/demo", "kind": "worker", "domains": ["jobs.test"]},
        {
            "name": "evil",
            "image": "local/demo",
            "domains": ["evil.test"],
            "health_path": "/health\n    server x 10.0.0.9:80",
        },
        {"name": "env", "image": "local/demo", "kind": "worker", "env": {"MODE": "on\nLD_PRELOAD=/tmp/x.so"}},
    ]
    rc, out = play("site.yml", "-e", json.dumps({"onebox_apps": bad, "onebox_hosts": "production"}))
    assert rc != 0
    assert "domain shop.example.com is claimed by both 'shop' and 'shop2'" in out
    assert "app 'evil': health_path holds a newline" in out and "app 'env': env.MODE holds a newline" in out
    assert "app 'jobs': a worker serves no HTTP, so it takes no domains" in out
    assert "TASK [onebox.platform.base" not in out
    assert target.check_output("sha256sum /etc/haproxy/haproxy.cfg") == cfg
