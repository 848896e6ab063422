# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image ID inside a `docker save` archive, read on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
name: image_archive_id
short_description: The ID of the image in a docker save archive on the controller
version_added: "0.5.0"
description:
  - Reads only the archive's C(manifest.json) (the tar's headers are skipped over, not its layers) and returns
    the ID of the image it holds, C(sha256:...), as C(docker image inspect) shows it once loaded.
  - A role compares it with the image the server has, so that an archive of hundreds of megabytes is copied and
    loaded only when the server lacks that image, instead of being checksummed on both sides on every run.
  - Archives from Docker 20.10 (C(<id>.json)) and from Docker 25 and later (OCI layout, C(blobs/sha256/<id>)) are read.
options:
  _terms:
    description: Path of the archive on the controller (one).
    type: list
    elements: path
    required: true
author:
  - onebox.platform developers (@onebox)
"""

EXAMPLES = r"""
- name: Load the archive only when the server lacks its image
  community.docker.docker_image_load:
    path: /var/tmp/image.tar
  when: >-
    image_info.images | map(attribute='Id') | list
    is not contains(lookup('onebox.platform.image_archive_id', '/srv/images/postgres-15.tar'))
"""

RETURN = r"""
_raw:
  description: The image's ID, C(sha256:) and 64 hex digits, one per archive given.
  type: list
  elements: str
"""

import json
import re
import tarfile

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

_HEX = re.compile(r"[0-9a-f]{64}")


def archive_id(path):
    """The ID of the one image in the docker save archive at PATH."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = next((m for m in tar if m.name.lstrip("./") == "manifest.json"), None)
            if member is None:
                raise AnsibleLookupError(f"{path} holds no manifest.json: it is not an archive made by docker save")
            manifest = json.load(tar.extractfile(member))
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise AnsibleLookupError(f"cannot read the image archive {path}: {exc}") from exc
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise AnsibleLookupError(f"{path}: expected one image in the archive, its manifest.json lists {len(manifest)}")
    config = str(manifest[0].get("Config", ""))
    digest = config.rsplit("/", 1)[-1].removesuffix(".json")
    if not _HEX.fullmatch(digest):
        raise AnsibleLookupError(f"{path}: its manifest.json names no image configuration ({config!r})")
    return f"sha256:{digest}"


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [archive_id(str(term)) for term in terms]
