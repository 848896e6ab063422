"""module_utils/apps: the one app model - defaults, derived names, and bad
models refused with one line per mistake."""

from __future__ import annotations

import pytest
from ansible_collections.onebox.platform.plugins.module_utils import apps as model


def web(name, *domains, **kw):
    image = f"registry.example.com/{name}"
    return {"name": name, "image": image, "domains": list(domains), "health_path": "/health", **kw}


def worker(name, **kw):
    return {"name": name, "image": f"registry.example.com/{name}", "kind": "worker", **kw}


PLATFORM = [
    web("auth", "auth.example.com"),
    web("api", "api.example.com"),
    web("www", "example.com", "www.example.com"),
    worker("jobs"),
]


def test_a_platform_normalizes_with_derived_names():
    apps = model.normalize(PLATFORM)
    assert [a["name"] for a in apps] == ["auth", "api", "www", "jobs"]
    api = apps[1]
    assert api["derived"]["backend"] == "app_api"
    assert api["derived"]["containers"] == {"blue": "api-blue", "green": "api-green"}
    assert api["derived"]["state_dir"] == "/var/lib/onebox/api"
    assert api["derived"]["lock"] == "/var/lib/onebox/api/deploy.lock"
    assert api["derived"]["ports"] == {"blue": api["blue_port"], "green": api["green_port"]}
    assert api["container_port"] == 8080 and api["kind"] == "web"
    jobs = apps[3]
    assert (
        jobs["derived"]["containers"] == {"blue": "jobs-blue", "green": "jobs-green"} and jobs["derived"]["ports"] == {}
    )
    assert jobs["worker_order"] == "start-first"
    ports = [p for a in apps for p in a["derived"]["ports"].values()]
    assert len(ports) == len(set(ports)) == 6


def test_derived_ports_do_not_move_when_an_app_is_added():
    before = {a["name"]: a["derived"]["ports"] for a in model.normalize(PLATFORM)}
    after = {a["name"]: a["derived"]["ports"] for a in model.normalize([web("new", "new.example.com"), *PLATFORM])}
    assert all(after[n] == p for n, p in before.items())


@pytest.mark.parametrize(
    "apps,message",
    [
        ([web("api", "a.example.com"), web("api", "b.example.com")], "two apps are named 'api'"),
        (
            [web("api", "example.com"), web("www", "example.com")],
            "domain example.com is claimed by both 'api' and 'www'",
        ),
        (
            [
                web("api", "a.example.com", blue_port=19000, green_port=19001),
                web("www", "b.example.com", blue_port=19001, green_port=19002),
            ],
            "blue_port 19001 is already used by 'api' (green)",
        ),
        ([worker("jobs", domains=["jobs.example.com"])], "a worker serves no HTTP, so it takes no domains"),
        ([dict(web("api", "a.example.com"), kind="cron")], "kind 'cron' is unknown; use web or worker"),
        ([dict(web("api", "a.example.com"), health_path=None)], "a web app needs health_path"),
        ([web("api")], "a web app needs at least one domain"),
        ([web("-api", "a.example.com")], "must be letters, digits, _ and -"),
        ([dict(web("api", "a.example.com"), imgae="x")], "unknown setting(s) imgae"),
        ([web("api", "a.example.com", blue_port=70000)], "blue_port must be a port number from 1 to 65535"),
        ([worker("jobs", worker_order="whenever")], "worker_order 'whenever' is unknown"),
        ([worker("jobs", database="jobs-db")], "database 'jobs-db' must be letters, digits and _"),
        ([dict(name="api", domains=["a.example.com"], health_path="/h")], "image is required"),
        ([web("api", "a.example.com", fallback_seconds=-1)], "fallback_seconds must be 0 (no backup server) or more"),
        ([web("api", "a.example.com", fallback_seconds="soon")], "fallback_seconds must be a number"),
    ],
)
def test_bad_models_are_refused_with_one_line_each(apps, message):
    with pytest.raises(model.ModelError) as exc:
        model.normalize(apps)
    assert message in str(exc.value)


def test_every_mistake_is_listed_at_once():
    with pytest.raises(model.ModelError) as exc:
        model.normalize([web("api"), worker("jobs", domains=["x.example.com"])])
    assert len(str(exc.value).splitlines()) == 2


def test_old_single_app_variables_are_one_app():
    legacy = {
        "app_name": "demo",
        "app_image": "local/demo",
        "app_domain": "demo.test",
        "app_database_container": "demo-postgres",
    }
    (app,) = model.normalize(model.from_legacy(legacy))
    assert app["name"] == "demo" and app["domains"] == ["demo.test"] and app["health_path"] == "/health"
    assert (app["blue_port"], app["green_port"]) == (18001, 18002)
    assert app["database"] == "demo" and app["derived"]["backend"] == "app_demo"
    assert model.from_legacy({"app_name": "x"}) == []


def test_select():
    apps = model.normalize(PLATFORM)
    assert [a["name"] for a in model.select(apps, "api")] == ["api"]
    assert [a["name"] for a in model.select(apps, "www,auth")] == ["auth", "www"]
    assert len(model.select(apps, "all")) == 4
    with pytest.raises(model.ModelError) as exc:
        model.select(apps, "ap")
    assert "-e app=ap names no app of this inventory; its apps are: auth, api, www, jobs" in str(exc.value)


def test_routing_only_needs_no_image_and_takes_one_domain():
    (app,) = model.normalize([{"name": "api", "domain": "api.example.com", "health_path": "/up"}], need_image=False)
    assert app["domains"] == ["api.example.com"] and app["derived"]["backend"] == "app_api"


def test_a_checked_model_checks_again_to_the_same():
    once = model.normalize(PLATFORM)
    assert model.normalize(once) == once


def test_a_model_with_the_old_single_app_variables_is_refused():
    with pytest.raises(model.ModelError, match=r"old single-app variable\(s\) app_name, app_image, which would apply"):
        model.refuse_mixed({"app_name": "shop", "app_image": "x/shop", "app_version": "v1", "postgres_user": "p"})
    model.refuse_mixed({"app_version": "v1", "app_image_archive": "/tmp/x.tar", "app_name": ""})


def test_volumes_are_named_once_and_checked():
    app = {"name": "shop", "image": "r/shop", "domains": ["shop.test"], "health_path": "/h"}
    got = model.normalize([dict(app, volumes={"uploads": "/app/uploads", "cache": "/var/cache/shop"})])[0]
    assert got["derived"]["volumes"] == {"onebox_shop_cache": "/var/cache/shop", "onebox_shop_uploads": "/app/uploads"}
    assert model.volume_name("shop", "uploads") == "onebox_shop_uploads"
    assert model.normalize([app])[0]["derived"]["volumes"] == {}
    with pytest.raises(model.ModelError) as err:
        model.normalize([dict(app, volumes={"up loads": "relative/path", "root": "/"})])
    text = str(err.value)
    assert "volume name 'up loads'" in text and "absolute path" in text and "'root'" in text
    with pytest.raises(model.ModelError, match="volumes must be a mapping"):
        model.normalize([dict(app, volumes=["/app/uploads"])])
    # The single-app variables: app_volumes.
    legacy = model.from_legacy({"app_image": "r/shop", "app_volumes": {"uploads": "/www/uploads"}})
    assert model.normalize(legacy)[0]["derived"]["volumes"] == {"onebox_app_uploads": "/www/uploads"}


@pytest.mark.parametrize(
    "entry,message",
    [
        (web("api", "api.example.com", health_path="/health\nserver evil 1.2.3.4:80"), "health_path holds a newline"),
        (web("api", "api.example.com", env={"MODE": "prod\nEVIL=1"}), "env.MODE holds a newline"),
        (web("api", "api.example.com", command="run\r"), "command holds control character '\\r'"),
        (web("api", "api.example.com", smoke_checks=[{"path": "/\x1b[2J"}]), "smoke_checks[0].path holds control"),
        (web("api", "api.example.com", env={"BAD NAME": "x"}), "env names 'BAD NAME'"),
        (web("api", "api.example.com", image="r/api\n"), "image holds a newline"),
    ],
)
def test_control_characters_are_refused_in_every_model_string(entry, message):
    with pytest.raises(model.ModelError) as err:
        model.normalize([entry])
    assert message in str(err.value)


def test_a_secret_with_a_newline_is_refused_without_showing_it():
    with pytest.raises(model.ModelError) as err:
        model.normalize([web("api", "api.example.com", secret_env={"TOKEN": "s3cr3t\nEVIL=1"})])
    assert "secret_env.TOKEN holds a control character" in str(err.value)
    assert "s3cr3t" not in str(err.value)


def test_a_maintenance_page_may_have_lines():
    page = "<html>\n<body>Back soon</body>\n</html>\n"
    assert model.normalize([web("api", "api.example.com", maintenance_html=page)])[0]["maintenance_html"] == page
    with pytest.raises(model.ModelError, match="maintenance_html holds control character"):
        model.normalize([web("api", "api.example.com", maintenance_html="<p>\x07</p>")])


def test_databases_are_named_in_one_place_shared_or_own():
    apps = model.normalize(
        [
            web("shop", "shop.example.com", database="shop", redis=True),
            web("blog", "blog.example.com", database="blog", database_container="blog-postgres"),
            worker("mailer", database="shop", redis="shop"),
            worker("cron"),
        ],
        settings=model.settings_of({}),
    )
    shop, blog, mailer, cron = (a["derived"] for a in apps)
    assert shop["database"] == {
        "name": "shop", "role": "shop", "container": "app-postgres", "own": False, "host": "postgres",
        "password_file": "/etc/onebox/postgres/shop.password", "volume": None, "env_file": None,
        "url_env": "DATABASE_URL",
    }  # fmt: skip
    assert blog["database"]["own"] and blog["database"]["container"] == "blog-postgres"
    assert blog["database"]["volume"] == "blog-postgres-data"
    assert mailer["database"]["role"] == "shop" and mailer["database"]["container"] == "app-postgres"
    assert cron["database"] is None and cron["redis"] is None and blog["redis"] is None
    assert shop["redis"]["container"] == "shop-redis" and shop["redis"]["user"] == "shop"
    # The worker shares the shop's Redis (its queues) with a user of its own.
    assert mailer["redis"]["container"] == "shop-redis" and mailer["redis"]["user"] == "mailer"
    assert mailer["redis"]["password_file"] == "/etc/onebox/mailer/redis.password"
    stores = model.data_stores(apps, secrets=False)
    (server,) = stores["redis"]
    assert server["networks"] == ["onebox_mailer", "onebox_shop"] and server["owner"] == "shop"
    assert [u["user"] for u in server["users"]] == ["shop", "mailer"] and "password" not in server["users"][0]
    # The owner's user stands for the server (the off-site copy's BGSAVE); no user runs @admin.
    assert [u["rules"] for u in server["users"]] == [model.REDIS_OWNER_RULES, model.REDIS_RULES]
    assert "-@admin" in model.REDIS_RULES and "+config|get" in model.REDIS_OWNER_RULES
    (shop_db, _blog_db) = sorted(stores["databases"], key=lambda d: d["name"], reverse=True)
    assert shop_db["apps"] == ["shop", "mailer"] and shop_db["job"] == "shop"
    assert stores["shared_networks"] == ["onebox_mailer", "onebox_shop"]
    assert stores["own"] == [
        {"container": "blog-postgres", "volume": "blog-postgres-data",
         "env_file": "/etc/onebox/postgres/blog-postgres.env", "networks": ["onebox_blog"]}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "apps,message",
    [
        ([web("a", "a.example.com", database="postgres")], "database 'postgres' is PostgreSQL's own"),
        (
            [web("a", "a.example.com", database="onebox_monitor")],
            "database 'onebox_monitor' is PostgreSQL's own or onebox's",
        ),
        ([web("a", "a.example.com", database_container="a-db")], "needs database: NAME"),
        (
            [web("a", "a.example.com", database="x"), worker("w", database="x", database_container="w-db")],
            "database x is in app-postgres for 'a' but in w-db for 'w'",
        ),
        ([web("a", "a.example.com", database="x", database_container="a-blue")], "is the name of a container of 'a'"),
        ([web("a", "a.example.com", database_password="short")], "database_password must be 12 characters"),
        ([web("a", "a.example.com", redis=1)], "redis must be true, false or the name of the app"),
        ([web("a", "a.example.com"), worker("w", redis="a")], "redis: a must name another app with redis: true"),
    ],
)
def test_bad_data_stores_are_refused(apps, message):
    with pytest.raises(model.ModelError) as err:
        model.normalize(apps)
    assert message in str(err.value)


def test_the_env_file_gets_the_apps_own_urls():
    old = {"DATABASE_URL": "postgres://postgres:x@postgres/shop", "KEY": "k"}
    (app,) = model.normalize([web("shop", "shop.example.com", database="shop", redis=True, secret_env=old)])
    creds = {
        "/etc/onebox/postgres/shop.password": "p@ss/word:1234\n",
        "/etc/onebox/shop/redis.password": "r-pass-1234567",
    }
    env, warnings = model.environment(app, creds)
    assert env["DATABASE_URL"] == "postgres://shop:p%40ss%2Fword%3A1234@postgres:5432/shop"
    assert env["REDIS_URL"] == "redis://shop:r-pass-1234567@redis:6379/0"
    assert env["KEY"] == "k"
    assert len(warnings) == 1 and "DATABASE_URL in env/secret_env is replaced" in warnings[0]
    (plain,) = model.normalize([web("www", "www.example.com", env={"A": 1})])
    assert model.environment(plain) == ({"A": "1"}, [])


def test_the_old_variables_keep_their_database_container_and_redis():
    legacy = {"app_image": "r/shop", "app_name": "shop", "app_database_container": "shop-postgres",
              "postgres_container": "shop-postgres", "postgres_redis_enabled": True}  # fmt: skip
    (app,) = model.normalize(model.from_legacy(legacy), settings=model.settings_of(legacy))
    assert app["derived"]["database"]["container"] == "shop-postgres" and not app["derived"]["database"]["own"]
    assert app["derived"]["redis"]["container"] == "shop-redis"


def test_a_shared_redis_is_refused_in_the_model():
    with pytest.raises(model.ModelError, match="Each app now has a Redis of its own"):
        model.refuse_mixed({"postgres_redis_enabled": True})
