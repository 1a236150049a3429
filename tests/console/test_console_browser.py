"""The mesh console in a real headless Chromium against a running 3-region ``meshgate up``.

The browser is the system's Chromium, driven over the DevTools protocol (tests/console/_cdp.py).
With MESHGATE_CONSOLE_SCREENSHOTS=DIR the tests also save the README's screenshots in DIR
(docs/images); without, in the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshgate.replicator import dead_letter_event
from meshgate.testing import ChildProcess, freeze
from meshgate.v1 import event_pb2, gateway_pb2, gateway_pb2_grpc
from tests._wait import eventually
from tests.console._cdp import Page, find_chromium, launch
from tests.e2e._mesh import _pid_alive, free_port
from tests.gateway._helpers import running_gateway
from tests.security._tokens import ADMIN_TOKEN, ORDERS_TOKEN, token_env, write_mesh

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="finds a region's nats-server in /proc"),
    # CI installs Chromium (.ci/run): there a missing browser is a failure, not a skip.
    pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium on this machine"),
    # Each test runs three regions and a browser: they share one worker, never run side by side.
    pytest.mark.xdist_group("console-browser"),
    pytest.mark.timeout(150),
]

__all__ = ["token_env", "write_mesh"]  # fixtures used by name

REGIONS = ("us-west", "eu-central", "ap-south")


@dataclass
class Mesh:
    up: ChildProcess
    config: Path
    data_dir: Path
    gateways: dict[str, str]
    consoles: dict[str, str]


def _mesh_text(gateways: dict[str, str], metrics: dict[str, str]) -> str:
    regions = "".join(
        f"    - name: {name}\n      kind: embedded\n      gateway: {gateways[name]}\n      metrics: {metrics[name]}\n"
        for name in REGIONS
    )
    return f"""\
# The quickstart's mesh on free ports.
event_mesh:
  regions:
{regions}
  routing:
    - topic: "orders/*"
      regions: ["us-west", "eu-central", "ap-south"]
    - topic: "inventory/*"
      regions: ["us-west"]
    - topic: "payments/eu/>"
      regions: ["eu-central"]
  settings:
    shutdown_grace: 5s
    # A region whose broker is frozen answers no batch: its links back off after this long.
    replication_ack_timeout: 5s
"""


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    gateways = {name: f"127.0.0.1:{free_port()}" for name in REGIONS}
    metrics = {name: f"127.0.0.1:{free_port()}" for name in REGIONS}
    config = tmp_path / "mesh.yaml"
    config.write_text(_mesh_text(gateways, metrics))
    data_dir = tmp_path / "data"
    up = ChildProcess(args=("-m", "meshgate", "up", "-c", str(config), "--data-dir", str(data_dir)))
    await up.launch()
    try:
        await eventually(
            lambda: up.text().count("gateway serving on") == 3, 60, what=f"three regions serving:\n{up.text()}"
        )
        yield Mesh(
            up=up,
            config=config,
            data_dir=data_dir,
            gateways=gateways,
            consoles={name: f"http://{address}/console/" for name, address in metrics.items()},
        )
    finally:
        for pid in _nats_servers(data_dir):
            os.kill(pid, signal.SIGCONT)  # a frozen broker would hold up the drain
        await up.close(grace=20)


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    assert CHROMIUM is not None, "chromium is not installed (Debian: apt-get install chromium)"
    async with launch(CHROMIUM) as browser:
        yield await browser.page(width=1280, height=900)


def _nats_servers(data_dir: Path) -> dict[int, str]:
    """pid -> region of the embedded nats-servers of ``meshgate up`` on ``data_dir``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not _pid_alive(int(proc.name)):
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "nats-server" not in cmdline:
            continue
        for region in REGIONS:
            if f"{data_dir.resolve()}/{region}/" in cmdline:
                found[int(proc.name)] = region
    return found


# The texts whose colour is less than 4.5:1 against what is behind them (WCAG 2 contrast ratio).
_LOW_CONTRAST = """(() => {
  const lum = (c) => {
    const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const behind = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (c && c !== "transparent" && !c.startsWith("rgba(0, 0, 0, 0)")) return c;
    }
    return "rgb(255, 255, 255)";
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    if (el.closest("[hidden], .skip, title, script, style, option")) continue;
    const style = getComputedStyle(el);
    const svg = el instanceof SVGElement;
    const fg = svg ? style.fill : style.color;
    const bg = svg ? getComputedStyle(document.getElementById("mesh-svg")).backgroundColor : behind(el);
    const [a, b] = [lum(fg), lum(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName} "${el.textContent.trim().slice(0, 40)}": ${ratio.toFixed(2)}`);
  }
  return low;
})()"""


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MESHGATE_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def _links(page: Page) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of the page's link table: (origin, destination) -> their data attributes."""
    rows = await page.evaluate(
        "JSON.stringify([...document.querySelectorAll('#links-table tbody tr')].map(r => Object.assign({}, r.dataset)))"
    )
    return {(r["origin"], r["destination"]): r for r in json.loads(rows)}


async def _all_replicating(page: Page) -> bool:
    drawn = await page.evaluate(
        "[document.querySelectorAll('#mesh-svg g.region').length, document.querySelectorAll('#mesh-svg g.link').length]"
    )
    links = await _links(page)
    return drawn == [3, 6] and len(links) == 6 and all(r["state"] == "replicating" for r in links.values())


async def _publish(address: str, topic: str, n: int, *, prefix: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        resp = await gateway_pb2_grpc.GatewayStub(channel).Publish(
            gateway_pb2.PublishRequest(
                events=[
                    event_pb2.Event(id=f"{prefix}-{i}", topic=topic, source="/tests/console", type="t", data=b"{}")
                    for i in range(n)
                ]
            ),
            timeout=15,
        )
    assert all(r.outcome == event_pb2.OUTCOME_ACCEPTED for r in resp.results), resp


async def _submit(page: Page, form: str) -> None:
    await page.evaluate(f"document.getElementById({form!r}).requestSubmit()")


async def _set(page: Page, element: str, value: str) -> None:
    await page.evaluate(f"document.getElementById({element!r}).value = {json.dumps(value)}")


async def test_the_map_the_route_explorer_and_a_broken_file(mesh: Mesh, page: Page, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    await page.goto(mesh.consoles["us-west"])
    await eventually(lambda: _all_replicating(page), 60, what="three regions and six replicating links drawn")
    names = await page.evaluate("[...document.querySelectorAll('#mesh-svg g.region')].map(g => g.dataset.region)")
    assert sorted(names) == sorted(REGIONS)
    await _publish(mesh.gateways["us-west"], "orders/created", 20, prefix="map")
    await _publish(mesh.gateways["eu-central"], "orders/created", 10, prefix="map-eu")

    async def forwarded() -> bool:
        links = await _links(page)
        wanted = {("us-west", "ap-south"): 20, ("us-west", "eu-central"): 20, ("eu-central", "ap-south"): 10}
        return all(
            int(links[key]["forwarded"] or 0) >= n and links[key]["lagEvents"] == "0" for key, n in wanted.items()
        ) and all(r["state"] == "replicating" for r in links.values())

    await eventually(forwarded, 60, what="the published events forwarded")
    await page.screenshot(shots / "console-map.png", selector="#map")

    # The route explorer: a topic from another origin, the rule that chose it and its line.
    await _set(page, "topic", "payments/eu/card")
    await _set(page, "origin", "ap-south")
    await _submit(page, "explain-form")
    rule_line = next(
        i for i, text in enumerate(mesh.config.read_text().splitlines(), 1) if 'topic: "payments/eu/>"' in text
    )
    answer = await eventually(
        lambda: page.evaluate("document.getElementById('explain-out').innerText || null"), 30, what="an explanation"
    )
    assert "payments/eu/card from ap-south goes to:" in answer, answer
    pills = await page.evaluate("[...document.querySelectorAll('#explain-destinations .pill')].map(p => p.textContent)")
    assert pills == ["ap-south", "eu-central"]
    assert f"{mesh.config}:{rule_line}" in answer and 'topic: "payments/eu/>"' in answer, answer
    await page.screenshot(shots / "console-routes.png", selector="#routes")

    # Where is event: held by every region its route names, with when each stored it.
    await _set(page, "event-id", "map-3")
    await _submit(page, "trace-form")
    held = await eventually(
        lambda: page.evaluate(
            "[...document.querySelectorAll('#trace-table tbody tr')].map(r => r.dataset.region + '=' + r.dataset.found)"
            ".join(' ') || null"
        ),
        30,
        what="the event located",
    )
    assert sorted(held.split()) == sorted(f"{r}=true" for r in REGIONS), held

    # A broken file, uploaded as a person would: its FILE:LINE:COL error and the line itself.
    broken_text = mesh.config.read_text().replace('regions: ["eu-central"]', 'regions: ["eu-centrl"]')
    broken = tmp_path / "broken.yaml"
    broken.write_text(broken_text)
    line = next(i for i, t in enumerate(broken_text.splitlines(), 1) if "eu-centrl" in t)
    column = broken_text.splitlines()[line - 1].index('"eu-centrl"') + 1
    document = await page.send("DOM.getDocument")
    found = await page.send("DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": "#diff-file"})
    await page.send("DOM.setFileInputFiles", {"files": [str(broken)], "nodeId": found["nodeId"]})
    await eventually(
        lambda: page.evaluate("document.getElementById('diff-text').value.includes('eu-centrl')"),
        30,
        what="the chosen file read into the editor",
    )
    await _submit(page, "diff-form")
    errors = await eventually(
        lambda: page.evaluate("document.getElementById('diff-errors')?.innerText || null"), 30, what="the errors"
    )
    assert f"broken.yaml:{line}:{column}: " in errors and "unknown region 'eu-centrl'" in errors, errors
    await page.screenshot(shots / "console-diff-error.png", selector="#diff")

    # A valid edit: the topics whose destinations change and the links that go.
    await _set(
        page, "diff-text", mesh.config.read_text().replace('["us-west", "eu-central", "ap-south"]', '["us-west"]')
    )
    await _submit(page, "diff-form")
    summary = await eventually(
        lambda: page.evaluate(
            "document.getElementById('diff-summary') && document.getElementById('diff-out').innerText"
        ),
        30,
        what="the diff",
    )
    assert "Routing changes." in summary, summary
    assert "from ap-south: orders/x: ap-south, eu-central, us-west → ap-south, us-west" in summary, summary
    assert "- us-west → ap-south" in summary and "- eu-central → ap-south" in summary, summary
    await page.screenshot(shots / "console-diff.png", selector="#diff-out")

    # Every text on the page, filled in as it now is, keeps a contrast of 4.5:1 or more (WCAG AA).
    assert await page.evaluate(_LOW_CONTRAST) == []

    # The keyboard alone: the first Tab lands on the skip link; a topic typed and Enter explain it.
    await page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    await page.press("Tab", key_code=9)
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.evaluate("document.getElementById('topic').value = ''; document.getElementById('topic').focus()")
    await page.type("inventory/sku-1")
    await page.press("Enter", key_code=13, text="\r")
    await eventually(
        lambda: page.evaluate("document.getElementById('explain-out').innerText.includes('inventory/sku-1 from')"),
        30,
        what="the route explained from the keyboard",
    )


async def test_a_killed_regions_links_back_off_and_their_lag_grows(mesh: Mesh, page: Page, tmp_path: Path) -> None:
    shots = _shots(tmp_path)
    await page.goto(mesh.consoles["us-west"])
    await eventually(lambda: _all_replicating(page), 60, what="three regions and six replicating links drawn")
    [ap_south] = [pid for pid, region in _nats_servers(mesh.data_dir).items() if region == "ap-south"]
    await freeze(ap_south)  # ap-south's broker stops: its gateway can store nothing
    await _publish(mesh.gateways["us-west"], "orders/created", 10, prefix="while-down")
    await _publish(mesh.gateways["eu-central"], "orders/created", 10, prefix="while-down-eu")
    into_ap_south = [("us-west", "ap-south"), ("eu-central", "ap-south")]

    async def backing_off() -> dict[tuple[str, str], int] | None:
        links = await _links(page)
        rows = [links[key] for key in into_ap_south]
        if all(r["state"] == "backing_off" and int(r["lagEvents"] or 0) >= 10 for r in rows):
            return {key: int(links[key]["lagEvents"]) for key in into_ap_south}
        return None

    before = await eventually(backing_off, 90, what="the links into ap-south backing off with lag")
    other = await _links(page)
    assert other["us-west", "eu-central"]["state"] == "replicating", other
    await _publish(mesh.gateways["us-west"], "orders/created", 15, prefix="still-down")

    async def grown() -> bool:
        links = await _links(page)
        return (
            links["us-west", "ap-south"]["state"] == "backing_off"
            and int(links["us-west", "ap-south"]["lagEvents"]) >= before["us-west", "ap-south"] + 15
        )

    await eventually(grown, 60, what="the lag of us-west -> ap-south growing")
    arrow = "#mesh-svg g.link[data-origin='us-west'][data-destination='ap-south'] line"
    colour = await page.evaluate(f"getComputedStyle(document.querySelector({json.dumps(arrow)})).stroke")
    assert colour == "rgb(179, 38, 30)", colour  # backing off is drawn red
    await page.screenshot(shots / "console-backing-off.png", selector="#map")
    os.kill(ap_south, signal.SIGCONT)
    await eventually(lambda: _all_replicating(page), 90, what="every link replicating again once ap-south is back")


async def test_with_tokens_the_page_asks_for_an_admin_token(write_mesh: Any, tmp_path: Path, page: Page) -> None:
    async with running_gateway(write_mesh(), tmp_path, metrics_listen="127.0.0.1:0") as gw:
        await page.goto(f"http://127.0.0.1:{gw.http_port}/console/")
        asked = await eventually(
            lambda: page.evaluate(
                "!document.getElementById('token-form').hidden && document.getElementById('token-error').textContent"
            ),
            30,
            what="the token form shown",
        )
        assert "requires a client token" in asked, asked
        # A client that is not an admin is refused as Admin refuses it.
        await _set(page, "token", ORDERS_TOKEN)
        await _submit(page, "token-form")
        refused = await eventually(
            lambda: page.evaluate(
                "document.getElementById('token-error').textContent.includes('may not call')"
                " && document.getElementById('token-error').textContent"
            ),
            30,
            what="the refusal of a client that is not an admin",
        )
        assert "'orders-service' may not call Admin" in refused, refused
        await _set(page, "token", ADMIN_TOKEN)
        await _submit(page, "token-form")
        names = await eventually(
            lambda: page.evaluate(
                "document.getElementById('token-form').hidden"
                " && [...document.querySelectorAll('#mesh-svg g.region')].map(g => g.dataset.region).join(' ')"
            ),
            30,
            what="the map drawn with the admin token",
        )
        assert names == "here there", names
        # Kept for this tab only: sessionStorage, never a cookie or localStorage.
        assert await page.evaluate("sessionStorage.getItem('meshgate-console-token')") == ADMIN_TOKEN
        assert await page.evaluate("document.cookie + localStorage.length") == "0"

        # Dead letters: the latest of each destination, with its reason, topic and id.
        refused = event_pb2.Event(id="too-big-1", topic="orders/big", source="/t", type="t", origin="here", data=b"{}")
        [stored] = await gw.broker.append([dead_letter_event(refused, destination="there", reason="too large there")])
        assert not isinstance(stored, Exception), stored
        await page.evaluate("document.getElementById('dead-refresh').click()")
        row = await eventually(
            lambda: page.evaluate(
                "[...document.querySelectorAll('#dead-table tbody tr > *')].map(c => c.textContent).join('|') || null"
            ),
            30,
            what="the dead letter listed",
        )
        assert row.startswith("there|too large there|orders/big|too-big-1|"), row
