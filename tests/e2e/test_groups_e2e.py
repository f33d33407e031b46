"""A context with groups and a default pipeline, through the real ingest, executor, store
and slurm-gateway (local backend: cluster variables of groups run as jobs by their dotted names).

The dotted variable names, joined titles and tag unions must be the same in the
executor's definitions, PostgreSQL (variables, variable_tags, run_values) and the
per-run HDF5 file, and a link through an optional component that is None must
give its dependent DAMNIT's Skip.
"""

from __future__ import annotations

import textwrap

import asyncpg
import h5py
import pytest

from .conftest import E2E, PROPOSAL
from .helpers import scalar, wait_until

pytestmark = pytest.mark.e2e

CONTEXT = """
from damnit_ctx import Variable, Group, Pipeline
import numpy as np

@Group(tags="XGM")
class XGM:
    device: str

    @Variable(title="Trains", tags="counts")
    def n_trains(self, run):
        return len(run[self.device, "beamPosition.ixPos"].train_id_coordinates())

    @Variable(title="Beam x", summary="mean", units="mm")
    def beam_x(self, run):
        return run[self.device, "beamPosition.ixPos"].ndarray()

    @Variable(title="Heavy", cluster=True)
    def heavy(self, run, n: "self#n_trains"):
        return 10 * n

@Group
class Check:
    xgm: XGM
    other: "XGM | None" = None

    @Variable(title="Doubled")
    def doubled(self, run, n: "self#xgm.n_trains"):
        return 2 * n

    @Variable(title="Against other")
    def against(self, run, n: "self#xgm.n_trains", m: "self#other.n_trains"):
        return n - m

sa1 = XGM(title="SA1", device="SA1_XTD2_XGM/DOOCS/MAIN")
check = Check(xgm=sa1, sep=" - ", tags=["QA"])
Pipeline.default().add({"spb": XGM(device="SPB_XTD9_XGM/DOOCS/MAIN")})
"""

EXPECTED = {
    # name: (title, tags)
    "sa1.n_trains": ("SA1/Trains", ["XGM", "counts"]),
    "sa1.beam_x": ("SA1/Beam x", ["XGM"]),
    "spb.n_trains": ("spb/Trains", ["XGM", "counts"]),
    "spb.beam_x": ("spb/Beam x", ["XGM"]),
    "sa1.heavy": ("SA1/Heavy", ["XGM"]),
    "spb.heavy": ("spb/Heavy", ["XGM"]),
    "check.doubled": ("check - Doubled", ["QA"]),
    "check.against": ("check - Against other", ["QA"]),
}


@pytest.mark.timeout(600)
async def test_group_variables_in_database_and_hdf5(e2e: E2E) -> None:
    (e2e.context_dir / "context.py").write_text(textwrap.dedent(CONTEXT))
    e2e.make_runs(range(1, 2))
    await e2e.system.start("store", "executor", "ingest", "slurm-gateway")
    e2e.send_events(range(1, 2))

    async def missing() -> list[str]:
        values = await e2e.values()
        return [n for n in EXPECTED if (1, n) not in values]

    await wait_until(missing, timeout=300, what="the group variables", logs=e2e.system.logs)
    values = await e2e.values()
    assert scalar(values[(1, "sa1.n_trains")]) == 400
    assert scalar(values[(1, "spb.n_trains")]) == 400
    assert scalar(values[(1, "check.doubled")]) == 800
    # cluster=True group variables go through the slurm-gateway (local backend) by name
    assert scalar(values[(1, "sa1.heavy")]) == 4000
    assert scalar(values[(1, "spb.heavy")]) == 4000
    assert isinstance(scalar(values[(1, "sa1.beam_x")]), float)
    assert values[(1, "sa1.beam_x")]["units"] == "mm"
    against = values[(1, "check.against")]
    assert against["error_cls"] == "Skip"
    assert against["error"] == (
        "Dependencies returned no data:\n- 'check.__missing__.other.n_trains'"
    )
    # The transient placeholder is neither a variable nor a value.
    assert not [n for (_, n) in values if "__missing__" in n]

    conn = await asyncpg.connect(e2e.dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, title FROM variables WHERE proposal = $1 AND user_type IS NULL",
            PROPOSAL,
        )
        tags = await conn.fetch(
            "SELECT variable, tag FROM variable_tags WHERE proposal = $1 ORDER BY tag", PROPOSAL
        )
    finally:
        await conn.close()
    titles = {r["name"]: r["title"] for r in rows}
    assert titles == {name: title for name, (title, _) in EXPECTED.items()}
    by_variable: dict[str, list[str]] = {}
    for r in tags:
        by_variable.setdefault(r["variable"], []).append(r["tag"])
    assert by_variable == {name: tag_list for name, (_, tag_list) in EXPECTED.items()}

    with h5py.File(e2e.context_dir / "extracted_data" / f"p{PROPOSAL}_r1.h5", "r") as f:
        assert f[".reduced/check.doubled"][()] == 800
        assert f[".reduced/sa1.beam_x"].attrs["units"] == "mm"
        assert f["sa1.beam_x/data"].shape == (400,)
        assert f[".errors/check.against"].attrs["type"] == "Skip"
        assert not [k for k in f[".reduced"] if "__missing__" in k]
