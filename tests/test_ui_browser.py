"""The web pages a person opens, in a real headless browser (Debian's ``chromium``).

After a live run on the session's real services: the addresses ``tomopipe status`` prints open
and show what they should, and the Prefect UI's flow run page shows the run's state, logs, task
runs and artifacts, with the preview image loaded (not a ``file://`` image a browser refuses).
The browser is driven over the DevTools protocol (tests/browser.py); nothing is mocked.
"""

from __future__ import annotations

import re

import pytest
from browser import browser, chromium_path
from conftest import tomopipe_cli
from test_flows_support import (  # noqa: F401  (e2_services is a fixture)
    LIVE,
    artifacts_of,
    e2_services,
    final_run,
)

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="no chromium on PATH (the Makefile installs Debian's "
                                       "chromium package; apt-get install chromium)")

NO_API = "Can't connect to Server API"
LOADED_PNG = ("(() => { const i = [...document.images].filter(i => i.src.startsWith("
              "'data:image/png')); return i.length && i[0].complete && i[0].naturalWidth > 0 "
              "? [i[0].naturalWidth, i[0].naturalHeight] : null })()")


def _printed_addresses(home) -> dict[str, str]:
    """The ``name  http://...`` lines that `tomopipe status` prints for a person to open."""
    proc = tomopipe_cli("status", home=home, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(re.findall(r"^(\w+)\s+(https?://\S+)", proc.stdout, re.M))


@pytest.fixture(scope="module")
def live_run(e2_services):  # noqa: F811
    """A completed live run (its Prefect flow run) of a tiny simulated scan."""
    from tomopipe.infra.simulator.run import simulate

    from tomopipe.config import load_settings

    home, state = e2_services
    uid = simulate(load_settings(home), size=32, rows=8, angles=45, fps=None,
                   sample="ui-test", publish_to=state["zmq_in"],
                   serializer=state.get("zmq_serializer", "msgpack"))
    run = final_run(state, LIVE, uid, 240)
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    return uid, run


def test_every_printed_address_opens(e2_services, live_run):  # noqa: F811
    home, _ = e2_services
    addresses = _printed_addresses(home)
    assert {"prefect_ui", "prefect_api", "tiled"} <= set(addresses), addresses
    with browser() as page:
        page.goto(addresses["prefect_ui"])
        page.wait_for("document.body.innerText.includes('Flow Runs') || "
                      "document.body.innerText.includes('Dashboard')", 90,
                      what="the Prefect dashboard")
        assert NO_API not in page.text()
        # the runs page lists the live run it fetched from this server's API
        page.goto(addresses["prefect_ui"].rstrip("/") + "/runs")
        page.wait_for(f"document.body.innerText.includes({live_run[1]['name']!r})", 90,
                      what="the live run on the runs page")

        page.goto(addresses["prefect_api"].rstrip("/") + "/docs")
        page.wait_for("document.title.includes('Prefect')", 60, what="the API's docs page")

        page.goto(addresses["tiled"])
        page.wait_for("document.title === 'Tiled'", 60, what="Tiled's start page")
        assert "Explore from your web browser" in page.text()

        if "dask_dashboard" in addresses:
            page.goto(addresses["dask_dashboard"])
            page.wait_for("document.title.includes('Dask')", 60, what="the Dask dashboard")


def test_flow_run_page_shows_the_run(e2_services, live_run):  # noqa: F811
    home, state = e2_services
    uid, run = live_run
    ui = _printed_addresses(home)["prefect_ui"].rstrip("/")
    with browser() as page:
        page.goto(f"{ui}/runs/flow-run/{run['id']}")
        page.wait_for(f"document.body.innerText.includes({run['name']!r})", 90,
                      what="the flow run's name")
        # logs, written by the flow itself (not only the worker's submission lines)
        page.wait_for("document.body.innerText.includes('published')", 90,
                      what="the flow's 'published' log line")
        text = page.text()
        assert "Completed" in text and NO_API not in text
        assert "live-run" in text  # the flow's name

        page.click_text("Task Runs")  # streamed, or (stopped before it could) at the stop
        page.wait_for("(document.body.innerText.includes('stream-run') || "
                      "document.body.innerText.includes('reconstruct')) && "
                      "document.body.innerText.includes('publish')", 60, what="the task runs")

        page.click_text("Artifacts")
        page.wait_for("document.body.innerText.includes('-preview')", 60,
                      what="the preview artifact in the list")

        by_type = {a["type"]: a for a in artifacts_of(state, run["id"]) if a.get("key")}
        image = by_type["image"]
        assert image["data"].startswith("data:image/png;base64,"), image["data"][:40]
        page.goto(f"{ui}/artifacts/artifact/{image['id']}")
        width, height = page.wait_for(LOADED_PNG, 60, what="the preview image to load")
        assert width > 0 and height > 0

        summary = next(a for a in artifacts_of(state, run["id"])
                       if (a.get("key") or "").endswith("-summary"))
        page.goto(f"{ui}/artifacts/artifact/{summary['id']}")
        page.wait_for(LOADED_PNG, 60, what="the preview image in the summary")
        assert uid in page.text()
