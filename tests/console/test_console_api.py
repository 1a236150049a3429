"""The console's JSON API on a real gateway (real nats-server): Admin's auth rules, read-only, secrets kept out.

The page itself is driven in a real browser in test_console_browser.py; these tests pin what the
API lets in and what it shows, over plain HTTP as the page sends it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshgate.gateway import Gateway
from meshgate.replicator import dead_letter_event
from meshgate.v1 import event_pb2
from tests._wait import eventually
from tests.gateway._helpers import running_gateway
from tests.security._tokens import ADMIN_TOKEN, ORDERS_TOKEN, WRONG_TOKEN, token_env, write_mesh

__all__ = ["token_env", "write_mesh"]  # fixtures used by name

Response = tuple[int, dict[str, str], bytes]


def _fetch(url: str, headers: dict[str, str], method: str, body: bytes | None) -> Response:
    request = urllib.request.Request(url, headers=headers, method=method, data=body)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


async def call(
    gw: Gateway, path: str, *, token: str | None = None, method: str = "GET", body: bytes | None = None
) -> tuple[int, Any]:
    """Status and decoded JSON of a console call (in a thread: the API needs this loop free)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, raw = await asyncio.to_thread(_fetch, f"http://127.0.0.1:{gw.http_port}{path}", headers, method, body)
    return status, json.loads(raw)


def _mesh_text(gw: Gateway) -> str:
    """The text of the mesh file the gateway runs."""
    return Path(gw.routing[0].source).read_text()


@pytest.fixture
async def secure_console(write_mesh: Any, tmp_path: Path) -> AsyncIterator[Gateway]:
    """Region `here` with the clients of tests/security/_tokens.py, its console on a free port."""
    async with running_gateway(write_mesh(), tmp_path, metrics_listen="127.0.0.1:0") as gw:
        yield gw


async def test_the_page_is_served_to_anyone_its_data_only_to_admin_clients(secure_console: Gateway) -> None:
    gw = secure_console
    status, headers, page = await asyncio.to_thread(
        _fetch, f"http://127.0.0.1:{gw.http_port}/console/", {}, "GET", None
    )
    assert status == 200 and b"Meshgate console" in page
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    # Nothing from elsewhere: no CDN, no external font; the policy forbids it too.
    assert b"http://" not in page.replace(b"http://www.w3.org", b"") and b"https://" not in page
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    status, body = await call(gw, "/console/api/mesh")
    assert status == 401 and "requires a client token" in body["error"], body
    status, body = await call(gw, "/console/api/mesh", token=WRONG_TOKEN)
    assert status == 401 and "not valid" in body["error"], body
    status, body = await call(gw, "/console/api/explain?topic=orders/a", token=ORDERS_TOKEN)
    assert status == 403 and "'orders-service' may not call Admin" in body["error"], body

    status, mesh = await call(gw, "/console/api/mesh", token=ADMIN_TOKEN)
    assert status == 200, mesh
    regions = {r["name"]: r for r in mesh["regions"]}
    assert regions["here"]["reachable"] and regions["here"]["here"]
    # `there` has no gateway running: it shows as not answering, its link as not reported.
    assert not regions["there"]["reachable"] and regions["there"]["error"], regions
    links = {(link["origin"], link["destination"]): link for link in mesh["links"]}
    assert set(links) == {("here", "there"), ("there", "here")}
    assert links["here", "there"]["reported"] and links["here", "there"]["state"] != "unknown"
    assert links["there", "here"] == {"origin": "there", "destination": "here", "state": "unknown", "reported": False}


async def test_the_api_writes_nothing(secure_console: Gateway) -> None:
    gw = secure_console
    for path in ("mesh", "explain?topic=orders/a", "locate?id=x", "deadletters"):
        status, body = await call(gw, f"/console/api/{path}", token=ADMIN_TOKEN, method="POST", body=b"x")
        assert status == 405, (path, body)
    status, body = await call(gw, "/console/api/diff", token=ADMIN_TOKEN)
    assert status == 405 and "POST the edited mesh file" in body["error"]
    status, body = await call(gw, "/console/api/reload", token=ADMIN_TOKEN, method="POST", body=b"x")
    assert status == 404


async def test_explain_names_each_rules_line_of_the_file(secure_console: Gateway, write_mesh: Any) -> None:
    gw = secure_console
    status, ex = await call(gw, "/console/api/explain?topic=orders/eu/1&from=there", token=ADMIN_TOKEN)
    assert status == 200, ex
    lines = _mesh_text(gw).splitlines()
    line = next(i for i, text in enumerate(lines, 1) if 'topic: "orders/>"' in text)
    assert ex["destinations"] == ["here", "there"] and ex["origin"] == "there"
    assert ex["rules"] == [
        {"index": 0, "pattern": "orders/>", "regions": ["here", "there"], "line": line, "text": lines[line - 1].strip()}
    ]
    status, bad = await call(gw, "/console/api/explain?topic=orders//x", token=ADMIN_TOKEN)
    assert status == 400 and "level 2 is empty" in bad["error"], bad
    status, bad = await call(gw, "/console/api/explain?topic=orders/x&from=mars", token=ADMIN_TOKEN)
    assert status == 400 and "'mars' is not in the mesh" in bad["error"], bad


async def test_a_diff_preview_shows_errors_by_line_and_never_a_secret(secure_console: Gateway) -> None:
    gw = secure_console
    text = _mesh_text(gw)
    # The routing rule now names a region that does not exist, and the admin token's variable.
    broken = text.replace('regions: ["here", "there"]', 'regions: ["here", "mars"]').replace(
        'topic: "orders/>"', 'topic: "${ADMIN_TOKEN}/>"'
    )
    status, d = await call(
        gw, "/console/api/diff?name=edited.yaml", token=ADMIN_TOKEN, method="POST", body=broken.encode()
    )
    assert status == 200 and d["valid"] is False, d
    line = next(i for i, t in enumerate(broken.splitlines(), 1) if '"mars"' in t)
    column = broken.splitlines()[line - 1].index('"mars"') + 1
    texts = [e["text"] for e in d["errors"]]
    assert any(t.startswith(f"edited.yaml:{line}:{column}: ") and "unknown region 'mars'" in t for t in texts), texts
    # The token's variable is not given to the preview: it is reported unset, its value shown nowhere.
    assert ADMIN_TOKEN not in json.dumps(d)
    assert any("ADMIN_TOKEN" in t for t in texts), texts

    edited = text.replace('regions: ["here", "there"]', 'regions: ["here"]')
    status, d = await call(gw, "/console/api/diff", token=ADMIN_TOKEN, method="POST", body=edited.encode())
    assert status == 200 and d["valid"] and d["routing_changed"], d
    assert d["links"]["removed"] == [{"origin": "here", "destination": "there"}]
    assert {"origin": "here", "topic": "orders/x", "old": ["here", "there"], "new": ["here"]} in d["topics"]


async def test_dead_letters_show_the_latest_of_each_destination(secure_console: Gateway) -> None:
    gw = secure_console
    status, d = await call(gw, "/console/api/deadletters", token=ADMIN_TOKEN)
    assert (status, d) == (200, {"region": "here", "dead_letters": []})
    letters = [
        dead_letter_event(
            event_pb2.Event(id=f"ev-{i}", topic=f"orders/{i}", source="/t", type="t", origin="here", data=b"{}"),
            destination="there",
            reason=f"too large #{i}",
        )
        for i in range(3)
    ]
    results = await gw.broker.append(letters)
    assert all(not isinstance(r, Exception) for r in results), results
    status, d = await call(gw, "/console/api/deadletters", token=ADMIN_TOKEN)
    assert status == 200, d
    [latest] = d["dead_letters"]
    assert {k: latest[k] for k in ("destination", "topic", "id", "reason")} == {
        "destination": "there",
        "topic": "orders/2",
        "id": "ev-2",
        "reason": "too large #2",
    }
    assert latest["stored_time"]


async def test_where_is_event_asks_every_region(secure_console: Gateway) -> None:
    gw = secure_console
    [result] = await gw.broker.append(
        [event_pb2.Event(id="find-me", topic="orders/1", source="/t", type="t", origin="here", data=b"{}")]
    )
    assert not isinstance(result, Exception), result

    async def found() -> Any:
        status, d = await call(gw, "/console/api/locate?id=find-me", token=ADMIN_TOKEN)
        assert status == 200, d
        return d if d["locations"][0]["found"] else None

    d = await eventually(found, 30, what="the event found in region here")
    here, there = d["locations"]
    assert (here["region"], here["topic"], here["stored_time"] is not None) == ("here", "orders/1", True)
    assert there["region"] == "there" and not there["found"] and there["error"], there
