"""Groups and pipelines through the executor's engine (warm workers, one request per variable).

The in-process ports of DAMNIT's tests are in test_groups.py / test_pipeline_api.py;
here the same features run the way the service runs them: on a real (mock
EXtra-data) run, the context loaded and every variable evaluated in workers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from runstream_executor.pool import WorkerPool

from .helpers import run_context

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

GROUP_CONTEXT = '''
from damnit_ctx import Variable, Group, Pipeline, Cell
import numpy as np

@Group(tags="XGM")
class XGM:
    device: str

    @Variable(title="Pulse energy", summary="mean", units="uJ", tags="energy")
    def energy(self, run):
        """Mean pulse energy per train."""
        return run[self.device + ":output", "data.intensityTD"].ndarray()[:, 0]

    @Variable(title="Beam x", summary="mean")
    def beam_x(self, run):
        return run[self.device, "beamPosition.ixPos"].ndarray()

@Group
class Normalised:
    xgm: XGM
    reference: "XGM | None" = None

    @Variable(title="Energy / 1000")
    def scaled(self, run, energy: "self#xgm.energy"):
        return float(np.mean(energy)) / 1000

    @Variable(title="Ratio")
    def ratio(self, run, energy: "self#xgm.energy", ref: "self#reference.energy"):
        return float(np.mean(energy) / np.mean(ref))

    @Variable(title="Ratio or one")
    def ratio_or_one(self, run, ref: "self#reference.energy" = None):
        return 1.0 if ref is None else 2.0

xgm_sa1 = XGM(title="SA1 XGM", device="SA1_XTD2_XGM/DOOCS/MAIN")
norm = Normalised(xgm=xgm_sa1, sep=" | ")

@Variable(title="Trains")
def n_trains(run):
    return len(run.train_ids)

@Variable(title="Nested pipeline")
def nested(run, n: "var#n_trains"):
    pipe = Pipeline(proposal=1, run_number=2, data=run).add(XGM(name="inner", device="SPB_XTD9_XGM/DOOCS/MAIN"))
    return float(np.mean(pipe.execute().cells["inner.beam_x"].data)) + int(n)

Pipeline.default().add({"xgm_spb": XGM(device="SPB_XTD9_XGM/DOOCS/MAIN", tags=["SPB"])})
'''


async def test_group_context_through_the_engine(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(pool, GROUP_CONTEXT, tmp_path / "ctx", mock_proposal)
    v = ev.ctx.variables
    assert set(v) == {
        "xgm_sa1.energy",
        "xgm_sa1.beam_x",
        "xgm_spb.energy",
        "xgm_spb.beam_x",
        "norm.scaled",
        "norm.ratio",
        "norm.ratio_or_one",
        "norm.__missing__.reference.energy",
        "n_trains",
        "nested",
    }
    energy = v["xgm_sa1.energy"]
    assert (energy.title, energy.tags, energy.units, energy.description) == (
        "SA1 XGM/Pulse energy",
        ("XGM", "energy"),
        "uJ",
        "Mean pulse energy per train.",
    )
    assert v["xgm_spb.beam_x"].title == "xgm_spb/Beam x"
    assert v["xgm_spb.energy"].tags == ("SPB", "energy")
    assert v["norm.scaled"].title == "norm | Energy / 1000"
    assert v["norm.scaled"].deps == ("xgm_sa1.energy",)
    assert v["norm.__missing__.reference.energy"].transient
    # Transient placeholders are not published as variables.
    assert "norm.__missing__.reference.energy" not in {d.name for d in ev.ctx.definitions()}

    outcomes = ev.outcomes
    assert outcomes["xgm_sa1.energy"].status == "ok"
    assert ev.summary("xgm_sa1.energy") == pytest.approx(float(ev.summary("norm.scaled")) * 1000)
    assert outcomes["xgm_spb.beam_x"].status == "ok"
    assert ev.error("norm.ratio") == (
        "Dependencies returned no data:\n- 'norm.__missing__.reference.energy'",
        "Skip",
    )
    assert ev.summary("norm.ratio_or_one") == 1.0
    assert outcomes["norm.__missing__.reference.energy"].status == "none"
    assert ev.summary("nested") == pytest.approx(400 + ev.summary("xgm_spb.beam_x"))
    assert outcomes["nested"].status == "ok"


async def test_match_selects_by_title_only(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    # "sa1" is in the names xgm_sa1.* and in the title "SA1 XGM/...": titles decide.
    ev = await run_context(pool, GROUP_CONTEXT, tmp_path / "a", mock_proposal, match=("sa1 xgm/b",))
    assert ev.names == ["xgm_sa1.beam_x"]
    # "xgm_spb" is only in names (the titles say "xgm_spb/..." too: DAMNIT's default title).
    ev = await run_context(pool, GROUP_CONTEXT, tmp_path / "b", mock_proposal, match=("trains",))
    assert ev.names == ["n_trains"]
    # "scaled" is only in the name norm.scaled (title "norm | Energy / 1000"): nothing.
    ev = await run_context(pool, GROUP_CONTEXT, tmp_path / "c", mock_proposal, match=("scaled",))
    assert ev.names == []
    ev = await run_context(pool, GROUP_CONTEXT, tmp_path / "e", mock_proposal, match=("/ 1000",))
    assert ev.names == ["xgm_sa1.energy", "norm.scaled"]
    ev = await run_context(pool, GROUP_CONTEXT, tmp_path / "d", mock_proposal, match=("RATIO",))
    assert set(ev.names) == {
        "norm.ratio",
        "norm.ratio_or_one",
        "xgm_sa1.energy",
        "norm.__missing__.reference.energy",
    }


async def test_set_default_pipeline_is_the_whole_context(
    pool: WorkerPool, tmp_path: Path, mock_proposal: Path
) -> None:
    ev = await run_context(
        pool,
        """
        from damnit_ctx import Variable, Group, Pipeline

        @Group
        class Counter:
            @Variable(title="Trains")
            def n(self, run):
                return len(run.train_ids)

        @Variable(title="Not chosen")
        def ignored(run):
            return 1

        pipe = Pipeline().add({"counter": Counter()})
        Pipeline.set_default(pipe)
        """,
        tmp_path,
        mock_proposal,
    )
    assert list(ev.ctx.variables) == ["counter.n"]
    assert ev.ctx.variables["counter.n"].title == "counter/Trains"
    assert ev.summary("counter.n") == 400
