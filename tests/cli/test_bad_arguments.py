"""Every bad argument of every ``runstream`` command: a clear message, a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from runstream_common.runranges import parse_runs

from runstream.cli import main

pytestmark = pytest.mark.unit

BIG = "99999999999"

# (arguments, expected exit status, a piece of the message)
CASES: list[tuple[list[str], int, str]] = [
    (["reprocess", "4242", "abc"], 2, "'abc' is not a run number or a range"),
    (["reprocess", "4242", "10-5"], 2, "goes backwards (did you mean 5-10?)"),
    (["reprocess", "4242", "1,,3"], 2, "empty run number in '1,,3'"),
    (["reprocess", "4242", "all", "3"], 2, "'all' stands alone"),
    (["reprocess", "4242", "1,all"], 2, "'all' stands alone"),
    (["reprocess", "4242", BIG], 2, "beyond the largest run number (2147483647)"),
    (["reprocess", "4242", "0-200000"], 2, "one request takes at most 100000"),
    (["reprocess", BIG, "1"], 2, "is not in the range 0<=x<=2147483647"),
    (["reprocess", "-1", "1"], 2, "No such option"),
    (["reprocess", "4242", "1", "--timeout", "-5"], 2, "is not in the range x>="),
    (["reprocess", "4242"], 2, "Missing argument"),
    (["comment", BIG, "1", "hi"], 2, "is not in the range 0<=x<=2147483647"),
    (["comment", "1", BIG, "hi"], 2, "is not in the range 0<=x<=2147483647"),
    (["comment", "1", "x", "hi"], 2, "is not a valid int"),
    (["comment", "1", "1", "hi", "--wait", "-1"], 2, "is not in the range x>="),
    (["table", BIG], 2, "is not in the range 0<=x<=2147483647"),
    (["table", "1", "--dsn", "notadsn"], 2, "bad PostgreSQL DSN"),
    (["table", "1", "--last", "0"], 2, "is not in the range x>="),
    (["db", "status", "--dsn", "notadsn"], 2, "bad PostgreSQL DSN"),
    (["config", BIG], 2, "is not in the range 0<=x<=2147483647"),
    (["cancel", BIG, "1"], 2, "is not in the range 0<=x<=2147483647"),
    (["cancel", "1", "-4"], 2, "No such option"),
    (
        ["proposal", "add", BIG, "--context-dir", "/tmp/x"],
        2,
        "is not in the range 0<=x<=2147483647",
    ),
    (["proposal", "remove", "2147483648"], 2, "is not in the range 0<=x<=2147483647"),
    (["proposal", "runs", "x"], 2, "is not a valid int"),
    (["proposal", "add", "1", "--context-dir", "/dev/null/x"], 2, "cannot write to /dev/null/x"),
    (["context", "check", "/nonexistent/context.py"], 1, "cannot read /nonexistent/context.py"),
    (
        ["context", "eval", "c.py", "--proposal", BIG, "--run", "1", "--proposal-dir", "/tmp"],
        2,
        "is not in the range 0<=x<=2147483647",
    ),
    (["health", "--heartbeat-file", "/tmp/none", "--max-age", "0"], 2, "is not in the range x>="),
    (["health", "--heartbeat-file", "/nonexistent/hb"], 1, "no heartbeat"),
    (["serve", "nosuch"], 2, "unknown service 'nosuch'"),
    (["nosuchcommand"], 2, "No such command"),
]


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]):
    monkeypatch.setattr(sys, "argv", ["runstream", *args])
    monkeypatch.setenv("COLUMNS", "200")  # one line per message, whatever the terminal
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out + captured.err


@pytest.mark.parametrize(("args", "code", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_arguments_give_a_message_and_an_exit_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    status, output = _run(monkeypatch, capsys, args)
    assert "Traceback" not in output
    assert status == code, output
    assert message in " ".join(output.split()), output


def test_bad_settings_in_the_environment_are_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNSTREAM_KAFKA_TOPIC_PARTITIONS", "many")
    status, output = _run(monkeypatch, capsys, ["proposal", "list"])
    assert "Traceback" not in output
    assert status == 2
    assert "invalid value" in output
    assert "topic_partitions" in output


def test_an_unreachable_database_is_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, output = _run(
        monkeypatch, capsys, ["db", "status", "--dsn", "postgresql://u@127.0.0.1:1/db"]
    )
    assert "Traceback" not in output
    assert status != 0
    assert "127.0.0.1" in output


@pytest.mark.parametrize(
    ("tokens", "runs"),
    [
        (["10-20"], list(range(10, 21))),
        (["1,3,5-7"], [1, 3, 5, 6, 7]),
        (["7", "3", "3", "1-2"], [1, 2, 3, 7]),
        (["5 - 6"], [5, 6]),
        (["ALL"], None),
        (["2147483647"], [2147483647]),
    ],
)
def test_run_ranges_and_lists(tokens: list[str], runs: list[int] | None) -> None:
    assert parse_runs(tokens) == runs
