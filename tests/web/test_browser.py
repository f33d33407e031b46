"""The web run table in Debian's chromium against the real stack (five services as processes).

One system for the module (services start in ~20 s): runs 1 and 2 are processed
(raw, proc and the cluster job) before the first test; later tests add run 3.
Screenshots land in .artifacts/web/.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.services import System

from .conftest import screenshot
from .harness import EXPECTED, MARKUP, PROPOSAL, WebSystem, web_url
from .harness import run as run_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RUNS = range(1, 3)
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def system(live: WebSystem) -> WebSystem:
    live.make_runs(range(1, 4))
    live.send_events(RUNS)
    live.send_events(RUNS, event="run_corrections_complete")
    live.wait_values(RUNS, (*EXPECTED, "camera_peak"))
    return live


def cell(page: Any, run: int, key: str) -> Any:
    return page.locator(f'#grid .row[data-run="{run}"] > div[data-key="{key}"]')


def open_table(page: Any, system: WebSystem) -> None:
    page.goto(f"{system.url}#/p/{PROPOSAL}")
    page.wait_for_function("() => window.__runstream && window.__runstream.ready", timeout=WAIT_MS)
    page.wait_for_selector('#live[data-state="live"]', timeout=WAIT_MS)


def text_of(page: Any, run: int, key: str) -> str:
    return str(cell(page, run, key).text_content(timeout=WAIT_MS))


def http(system: WebSystem, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        system.url.rstrip("/") + path, data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_proposal_list_links_to_the_table(page: Any, system: WebSystem) -> None:
    page.goto(system.url)
    row = page.locator(f'.plist tr[data-proposal="{PROPOSAL}"]')
    row.wait_for(timeout=WAIT_MS)
    assert row.locator("td").nth(1).text_content() == "2"
    row.click()
    page.wait_for_function("() => window.__runstream.ready", timeout=WAIT_MS)
    assert page.url.endswith(f"#/p/{PROPOSAL}")


def test_table_shows_the_stored_values_and_thumbnails(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    values = system.values()
    for run in RUNS:
        assert text_of(page, run, "n_trains") == "400"
        assert text_of(page, run, "label") == f"p{PROPOSAL} r{run}"
        stored = values[(run, "energy_per_train")]["value_float"]
        assert text_of(page, run, "energy_per_train") == f"{stored:g} uJ"
        # the error cell shows the class and the message
        broken = cell(page, run, "broken")
        assert "err" in str(broken.get_attribute("class"))
        assert broken.locator(".cls").text_content() == "ZeroDivisionError"
        assert "division by zero" in str(broken.text_content())
        # Cell(bold=True) from the proc pass, Cell(background=...) for odd runs
        assert "bold" in str(cell(page, run, "camera_peak").get_attribute("class"))
        background = cell(page, run, "flag").evaluate("c => c.style.background")
        assert background == ("rgb(255, 217, 102)" if run % 2 else "")
        # a thumbnail (PNG from the run file) and a trendline (SVG) as images, loaded
        thumbnails = (("camera_image", "image/png"), ("rings", "image/png"),
                      ("column_profile", "image/svg+xml"))  # fmt: skip
        for key, kind in thumbnails:
            img = cell(page, run, key).locator("img")
            img.wait_for(timeout=WAIT_MS)
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                timeout=WAIT_MS,
            )  # fmt: skip
            src = str(img.get_attribute("src"))
            status, headers, _ = http(system, "GET", src)
            assert (status, headers["content-type"]) == (200, kind), src
        status_text = text_of(page, run, "__status")
        assert "done" in status_text
        assert "failed" not in status_text
    # "A/B" titles are grouped headers; units are shown in the header
    groups = page.locator("#grid .hrow.groups > div").all_text_contents()
    assert "Camera" in groups
    assert "XGM" in groups
    leaves = page.locator("#grid .hrow.leaves > div").all_text_contents()
    assert "Intensity[uJ]" in leaves
    assert "Image" in leaves
    assert "Trains" in leaves
    assert page.page_errors == []
    screenshot(page, "table")


def test_markup_values_are_shown_as_text(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    note = cell(page, 1, "note")
    assert note.text_content() == MARKUP
    assert note.locator("script, b").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert page.page_errors == []


def test_new_run_appears_and_fills_without_reload(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    page.evaluate("window.__sameDocument = true")
    assert cell(page, 3, "run").count() == 0
    system.send_events(range(3, 4))
    cell(page, 3, "run").wait_for(timeout=60_000)  # the row appears ...
    page.wait_for_function(  # ... and fills as the values arrive
        """() => {
            const row = document.querySelector('#grid .row[data-run="3"]');
            const trains = row && row.querySelector('div[data-key="n_trains"]');
            const image = row && row.querySelector('div[data-key="camera_image"] img');
            const label = row && row.querySelector('div[data-key="label"]');
            return trains && trains.textContent === "400" && image && label
                && label.textContent === "p9999 r3";
        }""",
        timeout=120_000,
    )
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert page.evaluate("window.__runstream.updates") > 0
    screenshot(page, "new-run-live")
    # the same table with large thumbnails, wide (the picture in docs/web.md)
    page.set_viewport_size({"width": 2200, "height": 400})
    page.check("#tall")
    page.wait_for_function(
        """() => document.querySelector('#grid .row[data-run="3"]').offsetHeight > 60"""
    )
    time.sleep(0.5)  # thumbnails drawn
    screenshot(page, "table-large-thumbnails")


def test_comment_lands_in_postgres_and_in_a_second_browser(
    browser: Any, page: Any, system: WebSystem
) -> None:
    open_table(page, system)
    other_context = browser.new_context(viewport={"width": 1400, "height": 700})
    other = other_context.new_page()
    try:
        open_table(other, system)
        cell(page, 1, "comment").dblclick()
        editor = cell(page, 1, "comment").locator("input.editor")
        editor.fill("sample changed: <i>Fe</i> foil")
        editor.press("Enter")
        deadline = time.monotonic() + 30
        stored = None
        while time.monotonic() < deadline:
            row = system.values().get((1, "comment"))
            if row is not None:
                stored = row["value_text"]
                break
            time.sleep(0.2)
        assert stored == "sample changed: <i>Fe</i> foil"
        other.wait_for_function(
            """() => {
                const c = document.querySelector('#grid .row[data-run="1"] > div[data-key="comment"]');
                return c && c.textContent === "sample changed: <i>Fe</i> foil";
            }""",
            timeout=WAIT_MS,
        )
        assert cell(other, 1, "comment").locator("i").count() == 0
        # the editing page got the store's answer: no longer pending
        page.wait_for_function(
            """() => !document.querySelector('#grid .row[data-run="1"] > div.pending')""",
            timeout=WAIT_MS,
        )
        screenshot(other, "comment-second-browser")
    finally:
        other_context.close()


def test_bad_value_for_a_typed_user_variable_is_refused(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    page.click("#addvar")
    dialog = page.locator("#addvar-dialog")
    dialog.locator('input[name="title"]').fill("Sample/Temperature")
    dialog.locator('select[name="type"]').select_option("number")
    dialog.locator("button.primary").click()
    cell(page, 1, "sample_temperature").wait_for(timeout=WAIT_MS)  # the new column, live
    assert "Sample" in page.locator("#grid .hrow.groups > div").all_text_contents()

    cell(page, 1, "sample_temperature").dblclick()
    editor = cell(page, 1, "sample_temperature").locator("input.editor")
    editor.fill("warm")
    editor.press("Enter")
    message = page.locator(".toast.error").filter(has_text="is not a valid number")
    message.wait_for(timeout=WAIT_MS)
    assert "'warm' is not a valid number" in str(message.text_content())
    page.wait_for_function(
        """() => document.querySelector('#grid .row[data-run="1"] > div[data-key="sample_temperature"]')
                 .classList.contains("rejected")"""
    )
    screenshot(page, "user-variable-refused")
    time.sleep(1.0)
    assert (1, "sample_temperature") not in system.values(), "a refused value reached the database"

    cell(page, 1, "sample_temperature").dblclick()
    editor = cell(page, 1, "sample_temperature").locator("input.editor")
    editor.fill("21.5")
    editor.press("Enter")
    page.wait_for_function(
        """() => {
            const c = document.querySelector('#grid .row[data-run="1"] > div[data-key="sample_temperature"]');
            return c && c.textContent === "21.5" && !c.classList.contains("pending");
        }""",
        timeout=WAIT_MS,
    )
    assert system.values()[(1, "sample_temperature")]["value_float"] == 21.5


def test_a_rejection_by_the_store_reaches_the_editing_browser(page: Any, system: WebSystem) -> None:
    """The store's command_rejected (on the real feed) is shown and the old value comes back.

    The web service checks values as the store does, so a value the store refuses
    does not get through it; the page's POST is answered here with the id of a
    command that the store then "rejects" on the updates topic.
    """
    from runstream_common.messages import CommandRejected

    open_table(page, system)
    command_id = str(uuid.uuid4())
    page.route(
        "**/api/proposals/*/runs/2/comment",
        lambda route: route.fulfill(status=202, json={"command": command_id}),
    )
    before = text_of(page, 2, "comment")
    cell(page, 2, "comment").dblclick()
    editor = cell(page, 2, "comment").locator("input.editor")
    editor.fill("never stored")
    editor.press("Enter")
    page.wait_for_function(
        """() => document.querySelector('#grid .row[data-run="2"] > div.pending')"""
    )
    system.publish(
        system.kafka.topics.updates,
        CommandRejected(
            proposal=PROPOSAL, command_event_id=command_id, command_type="set_comment",
            reason="the proposal is closed",
        ),
    )  # fmt: skip
    page.locator(".toast.error").filter(has_text="the proposal is closed").wait_for(timeout=WAIT_MS)
    page.wait_for_function(  # drawn at the next frame: marked, and the old text back
        """before => {
            const c = document.querySelector('#grid .row[data-run="2"] > div[data-key="comment"]');
            return c.classList.contains("rejected") && c.textContent === before;
        }""",
        arg=before,
        timeout=WAIT_MS,
    )


def test_plot_view_renders_image_line_and_trend(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    cell(page, 2, "rings").click()
    page.wait_for_selector('#detail .plot-area[data-kind="image"] .main-svg', timeout=WAIT_MS)
    assert page.locator("#detail .history tbody tr").count() >= 1
    assert page.locator("#detail h2").text_content() == "Detector/Rings · run 2"
    screenshot(page, "plot-image")
    # a 1-D xarray: a line over its energy coordinate
    cell(page, 2, "spectrum").click()
    page.wait_for_selector('#detail .plot-area[data-kind="line"] .main-svg', timeout=WAIT_MS)
    x = page.evaluate("document.querySelector('#detail .plot-area').data[0].x")
    assert x[0] == 7000.0
    assert x[-1] == 7100.0
    screenshot(page, "plot-line")
    cell(page, 1, "column_profile").click()
    page.wait_for_selector('#detail .plot-area[data-kind="line"] .main-svg', timeout=WAIT_MS)
    assert page.locator("#detail h2").text_content() == "Camera/Column profile · run 1"
    # a scalar: its trend over every run with a value
    cell(page, 2, "n_trains").click()
    page.wait_for_selector('#detail .plot-area[data-kind="trend"] .main-svg', timeout=WAIT_MS)
    points = page.evaluate(
        "document.querySelector('#detail .plot-area[data-kind=\"trend\"]').data[0].x.length"
    )
    assert points >= 2
    screenshot(page, "plot-trend")
    cell(page, 1, "broken").click()
    meta = page.locator("#detail .meta")
    meta.get_by_text("ZeroDivisionError").wait_for(timeout=WAIT_MS)
    assert page.page_errors == []


def test_sort_filter_columns_and_csv(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    page.fill("#filter", f"p{PROPOSAL} r2")
    page.wait_for_function(
        "() => document.querySelectorAll('#grid .row:not([style*=\"display: none\"])').length === 1"
    )
    assert page.locator("#grid .row[data-run]").first.get_attribute("data-run") == "2"
    page.fill("#filter", "")
    page.wait_for_function(
        "() => window.__runstream.page.grid.rows.length === window.__runstream.page.model.rows.size"
    )
    runs = page.evaluate("window.__runstream.page.grid.rows.map(r => r.run)")
    assert runs == sorted(runs, reverse=True), "newest run first by default"
    assert len(runs) >= 2
    page.locator('#grid .hrow.leaves > div[data-key="run"]').click()  # ascending
    page.wait_for_function(
        "() => document.querySelector('#grid .hrow.leaves > div[data-key=\"run\"]')"
        ".dataset.sort === 'asc'"
    )
    runs = page.evaluate("window.__runstream.page.grid.rows.map(r => r.run)")
    assert runs == sorted(runs)
    page.click("#columns summary")
    page.locator('#columns input[data-key="label"]').uncheck()
    page.locator('#grid .hrow.leaves > div[data-key="label"]').wait_for(state="detached")
    shown = '#grid .row:not([style*="display: none"])'
    assert page.locator(f'{shown} > div[data-key="label"]').count() == 0
    assert page.locator(f'{shown} > div[data-key="n_trains"]').count() == len(runs)
    with page.expect_download() as download:
        page.click("#export")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    header, *lines = text.strip().splitlines()
    assert header.startswith("Run,Status,Timestamp,Comment")
    assert "Run label" not in header
    assert "Camera/Image" in header
    assert len(lines) == len(runs)
    page.locator('#columns input[data-key="label"]').check()


def test_reconnecting_browser_catches_up(page: Any, system: WebSystem) -> None:
    """Updates published while the event stream is down arrive when it reconnects."""
    open_table(page, system)
    cursor = page.evaluate("window.__runstream.page.live.cursor")
    page.evaluate("window.__runstream.page.live.stop()")
    from runstream_common.messages import SetComment

    system.command(SetComment(proposal=PROPOSAL, run=2, text="written while offline"))
    deadline = time.monotonic() + 30
    while (2, "comment") not in system.values() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # the service has read the store's answer
    assert text_of(page, 2, "comment") != "written while offline"
    page.evaluate("c => window.__runstream.page.live.start(c)", cursor)
    page.wait_for_function(
        """() => document.querySelector('#grid .row[data-run="2"] > div[data-key="comment"]')
                  .textContent === "written while offline" """,
        timeout=WAIT_MS,
    )
    # a cursor from another server instance (or too old) makes the page reload the table
    loads = page.evaluate("window.__runstream.loads")
    page.evaluate("window.__runstream.page.live.start('feedbeef0000:1')")
    page.wait_for_function(f"() => window.__runstream.loads > {loads}", timeout=WAIT_MS)
    page.wait_for_selector('#live[data-state="live"]', timeout=WAIT_MS)
    assert text_of(page, 2, "comment") == "written while offline"


def test_reprocess_selected_runs_with_progress(page: Any, system: WebSystem) -> None:
    open_table(page, system)
    cell(page, 1, "__sel").locator("input").check()
    page.click("#reprocess")
    dialog = page.locator("#reprocess-dialog")
    dialog.locator('input[name="vars"][value="chosen"]').check()
    dialog.locator('input[name="var"][value="n_trains"]').check()
    dialog.locator("button.primary").click()
    page.wait_for_function(
        "() => document.querySelector('#progress').dataset.done === '1'"
        " && document.querySelector('#progress').dataset.total === '1'",
        timeout=120_000,
    )
    assert re.match(
        r"reprocessed 1/1 runs", str(page.locator("#progress .progress-text").text_content())
    )
    # the progress counts the pass's processing state; its values reach PostgreSQL through
    # the store's own consumer of the results topic, a moment earlier or later
    deadline = time.monotonic() + 30
    while True:
        history = system.query(
            "SELECT count(*) AS n FROM run_value_history WHERE proposal = $1 AND run = 1 "
            "AND name = 'n_trains'",
            PROPOSAL,
        )
        if history[0]["n"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert history[0]["n"] == 2, "n_trains of run 1 was evaluated again"


def test_http_api_refuses_unsafe_requests(system: WebSystem) -> None:
    base = f"/api/proposals/{PROPOSAL}/runs/1"
    # no X-Requested-With: a page of another site could have sent it
    status, _, body = http(system, "POST", f"{base}/comment", {"text": "x"},
                           {"Content-Type": "application/json"})  # fmt: skip
    assert status == 403
    assert b"X-Requested-With" in body
    ours = {"Content-Type": "application/json", "X-Requested-With": "runstream"}
    status, _, body = http(system, "POST", f"{base}/values/n_trains", {"value": "3"}, ours)
    assert status == 400
    assert b"computed by the context file" in body
    status, _, body = http(system, "POST", f"{base}/values/nope", {"value": "3"}, ours)
    assert status == 404
    status, _, body = http(system, "POST", f"{base}/comment", {"text": 5}, ours)
    assert status == 400
    assert b"must be text" in body
    status, _, _ = http(system, "GET", "/api/proposals/4/table")
    assert status == 404
    status, headers, _ = http(system, "GET", "/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, _ = http(system, "GET", "/vendor/plotly.min.js")
    assert status == 200
    assert int(headers["content-length"]) > 1_000_000


def test_with_a_write_token_only_a_signed_in_browser_edits(
    page: Any, system: WebSystem, tmp_path: Path
) -> None:
    """A second web service with write_access=token: read-only until the user signs in."""
    # Run 3 is the new-run test's; stored before this page loads, whatever ran first.
    system.send_events(range(3, 4))
    system.wait_values(range(3, 4), ("n_trains",))
    env = {**system.system.env, "RUNSTREAM_WEB_WRITE_ACCESS": "token",
           "RUNSTREAM_WEB_WRITE_TOKEN": "s3cret-token"}  # fmt: skip
    guarded = System(env=env, log_dir=tmp_path)
    run_async(guarded.start("web"))
    try:
        url = web_url(guarded.procs["web"].log)
        page.goto(f"{url}#/p/{PROPOSAL}")
        page.wait_for_function("() => window.__runstream && window.__runstream.ready")
        page.wait_for_function("() => document.getElementById('who').textContent === 'read-only'")
        page.wait_for_selector('#live[data-state="live"]', timeout=WAIT_MS)
        assert not page.locator("#reprocess").is_visible()
        try:  # run 3 comes from test_new_run_appears_and_fills_without_reload
            cell(page, 3, "run").wait_for(timeout=WAIT_MS)
        except Exception as exc:
            rows = page.evaluate(
                "() => [...document.querySelectorAll('#grid .row')].map(r => r.dataset.run)"
            )
            raise AssertionError(f"no row for run 3 in the guarded table; rows: {rows}") from exc
        cell(page, 3, "comment").dblclick()
        assert cell(page, 3, "comment").locator("input.editor").count() == 0
        page.once("dialog", lambda dialog: dialog.accept("wrong"))
        page.click("#signin")
        page.locator(".toast.error").filter(has_text="does not allow writes").wait_for()
        page.once("dialog", lambda dialog: dialog.accept("s3cret-token"))
        page.click("#signin")
        page.wait_for_function("() => document.body.classList.contains('can-write')")
        assert page.locator("#reprocess").is_visible()
        cell(page, 3, "comment").dblclick()
        editor = cell(page, 3, "comment").locator("input.editor")
        editor.fill("signed in")
        editor.press("Enter")
        deadline = time.monotonic() + 30
        while (3, "comment") not in system.values() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert system.values()[(3, "comment")]["value_text"] == "signed in"
        log = guarded.procs["web"].log.read_text()
        assert "set_comment" in log
        assert "by token" in log
    finally:
        guarded.stop()
