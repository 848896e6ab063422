"""Lookup image_archive_id: the ID of the image in a docker save archive, as
docker image inspect shows it once loaded (roles/postgres loads an archive
only when the server lacks that image)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile

import pytest
from ansible.errors import AnsibleLookupError
from ansible_collections.onebox.platform.plugins.lookup.image_archive_id import LookupModule, archive_id

HEX = "ab" * 32


def docker(*args):
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_real_archive_gives_the_id_docker_shows(tmp_path):
    image = "local/demo:v1"
    path = str(tmp_path / "demo.tar")
    docker("save", "-o", path, image)
    assert archive_id(path) == docker("image", "inspect", "-f", "{{.Id}}", image)
    assert LookupModule().run([path]) == [archive_id(path)]


@pytest.mark.parametrize("config", [f"{HEX}.json", f"blobs/sha256/{HEX}"], ids=["docker-20.10", "oci-layout"])
def test_both_layouts_and_a_large_layer_before_the_manifest(tmp_path, config):
    """The layer comes first, as docker save writes it; only headers are read."""
    path = str(tmp_path / "image.tar")
    manifest = json.dumps([{"Config": config, "RepoTags": ["local/x:1"], "Layers": ["l/layer.tar"]}]).encode()
    write_tar(path, [("l/layer.tar", os.urandom(1 << 20)), ("manifest.json", manifest)])
    assert archive_id(path) == f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("other.txt", b"x")], "holds no manifest.json"),
        ([("manifest.json", b"[{}, {}]")], "expected one image"),
        ([("manifest.json", b'[{"Config": "../../etc/passwd"}]')], "names no image configuration"),
        ([("manifest.json", b"not json")], "cannot read the image archive"),
    ],
    ids=["no-manifest", "two-images", "bad-config", "bad-json"],
)
def test_what_is_not_one_saved_image_is_a_clear_error(tmp_path, members, message):
    path = str(tmp_path / "bad.tar")
    write_tar(path, members)
    with pytest.raises(AnsibleLookupError, match=message):
        archive_id(path)


def test_a_missing_or_non_tar_file_is_a_clear_error(tmp_path):
    with pytest.raises(AnsibleLookupError, match="cannot read the image archive"):
        archive_id(str(tmp_path / "absent.tar"))
    (tmp_path / "plain").write_bytes(b"\0" * 10 + b"not a tar")
    with pytest.raises(AnsibleLookupError, match="cannot read the image archive"):
        archive_id(str(tmp_path / "plain"))
