# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How pg_backup and pg_restore reach PostgreSQL."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  host:
    description: Server host or socket directory. Default is libpq's (local socket).
    type: str
  port:
    description: Server port.
    type: int
  user:
    description:
      - Role to connect as. Always sent, because C(docker exec) into the official C(postgres) image runs as
        root, and libpq would otherwise ask for a role named after that OS user.
    type: str
    default: postgres
  password:
    description: Password of O(user). Passed to the tools in the environment only, never on a command line.
    type: str
  container:
    description: Run the PostgreSQL tools inside this Docker container (C(docker exec), never with a TTY).
    type: str
  container_user:
    description: User to run the tools as inside O(container) (C(docker exec --user)).
    type: str
  docker_bin:
    description: The docker command.
    type: str
    default: docker
  bin_dir:
    description: Directory of pg_dump, pg_restore and psql on this host (for example C(/usr/lib/postgresql/16/bin)).
    type: path
"""
