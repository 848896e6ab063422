"""The CI/CD examples a user copies into their app's repository.

actionlint (with shellcheck on every `run:` script) judges the GitHub
workflows, ours included; check-jsonschema judges the GitLab file against
GitLab's own schema. Each check is also shown to fail on a broken copy, so
a pass means something. The deploy command itself runs against a real
server in scripts/install-test.sh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
GITHUB = os.path.join(ROOT, "examples", "ci", "github", "workflows")
GITLAB = os.path.join(ROOT, "examples", "ci", "gitlab", ".gitlab-ci.yml")
WORKFLOWS = sorted(
    [os.path.join(GITHUB, f) for f in os.listdir(GITHUB)]
    + [os.path.join(ROOT, ".github", "workflows", f) for f in os.listdir(os.path.join(ROOT, ".github", "workflows"))]
)
DEPLOY_COMMAND = re.compile(r"ansible-playbook onebox\.platform\.deploy .*?--vault-password-file \S+", re.S)


def load(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def tool(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        path = shutil.which(name)
    assert path, f"{name} is not installed (make venv installs it)"
    return path


def actionlint(*files):
    return subprocess.run([tool("actionlint"), "-no-color", *files], capture_output=True, text=True, check=False)


def gitlab_schema(path):
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", path],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("path", WORKFLOWS, ids=os.path.basename)
def test_actionlint_passes(path):
    assert shutil.which("shellcheck"), "shellcheck is missing: actionlint would skip the run: scripts"
    result = actionlint(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_node20_action_and_a_shell_bug(tmp_path):
    with open(os.path.join(GITHUB, "deploy.yml"), encoding="utf-8") as fh:
        text = fh.read()
    text = text.replace("actions/checkout@v5", "actions/checkout@v4", 1)
    text = text.replace('docker push "$IMAGE:$GITHUB_SHA"', "docker push $IMAGE:$GITHUB_SHA `ls`")
    bad = tmp_path / "deploy.yml"
    bad.write_text(text)
    result = actionlint(str(bad))
    assert result.returncode != 0
    assert "node20" in result.stdout
    assert "shellcheck" in result.stdout


def test_gitlab_example_matches_gitlabs_schema():
    result = gitlab_schema(GITLAB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_schema_check_catches_a_broken_file(tmp_path):
    doc = load(GITLAB)
    doc["deploy"]["resource_group"] = ["not", "a", "string"]
    doc["deploy"]["when"] = "sometimes"
    bad = tmp_path / ".gitlab-ci.yml"
    bad.write_text(yaml.safe_dump(doc))
    assert gitlab_schema(str(bad)).returncode != 0


def _github_step(workflow, step_id):
    doc = load(os.path.join(GITHUB, workflow))
    return next(step for job in doc["jobs"].values() for step in job["steps"] if step.get("id") == step_id)


def test_github_and_gitlab_run_the_same_deploy_command():
    github = DEPLOY_COMMAND.search(_github_step("deploy.yml", "deploy")["run"]).group(0)
    gitlab = DEPLOY_COMMAND.search("\n".join(load(GITLAB)["deploy"]["script"])).group(0)
    assert github == gitlab


def test_deploys_never_race_and_production_can_require_approval():
    for name in ("deploy.yml", "rollback.yml"):
        doc = load(os.path.join(GITHUB, name))
        assert doc["concurrency"] == {"group": "onebox-deploy-production", "cancel-in-progress": False}
        job = doc["jobs"]["deploy" if name == "deploy.yml" else "rollback"]
        assert job["environment"]["name"] == "production"
    gitlab = load(GITLAB)
    assert gitlab[".onebox"]["resource_group"] == "production"
    assert gitlab[".onebox"]["environment"]["name"] == "production"


def test_secrets_only_reach_steps_through_env_never_the_command_line():
    # `${{ secrets.X }}` inside a run: script lands in the script text (and
    # in `ps` on the runner); the examples pass every secret through env.
    for name in os.listdir(GITHUB):
        doc = load(os.path.join(GITHUB, name))
        for job in doc["jobs"].values():
            for step in job["steps"]:
                assert "secrets." not in step.get("run", ""), (name, step.get("name"))


def test_the_examples_pin_what_they_install():
    versions = load(os.path.join(ROOT, "galaxy.yml"))["version"]
    runtime = load(os.path.join(ROOT, "meta", "runtime.yml"))["requires_ansible"]
    low, high = re.match(r">=(\d+\.\d+)\.\d+,<(\d+\.\d+)\.\d+", runtime).groups()
    for name in os.listdir(GITHUB):
        env = load(os.path.join(GITHUB, name))["env"]
        assert env["ONEBOX_COLLECTION_VERSION"] == versions
        core = tuple(int(x) for x in env["ANSIBLE_CORE_VERSION"].split(".")[:2])
        assert tuple(int(x) for x in low.split(".")) <= core < tuple(int(x) for x in high.split("."))
    assert load(GITLAB)["variables"]["ONEBOX_COLLECTION_VERSION"] == versions
