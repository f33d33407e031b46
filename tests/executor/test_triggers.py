"""Raw/proc triggers, selection, reuse and cluster hand-off (damnit.md §7 "Filtering, triggers and jobs")."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import h5py
import pytest
from pydantic import BaseModel
from runstream_common.messages import (
    JobRequested,
    ProcessingStateChanged,
    ProcessingStatus,
    ResultsReady,
    RunRequested,
    Selection,
    Trigger,
    VariablesDefined,
)
from runstream_common.topics import Topics, run_key
from runstream_executor.engine import load_context, select
from runstream_executor.handlers import RunProcessor
from runstream_executor.modes import JobPass
from runstream_executor.pool import WorkerPool
from runstream_executor.pool_set import PoolSet
from runstream_executor.settings import Settings

from .helpers import run_context, write_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

FILTER_CONTEXT = """
from damnit_ctx import Variable

@Variable(title="Scalar1")
def scalar1(run):
    return 42

@Variable(title="Scalar2")
def scalar2(run, value: "var#scalar1"):
    return value * 2

@Variable(title="String")
def string(run):
    return "foo"

@Variable(title="Proc", data="proc")
def proc_var(run, x: "var#scalar1"):
    return ",".join(sorted({f.filename.split("/")[-3] for f in run.files}))

@Variable(title="Raw files")
def raw_files(run):
    return ",".join(sorted({f.filename.split("/")[-3] for f in run.files}))

@Variable(title="Big", cluster=True)
def big(run, x: "var#scalar2"):
    return x + 1
"""


async def test_selection_rules(pool: WorkerPool, tmp_path: Path) -> None:
    ctx = await load_context(pool, write_context(tmp_path, FILTER_CONTEXT))
    assert select(ctx, "raw", match=["string"], cluster=False) == ["string"]
    assert select(ctx, "raw", match=["scalar2"]) == ["scalar1", "scalar2"]
    assert select(ctx, "raw", names=["proc_var"]) == []
    assert select(ctx, "proc") == ["scalar1", "proc_var"]
    assert select(ctx, "all", cluster=True) == ["scalar1", "scalar2", "big"]
    assert "big" not in select(ctx, "all", cluster=False)


async def test_raw_reads_raw_only_and_proc_reads_both(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(pool, FILTER_CONTEXT, tmp_path / "ctx", mock_proposal, trigger="all")
    assert ev.summary("raw_files") == "raw"
    # proc variables see raw and proc combined, proc winning where sources overlap
    assert ev.summary("proc_var") == "proc"


async def test_missing_or_partial_proc_skips_proc_variables(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    for run in (2, 3):  # r0002: a half-written proc file; r0003: no proc folder
        ev = await run_context(
            pool, FILTER_CONTEXT, tmp_path / f"ctx{run}", mock_proposal, run=run, trigger="all"
        )
        message, cls = ev.error("proc_var")
        assert cls == "Skip"
        assert message is not None
        assert message.startswith(f"proc data not available for run {run}")
        assert ev.summary("scalar2") == 84
        assert ev.summary("raw_files") == "raw"


class Recorder:
    """The Publisher port, in memory."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, BaseModel, bytes]] = []
        self.at: dict[int, float] = {}  # id(message) -> when it was published (monotonic)

    async def publish(self, topic: str, message: BaseModel, key: bytes) -> None:
        self.sent.append((topic, message, key))
        self.at[id(message)] = time.monotonic()

    def of(self, cls: type) -> list:  # type: ignore[type-arg]
        return [m for _, m, _ in self.sent if isinstance(m, cls)]


class FixedPools:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    async def get(self, python: str | None = None) -> WorkerPool:
        return self.pool

    async def close(self) -> None:
        return None


COUNTING_CONTEXT = """
from damnit_ctx import Variable
from pathlib import Path
import numpy as np

def _count(name):
    p = Path(f"calls-{name}.txt")   # cwd is the context folder
    p.write_text(p.read_text() + "x" if p.exists() else "x")

@Variable(title="Base")
def base(run):
    _count("base")
    return np.arange(10.0)

@Variable(title="Calibrated", data="proc")
def calibrated(run, b: "var#base"):
    _count("calibrated")
    return float(b.sum()) + len(run.files)

@Variable(title="Heavy", cluster=True)
def heavy(run, b: "var#base"):
    _count("heavy")
    return float(b.max())

@Variable(title="Fails")
def fails(run):
    raise KeyError("missing key")
"""


def request(
    tmp: Path, proposal_dir: Path, trigger: str, rid: str = "req-1", **kw: object
) -> RunRequested:
    return RunRequested(
        request_id=rid,
        proposal=1234,
        run=1,
        trigger=Trigger(trigger),
        context_dir=str(tmp),
        proposal_dir=str(proposal_dir),
        **kw,
    )


async def test_processing_pass_messages_reuse_and_cluster_handoff(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, COUNTING_CONTEXT)
    topics = Topics("t")
    rec = Recorder()
    settings = Settings(progress_after_s=0)  # every variable's state, however short the pass
    processor = RunProcessor(settings, FixedPools(pool), rec, topics)  # type: ignore[arg-type]

    report = await processor.process(request(ctx_dir, mock_proposal, "raw"))
    assert report.status is ProcessingStatus.FINISHED
    (defined,) = rec.of(VariablesDefined)
    assert [v.name for v in defined.variables] == ["base", "fails", "calibrated", "heavy"]
    (job,) = rec.of(JobRequested)
    assert job.job_request_id == "req-1:cluster"
    assert job.selection == Selection(names=("heavy",))
    (results,) = rec.of(ResultsReady)
    assert {r.name for r in results.results} == {"base", "fails"}
    by_name = {r.name: r for r in results.results}
    assert by_name["base"].summary_type == "trendline"
    assert by_name["base"].in_fragment
    assert by_name["fails"].error_cls == "KeyError"
    assert results.fragment is not None
    assert Path(results.fragment).exists()  # noqa: ASYNC240
    assert Path(results.fragment).parent == ctx_dir / "extracted_data" / "fragments"
    with h5py.File(results.fragment, "r") as f:
        assert "base" in f
        assert ".reduced" in f
        assert "fails" not in f
    source = (ctx_dir / "context.py").read_bytes()
    import hashlib

    assert results.context_hash == hashlib.sha256(source).hexdigest()
    assert results.revision == (ctx_dir / "context.py").stat().st_mtime_ns
    assert all(key == run_key(1234, 1) for _, _, key in rec.sent)
    states = rec.of(ProcessingStateChanged)
    assert [s.status for s in states][:2] == [ProcessingStatus.QUEUED, ProcessingStatus.RUNNING]
    assert states[-1].status is ProcessingStatus.FINISHED
    assert states[-1].counts == {"ok": 1, "failed": 1, "skipped": 0}
    done = {s.variable: s for s in states if s.variable}
    assert done["base"].status is ProcessingStatus.VARIABLE_DONE
    assert done["base"].duration_s is not None
    assert done["fails"].status is ProcessingStatus.VARIABLE_FAILED
    assert (ctx_dir / "calls-base.txt").read_text() == "x"
    log = (ctx_dir / "process_logs" / "r1-p1234.out").read_text()
    assert "Computed base in" in log
    assert "Could not get data for fails" in log
    assert "KeyError: 'missing key'" in log

    # The same request again: same result id (the store recognises the duplicate).
    await processor.process(request(ctx_dir, mock_proposal, "raw"))
    assert rec.of(ResultsReady)[1].result_id == results.result_id
    assert len(rec.of(VariablesDefined)) == 1  # announced once per revision

    # By default a pass shorter than progress_after_s publishes only how it ended:
    # finished, and the durations and errors in results_ready.
    quiet = Recorder()
    short = RunProcessor(Settings(), FixedPools(pool), quiet, topics)  # type: ignore[arg-type]
    await short.process(request(ctx_dir, mock_proposal, "raw"))
    assert [s.status for s in quiet.of(ProcessingStateChanged)] == [ProcessingStatus.FINISHED]
    (quiet_results,) = quiet.of(ResultsReady)
    assert all(r.duration_s is not None for r in quiet_results.results)
    assert {r.name: r.error_cls for r in quiet_results.results}["fails"] == "KeyError"

    # A proc trigger reuses the raw result instead of recomputing it.
    calls_before = (ctx_dir / "calls-base.txt").read_text()
    await processor.process(request(ctx_dir, mock_proposal, "proc", rid="req-2"))
    proc_results = rec.of(ResultsReady)[-1]
    assert [r.name for r in proc_results.results] == ["calibrated"]
    assert proc_results.results[0].summary == 45.0 + 1  # reused base + one proc file
    assert (ctx_dir / "calls-base.txt").read_text() == calls_before

    # The cluster job evaluates exactly its selection, reusing the non-cluster dependency.
    await processor.process(
        request(ctx_dir, mock_proposal, "raw", rid="req-1"),
        JobPass(job_request_id="req-1:cluster", names=("heavy",)),
    )
    job_results = rec.of(ResultsReady)[-1]
    assert [(r.name, r.summary) for r in job_results.results] == [("heavy", 9.0)]
    assert (ctx_dir / "calls-base.txt").read_text() == calls_before
    assert len(rec.of(JobRequested)) == 2  # the two raw passes; not the proc pass nor the job


SLOW_CONTEXT = """
import itertools
import time
from damnit_ctx import Variable

@Variable(title="Quick")
def quick(run):
    return 1

@Variable(title="Slow")
def slow(run, q: "var#quick"):
    time.sleep(1.0)
    return q + 1
""" + "".join(
    f"""
@Variable(title="After {i}")
def after{i}(run, s: "var#slow"):
    time.sleep(0.05)
    return s + {i}
"""
    for i in range(6)
)


async def test_a_pass_publishes_its_progress_once_it_is_progress_after_s_old(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, SLOW_CONTEXT)
    rec = Recorder()
    settings = Settings(progress_after_s=0.3, parallel_variables=1)
    processor = RunProcessor(settings, FixedPools(pool), rec, Topics("t"))  # type: ignore[arg-type]
    report = await processor.process(request(ctx_dir, mock_proposal, "raw"))
    assert report.status is ProcessingStatus.FINISHED
    states = rec.of(ProcessingStateChanged)
    # queued was superseded before the pass was 0.3 s old; running was held until then,
    # then published; "slow" ended long after that: its state went out at once. The six
    # quick variables after it: at most one progress state every 0.3 s, the newest one
    # replacing a held one, and a held one dropped when the pass ends.
    assert [(s.status, s.variable) for s in states[:2]] == [
        (ProcessingStatus.RUNNING, None),
        (ProcessingStatus.VARIABLE_DONE, "slow"),
    ]
    assert states[-1].status is ProcessingStatus.FINISHED
    after = [s.variable for s in states[2:-1]]
    assert len(after) < 6  # coalesced (each of them takes ~0.05 s)
    assert set(after) <= {f"after{i}" for i in range(6)}
    published = [rec.at[id(s)] for s in states[:-1]]
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(published))
    assert [s.time for s in states] == sorted(s.time for s in states)
    (results,) = rec.of(ResultsReady)
    assert {r.name: r.summary for r in results.results} == {
        "quick": 1,
        "slow": 2,
        **{f"after{i}": 2 + i for i in range(6)},
    }


async def test_context_is_read_afresh_and_load_errors_fail_the_pass(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    write_context(
        ctx_dir, "from damnit_ctx import Variable\n\n@Variable\ndef a(run):\n    return 1\n"
    )
    rec = Recorder()
    processor = RunProcessor(Settings(), FixedPools(pool), rec, Topics("t"))  # type: ignore[arg-type]
    await processor.process(request(ctx_dir, mock_proposal, "raw"))
    write_context(
        ctx_dir, "from damnit_ctx import Variable\n\n@Variable\ndef a(run):\n    return 2\n"
    )
    await processor.process(request(ctx_dir, mock_proposal, "raw"))
    first, second = rec.of(ResultsReady)
    assert (first.results[0].summary, second.results[0].summary) == (1, 2)
    assert first.context_hash != second.context_hash
    assert first.result_id != second.result_id

    write_context(
        ctx_dir,
        "from damnit_ctx import Variable\n\n@Variable(units='')\ndef a(run):\n    return 2\n",
    )
    report = await processor.process(request(ctx_dir, mock_proposal, "raw"))
    assert report.status is ProcessingStatus.FAILED
    failed = rec.of(ProcessingStateChanged)[-1]
    assert failed.status is ProcessingStatus.FAILED
    assert failed.reason is not None
    assert "units must be a non-empty string" in failed.reason
    no_run = await processor.process(request(ctx_dir, tmp_path / "no-such-proposal", "raw"))
    assert no_run.status is ProcessingStatus.FAILED
    assert "does not exist" in (no_run.reason or "")
    missing = await processor.process(request(tmp_path / "nowhere", mock_proposal, "raw"))
    assert missing.status is ProcessingStatus.FAILED
    assert "cannot read" in (missing.reason or "")


async def test_an_unusable_context_python_fails_the_pass_with_the_reason(
    tmp_path: Path, mock_proposal: Path
) -> None:
    ctx_dir = tmp_path / "ctx"
    write_context(
        ctx_dir, "from damnit_ctx import Variable\n\n@Variable\ndef a(run):\n    return 1\n"
    )
    rec = Recorder()
    pools = PoolSet(Settings(workers=1, preload=""))
    processor = RunProcessor(Settings(), pools, rec, Topics("t"))
    processor.proposal_settings[1234] = {"context_python": str(tmp_path / "no-such-python")}
    try:
        report = await processor.process(request(ctx_dir, mock_proposal, "raw"))
    finally:
        await pools.close()
    assert report.status is ProcessingStatus.FAILED
    assert "cannot start" in (report.reason or "")
    assert "no-such-python" in (report.reason or "")
    assert rec.of(ResultsReady) == []


async def test_reprocess_match_selects_titles_not_names(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    """A reprocess request's ``--match`` (Selection.match) looks at titles only, as DAMNIT's."""
    ctx_dir = tmp_path / "ctx"
    write_context(ctx_dir, FILTER_CONTEXT)
    rec = Recorder()
    processor = RunProcessor(Settings(), FixedPools(pool), rec, Topics("t"))  # type: ignore[arg-type]

    async def evaluated(match: tuple[str, ...], rid: str) -> set[str]:
        await processor.process(
            request(ctx_dir, mock_proposal, "all", rid=rid, selection=Selection(match=match))
        )
        found = {r.name for m in rec.of(ResultsReady) if m.request_id == rid for r in m.results}
        return found

    # "raw_" is in the name raw_files only; its title is "Raw files".
    assert await evaluated(("raw_",), "m1") == set()
    assert await evaluated(("RAW F",), "m2") == {"raw_files"}
    # The title "Scalar2" selects scalar2 and its dependency scalar1.
    assert await evaluated(("scalar2",), "m3") == {"scalar1", "scalar2"}
