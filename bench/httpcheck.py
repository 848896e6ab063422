"""One GET on loopback that tells which demo version answered (both benches)."""

from __future__ import annotations

import http.client
import json


def version_at(port, path="/", host=None, timeout=2.0):
    """The "version" field of a 200 answer from 127.0.0.1:PORT, or None for
    any failure (refused, timeout, other status, not JSON)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path, headers={"Host": host} if host else {})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return json.loads(body).get("version") if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
