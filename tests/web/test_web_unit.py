"""The web service's pure parts: the fan-out hub, edit checks, write access, run-file reads."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import orjson
import pytest
from pydantic import SecretStr
from runstream_common.messages import (
    ProcessingStateChanged,
    ProcessingStateSet,
    ReprocessRequested,
    Trigger,
    ValuesUpdated,
    ValueView,
)
from runstream_web import edits
from runstream_web.adapters import run_files
from runstream_web.adapters.commands import reprocess_request_id
from runstream_web.adapters.updates import browser_payload, proposal_of
from runstream_web.auth import authorize
from runstream_web.hub import Closed, Gap, Hub
from runstream_web.settings import Settings

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------ hub


async def test_hub_delivers_to_the_subscribers_of_a_proposal() -> None:
    hub = Hub(capacity=100, queue_limit=10, epoch="e1")
    mine, other = hub.subscribe(1, None), hub.subscribe(2, None)
    hub.publish(1, b'{"a":1}')
    hub.publish(2, b'{"b":2}')
    hub.publish(None, b'{"all":1}')
    assert [e.data for e in await mine.next_batch(1)] == [b'{"a":1}', b'{"all":1}']
    assert [e.seq for e in await other.next_batch(1)] == [2, 3]
    assert await mine.next_batch(0.01) == []  # nothing more: a keep-alive pause
    assert hub.cursor() == "e1:3"


async def test_hub_replays_what_a_reconnecting_browser_missed() -> None:
    hub = Hub(capacity=100, queue_limit=50, epoch="e1")
    hub.publish(7, b"1")
    cursor = hub.cursor()
    for i in range(2, 6):
        hub.publish(7 if i % 2 else 8, str(i).encode())
    sub = hub.subscribe(7, cursor)
    assert [e.data for e in await sub.next_batch(1)] == [b"3", b"5"]
    # from the latest cursor: nothing to replay
    assert await hub.subscribe(7, hub.cursor()).next_batch(0.01) == []


@pytest.mark.parametrize(
    ("cursor", "why"),
    [("other:1", "restarted"), ("e1:99", "ahead"), ("e1:1", "too far behind"), ("junk", "cursor")],
)
def test_hub_refuses_cursors_it_cannot_continue(cursor: str, why: str) -> None:
    hub = Hub(capacity=3, queue_limit=50, epoch="e1")
    for i in range(10):
        hub.publish(1, str(i).encode())
    with pytest.raises(Gap, match=why):
        hub.subscribe(1, cursor)
    hub.subscribe(1, "e1:7")  # the ring holds 8, 9, 10: 7 is the oldest cursor it continues


async def test_a_browser_that_falls_behind_is_told_to_reload_and_close_ends_streams() -> None:
    hub = Hub(capacity=1000, queue_limit=5, epoch="e1")
    slow, fine = hub.subscribe(1, None), hub.subscribe(1, None)
    for i in range(6):
        hub.publish(1, str(i).encode())
        if i == 3:
            assert len(await fine.next_batch(1)) == 4
    with pytest.raises(Gap, match="behind"):
        await slow.next_batch(1)
    assert len(await fine.next_batch(1)) == 2
    waiting = asyncio.create_task(fine.next_batch(5))
    await asyncio.sleep(0.01)
    hub.close()
    with pytest.raises(Closed):
        await waiting
    hub.unsubscribe(slow)
    assert hub.subscribers == 0


def test_updates_are_routed_by_proposal_and_sent_as_one_line() -> None:
    values = ValuesUpdated(proposal=5, run=1, values={"x": ValueView(summary=1.5)})
    state = ProcessingStateSet(
        state=ProcessingStateChanged(
            processing_id="p", request_id="r", proposal=6, run=2, trigger=Trigger.RAW,
            status="running",
        )
    )  # fmt: skip
    assert proposal_of(values) == 5
    assert proposal_of(state) == 6
    pretty = json.dumps({"type": "values_updated", "v": [1, 2]}, indent=2).encode()
    assert b"\n" not in browser_payload(pretty)
    assert orjson.loads(browser_payload(pretty)) == orjson.loads(pretty)
    compact = values.model_dump_json().encode()
    assert browser_payload(compact) is compact


# ------------------------------------------------------------------ edits


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("integer", "1.5", "not a valid integer"),
        ("number", "warm", "not a valid number"),
        ("boolean", "maybe", "not a valid boolean"),
    ],
)
def test_bad_user_values_are_refused_with_the_stores_message(
    kind: str, text: str, message: str
) -> None:
    with pytest.raises(edits.EditRejected, match=message):
        edits.user_value_command(1, 2, "v", kind, {"value": text}, 100)


@pytest.mark.parametrize(
    ("kind", "text"),
    [("integer", " 42 "), ("number", "1e-3"), ("number", "nan"), ("boolean", "Yes"),
     ("string", "<b>x</b>"), ("number", ""), ("integer", None)],
)  # fmt: skip
def test_good_user_values_become_commands_with_the_text_as_typed(
    kind: str, text: str | None
) -> None:
    command = edits.user_value_command(1, 2, "v", kind, {"value": text}, 100)
    assert (command.proposal, command.run, command.name, command.value) == (1, 2, "v", text)
    assert command.correlation_id == str(command.event_id)


def test_computed_variables_long_text_and_non_text_are_refused() -> None:
    with pytest.raises(edits.EditRejected, match="computed by the context file"):
        edits.user_value_command(1, 2, "xgm", None, {"value": "3"}, 100)
    with pytest.raises(edits.EditRejected, match="longer than 10"):
        edits.comment_command(1, 2, {"text": "x" * 11}, 10)
    with pytest.raises(edits.EditRejected, match="must be text"):
        edits.comment_command(1, 2, {"text": 5}, 10)
    with pytest.raises(edits.EditRejected, match="missing"):
        edits.comment_command(1, 2, {}, 10)
    assert edits.comment_command(1, 2, {"text": "<script>"}, 10).text == "<script>"


def test_user_variable_definitions_are_checked() -> None:
    command = edits.define_variable_command(3, {"title": "Sample/Temp K", "type": "number"}, set())
    assert (command.name, command.title, command.variable_type) == (
        "sample_temp_k", "Sample/Temp K", "number"
    )  # fmt: skip
    for body, message in [
        ({"title": " ", "type": "number"}, "needs a title"),
        ({"title": "T", "type": "float"}, "type must be one of"),
        ({"title": "Comment", "type": "string"}, "reserved"),
        ({"title": "x", "name": "1x", "type": "string"}, "not a valid variable name"),
        ({"title": "Sample/Temp K", "type": "number"}, "already has"),
    ]:
        with pytest.raises(edits.EditRejected, match=message):
            edits.define_variable_command(3, body, {"sample_temp_k"})


def test_reprocess_requests_name_known_runs_and_computed_variables() -> None:
    chosen = edits.reprocess_command(4, {"runs": [3, 1, 3], "variables": ["a"]}, {1, 2, 3}, {"a"})
    assert chosen.runs == (1, 3)
    assert chosen.request.runs == (1, 3)
    assert chosen.request.selection.names == ("a",)
    assert chosen.request.trigger is Trigger.ALL
    every = edits.reprocess_command(4, {"runs": "all", "data": "proc"}, {1, 2}, set())
    assert every.request.runs == "all"
    assert every.runs == (1, 2)
    assert every.request.trigger is Trigger.PROC
    cases: list[tuple[dict[str, Any], str]] = [
        ({"runs": [9]}, "has no run 9"),
        ({"runs": [True]}, "run numbers"),
        ({"runs": []}, "choose runs"),
        ({"runs": [1], "variables": ["b"]}, "not a computed variable"),
        ({"runs": [1], "data": "x"}, "raw, proc or all"),
    ]
    for body, message in cases:
        with pytest.raises(edits.EditRejected, match=message):
            edits.reprocess_command(4, body, {1, 2}, {"a"})


def test_reprocess_request_ids_follow_ingests_documented_rule() -> None:
    request = ReprocessRequested(proposal=7, runs=(3,), trigger=Trigger.RAW)
    expected = str(uuid.uuid5(request.event_id, "7/3/raw"))
    assert reprocess_request_id(request, 3) == expected


# ------------------------------------------------------------------ write access


def test_write_access_modes() -> None:
    anyone = Settings(write_access="anyone")
    assert authorize(anyone, {}, "10.0.0.1").can_write
    nobody = Settings(write_access="nobody")
    assert not authorize(nobody, {}, "127.0.0.1").can_write
    token = Settings(write_access="token", write_token=SecretStr("s3cret"))
    assert authorize(token, {"authorization": "Bearer s3cret"}, "10.0.0.1").can_write
    assert not authorize(token, {"authorization": "Bearer nope"}, "10.0.0.1").can_write
    assert not authorize(token, {}, "10.0.0.1").can_write
    unset = Settings(write_access="token")
    assert not authorize(unset, {"authorization": "Bearer "}, "10.0.0.1").can_write
    proxy = Settings(write_access="proxy", trusted_proxies=("10.1.1.1",))
    caller = authorize(proxy, {"x-forwarded-user": "alice"}, "10.1.1.1")
    assert caller.can_write
    assert caller.user == "alice"
    # the header is believed from the proxy only
    assert not authorize(proxy, {"x-forwarded-user": "alice"}, "10.9.9.9").can_write
    assert not authorize(proxy, {}, "10.1.1.1").can_write


# ------------------------------------------------------------------ run files


def _run_file(tmp_path: Path) -> Path:
    path: Path = run_files.run_file(tmp_path, 1, 2)
    path.parent.mkdir(parents=True)
    png = np.frombuffer(b"\x89PNG\r\n\x1a\nfake", dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["line/data"] = np.linspace(0, 1, 5000)
        f["image/data"] = np.arange(3000 * 20, dtype=np.float32).reshape(3000, 20)
        f["cube/data"] = np.zeros((4, 5, 6))
        f["label/data"] = b"hello"
        f["scalar/data"] = np.float64(np.nan)
        fig = f.create_group("fig")
        fig["data"] = np.frombuffer(b'{"data": [], "layout": {}}', dtype=np.uint8)
        fig.attrs["_damnit_objtype"] = "PlotlyFigure"
        f[".reduced/image"] = png
        f[".reduced/line"] = np.vstack([np.arange(1000.0), np.sin(np.arange(1000.0))])
        f[".preview/dataset_only"] = np.ones(3)
    return path


def test_plot_data_of_stored_values(tmp_path: Path) -> None:
    path = _run_file(tmp_path)
    line = run_files.plot_data(path, "line", 1000)
    assert line["kind"] == "line"
    assert line["step"] == 5
    assert len(line["y"]) == 1000
    image = run_files.plot_data(path, "image", 10**6)
    assert image["kind"] == "image"
    assert image["step"] == 3
    assert image["shape"] == [3000, 20]
    assert np.asarray(image["z"]).shape == (1000, 7)
    cube = run_files.plot_data(path, "cube", 10**6)
    assert cube["kind"] == "image"
    assert "first 2-D slice" in cube["note"]
    assert run_files.plot_data(path, "label", 10)["text"] == "hello"
    assert run_files.plot_data(path, "scalar", 10) == {
        "kind": "scalar", "value": None, "units": None, "source": "data"
    }  # fmt: skip
    assert run_files.plot_data(path, "fig", 10)["kind"] == "plotly"
    assert run_files.plot_data(path, "dataset_only", 10)["source"] == "preview"
    encoded = orjson.loads(orjson.dumps(image, option=orjson.OPT_SERIALIZE_NUMPY))
    assert encoded["z"][0][:2] == [0.0, 3.0]
    with pytest.raises(run_files.NotStored):
        run_files.plot_data(path, "missing", 10)
    with pytest.raises(run_files.NotStored):
        run_files.plot_data(tmp_path / "none.h5", "line", 10)


def test_summaries_for_the_table(tmp_path: Path) -> None:
    path = _run_file(tmp_path)
    kind, data = run_files.summary_bytes(path, "image")
    assert kind == "png"
    assert data.startswith(b"\x89PNG")
    kind, data = run_files.summary_bytes(path, "line")
    svg = run_files.sparkline_svg(data)
    assert kind == "array"
    assert svg.startswith(b"<svg")
    assert b"polyline" in svg
    assert svg.count(b",") <= 240  # decimated to the width
    assert b'points=""' in run_files.sparkline_svg(np.array([np.nan, np.nan]))


def test_xarray_values_plot_with_their_coordinates(tmp_path: Path) -> None:
    import xarray as xr

    path = tmp_path / "x.h5"
    da = xr.DataArray(np.arange(4.0), dims=["energy"], coords={"energy": [10.0, 20, 30, 40]},
                      attrs={"units": "eV"})  # fmt: skip
    da.attrs["_damnit_objtype"] = "dataarray"
    da.to_netcdf(path, group="spec", engine="h5netcdf", mode="w")
    with h5py.File(path, "a") as f:
        f["spec"].attrs["_damnit_objtype"] = "dataarray"
    plot = run_files.plot_data(path, "spec", 100)
    assert plot["kind"] == "line"
    assert plot["dims"] == ["energy"]
    assert plot["units"] == "eV"
    assert list(plot["x"]) == [10.0, 20.0, 30.0, 40.0]
