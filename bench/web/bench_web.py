"""Web benchmark: first paint of 10,000 runs x 50 variables, scrolling, and live updates.

    uv run python bench/web/bench_web.py [--runs 10000] [--variables 50] [--rate 100] [--json]

Needs the local stack (deploy/local/stack.sh up) and Debian's chromium
(deploy/local/chromium.sh install). It makes a scratch database with a proposal
of --runs x --variables values (1 % errors, 2 % bold, one string column) and a
baseline proposal of a tenth of the runs, starts the web service as a real
process (``runstream serve web``) on its own topic prefix, and drives headless
chromium through Playwright:

1. first paint: navigation start -> the table's first rendered frame (the page
   fetched the whole table and drew the rows in sight), median of 5 loads,
   for both proposals; the table API alone (HTTP GET, no browser) too;
2. scrolling: the grid scrolled by one screen per animation frame through
   the whole table; frame intervals (p50, p95, max, frames over 50 ms);
3. live: 5 browsers follow the big proposal while ``values_updated`` messages
   (5 values of a random run each) are published on the updates topic at
   --rate per second for --seconds; each browser records, per message, now
   minus the message's time: the lag from Kafka to the page. Reported per
   third of the run (a growing lag shows as a rising last third), against a
   baseline of a tenth of the rate in the same run.

Prints a report (and --json); drops the database and stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from runstream_common.admin import ensure_topics
from runstream_common.messages import ValuesUpdated, ValueView
from runstream_common.settings import KafkaSettings
from runstream_common.topics import run_key

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DSN = "postgresql://runstream:runstream@127.0.0.1:25432/runstream"
BIG, SMALL = 2001, 2002
RUNS: dict[int, int] = {}


def proposal_runs(proposal: int) -> int:
    return RUNS[proposal]


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]  # fmt: skip


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# ---------------------------------------------------------------------- data


async def fill(conn: asyncpg.Connection, proposal: int, runs: int, variables: int) -> None:
    rng = random.Random(proposal)
    await conn.execute(
        "INSERT INTO proposals (proposal, context_dir) VALUES ($1, '/nonexistent')", proposal
    )
    await conn.copy_records_to_table(
        "runs",
        columns=["proposal", "run", "start_time", "added_at", "announced"],
        records=[(proposal, r, 1.7e9 + 60 * r, 1.7e9 + 60 * r, True) for r in range(1, runs + 1)],
    )
    names = [f"var_{v:03d}" for v in range(variables)]
    await conn.copy_records_to_table(
        "variables",
        columns=["proposal", "name", "title", "units"],
        records=[
            (proposal, n, f"Group {v % 6}/Quantity {v}", "mJ" if v % 3 else None)
            for v, n in enumerate(names)
        ],
    )
    columns = ["proposal", "run", "name", "kind", "value_float", "value_text", "bold", "error",
               "error_cls", "provenance", "revision"]  # fmt: skip
    records: list[tuple[Any, ...]] = []
    for run in range(1, runs + 1):
        for v, name in enumerate(names):
            roll = rng.random()
            if roll < 0.01:
                records.append((proposal, run, name, "none", None, None, None,
                                "something went wrong", "ValueError", "context.py", 1))  # fmt: skip
            elif v == 0:
                records.append((proposal, run, name, "str", None, f"sample {run % 17}", None,
                                None, None, "context.py", 1))  # fmt: skip
            else:
                records.append((proposal, run, name, "float", rng.gauss(100, 20), None,
                                True if roll > 0.98 else None, None, None, "context.py", 1))  # fmt: skip
    await conn.copy_records_to_table("run_values", columns=columns, records=records)
    await conn.execute(
        "UPDATE runs SET cells = runstream_run_cells(proposal, run) WHERE proposal = $1", proposal
    )


async def make_database(admin_dsn: str, runs: int, variables: int) -> str:
    name = f"bench_web_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{admin_dsn.rpartition('/')[0]}/{name}"
    upgrade = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "runstream.cli", "db", "upgrade", "--dsn", dsn],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if upgrade.returncode:
        raise SystemExit(upgrade.stdout + upgrade.stderr)
    conn = await asyncpg.connect(dsn)
    try:
        RUNS.update({BIG: runs, SMALL: max(1, runs // 10)})
        await fill(conn, BIG, runs, variables)
        await fill(conn, SMALL, RUNS[SMALL], variables)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return dsn


async def drop_database(admin_dsn: str, dsn: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await admin.close()


# ---------------------------------------------------------------------- service


def start_web(kafka: KafkaSettings, dsn: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update({
        "RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RUNSTREAM_POSTGRES_DSN": dsn,
        "RUNSTREAM_WEB_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    handle = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runstream.cli", "serve", "web"],
        stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"runstream web serving (http://\S+)", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.2)
    raise SystemExit(f"the web service did not start:\n{log.read_text()[-3000:]}")


def api_seconds(url: str, proposal: int, repeat: int = 5) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}api/proposals/{proposal}/table", timeout=60) as r:
            size = len(r.read())
        times.append(time.perf_counter() - started)
    return statistics.median(times), size


# ---------------------------------------------------------------------- browser


def first_paint(browser: Any, url: str, proposal: int, repeat: int = 5) -> list[float]:
    times = []
    for _ in range(repeat):
        context = browser.new_context(viewport={"width": 1600, "height": 900})
        page = context.new_page()
        page.goto(f"{url}#/p/{proposal}")
        page.wait_for_function(
            "() => window.__runstream && window.__runstream.ready", timeout=60_000
        )
        times.append(page.evaluate("window.__runstream.navigationToPaintMs"))
        context.close()
    return times


SCROLL = """async (step) => {
    const grid = document.getElementById("grid");
    const intervals = [];
    grid.scrollTop = 0;
    await new Promise(requestAnimationFrame);
    let last = performance.now();
    while (grid.scrollTop + grid.clientHeight < grid.scrollHeight - 2 && intervals.length < 400) {
        grid.scrollTop += step || grid.clientHeight;
        await new Promise(requestAnimationFrame);
        const now = performance.now();
        intervals.push(now - last);
        last = now;
    }
    const page = window.__runstream && window.__runstream.page;
    const bottom = Math.floor((grid.scrollTop + grid.clientHeight) / 30) - 2;
    const lastRun = page ? page.grid.rows[Math.min(page.grid.rows.length - 1, bottom)].run : 0;
    return { intervals, lastRun };
}"""


def scrolling(browser: Any, url: str, proposal: int, step: int = 0) -> dict[str, Any]:
    """Scroll by ``step`` px (0: a screen) per animation frame; frame intervals."""
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    page.goto(f"{url}#/p/{proposal}")
    page.wait_for_function("() => window.__runstream && window.__runstream.ready", timeout=60_000)
    page.wait_for_function(
        f"() => window.__runstream.page.grid.rows.length === {proposal_runs(proposal)}",
        timeout=60_000,
    )
    result = page.evaluate(SCROLL, step)
    context.close()
    intervals = result["intervals"]
    return {
        "step_px": step,
        "frames": len(intervals),
        "p50_ms": pct(intervals, 50),
        "p95_ms": pct(intervals, 95),
        "max_ms": max(intervals),
        "over_50ms": sum(i > 50 for i in intervals),
        "reached_run": result["lastRun"],
    }


STATIC = """<style>td{white-space:nowrap;padding:0 6px;border:1px solid #eee;height:29px;
font:13px system-ui} #grid{height:860px;overflow:auto}</style><div id=grid><table>%s</table></div>"""


def static_scrolling(browser: Any) -> dict[str, Any]:
    """The baseline: a plain static HTML table of the same size per screen, no script."""
    rng = random.Random(3)
    rows = "".join(
        "<tr>" + "".join(f"<td>{rng.gauss(100, 20):.6g}</td>" for _ in range(55)) + "</tr>"
        for _ in range(1000)
    )
    context = browser.new_context(viewport={"width": 1600, "height": 900})
    page = context.new_page()
    page.set_content(STATIC % rows)
    intervals = page.evaluate(SCROLL, 0)["intervals"]
    context.close()
    return {
        "frames": len(intervals),
        "p50_ms": pct(intervals, 50),
        "p95_ms": pct(intervals, 95),
        "max_ms": max(intervals),
        "over_50ms": sum(i > 50 for i in intervals),
    }


async def publish_updates(kafka: KafkaSettings, rate: float, seconds: float, runs: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks=1, linger_ms=0)
    await producer.start()
    rng = random.Random(1)
    # warm up (metadata, connection): an update of another proposal, which no page shows
    warm = ValuesUpdated(proposal=BIG + 100, run=1, values={})
    await producer.send_and_wait(kafka.topics.updates, warm.model_dump_json().encode())
    sent = 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                run = rng.randint(1, runs)
                message = ValuesUpdated(
                    proposal=BIG, run=run,
                    values={f"var_{rng.randint(1, 49):03d}": ValueView(summary=rng.gauss(100, 20),
                                                                       units="mJ")
                            for _ in range(5)},
                )  # fmt: skip
                await producer.send(
                    kafka.topics.updates, message.model_dump_json().encode(), key=run_key(BIG, run)
                )
                sent += 1
            await asyncio.sleep(max(0.0, (sent / rate) - (time.monotonic() - started)))
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def live(browser: Any, url: str, kafka: KafkaSettings, rate: float, seconds: float, runs: int,
         browsers: int) -> dict[str, Any]:  # fmt: skip
    contexts = [
        browser.new_context(viewport={"width": 1400, "height": 800}) for _ in range(browsers)
    ]
    pages = [c.new_page() for c in contexts]
    for page in pages:
        page.goto(f"{url}#/p/{BIG}")
        page.wait_for_function(
            "() => window.__runstream && window.__runstream.ready", timeout=60_000
        )
        page.wait_for_selector('#live[data-state="live"]', timeout=60_000)
        # the whole table is there (updates wait while the older runs load)
        page.wait_for_function("() => window.__runstream.page.holding === null", timeout=60_000)
        page.evaluate("window.__runstream.lags = []; window.__runstream.updates = 0")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(asyncio.run, publish_updates(kafka, rate, seconds, runs)).result()
    time.sleep(2.0)  # the last ones arrive
    per_browser = [page.evaluate("window.__runstream.lags") for page in pages]
    for c in contexts:
        c.close()
    thirds: list[list[float]] = [[], [], []]
    for lags in per_browser:
        n = len(lags)
        for i, lag in enumerate(lags):
            thirds[min(2, 3 * i // max(1, n))].append(lag)
    every = [lag for lags in per_browser for lag in lags]
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": sent,
        "received_per_browser": [len(x) for x in per_browser],
        "p50_ms": pct(every, 50),
        "p99_ms": pct(every, 99),
        "max_ms": max(every) if every else float("nan"),
        "thirds_p50_ms": [pct(t, 50) for t in thirds],
        "thirds_p99_ms": [pct(t, 99) for t in thirds],
    }


# ---------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    kafka = KafkaSettings(
        bootstrap_servers=args.bootstrap, topic_prefix=f"bw{uuid.uuid4().hex[:8]}"
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        dsn = pool.submit(asyncio.run, make_database(args.dsn, args.runs, args.variables)).result()
        load_s = time.perf_counter() - started
        pool.submit(asyncio.run, ensure_topics(kafka, [kafka.topics.updates])).result()
    log = Path(tempfile.mkdtemp(prefix="bench-web-")) / "web.log"
    proc, url = start_web(kafka, dsn, log)
    report: dict[str, Any] = {"runs": args.runs, "variables": args.variables,
                              "load_s": load_s, "loadavg": os.getloadavg()}  # fmt: skip
    try:
        report["api_big_s"], report["api_big_bytes"] = api_seconds(url, BIG)
        report["api_small_s"], report["api_small_bytes"] = api_seconds(url, SMALL)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=BROWSER_ARGS)
            try:
                report["paint_small_ms"] = first_paint(browser, url, SMALL)
                report["paint_big_ms"] = first_paint(browser, url, BIG)
                report["scroll"] = scrolling(browser, url, BIG)
                report["scroll_static"] = static_scrolling(browser)
                report["scroll_smooth"] = scrolling(browser, url, BIG, step=120)
                report["live_baseline"] = live(browser, url, kafka, args.rate / 10, args.seconds / 2,
                                               args.runs, args.browsers)  # fmt: skip
                report["live"] = live(browser, url, kafka, args.rate, args.seconds, args.runs,
                                      args.browsers)  # fmt: skip
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                pool.submit(asyncio.run, drop_database(args.dsn, dsn)).result()
            except (OSError, asyncpg.PostgresError) as exc:  # keep the figures
                print(f"warning: could not drop {dsn.rpartition('/')[2]}: {exc}", file=sys.stderr)
    report["loadavg_after"] = os.getloadavg()
    return report


def show(r: dict[str, Any]) -> None:
    big, small = statistics.median(r["paint_big_ms"]), statistics.median(r["paint_small_ms"])
    print(f"web benchmark: {r['runs']} runs x {r['variables']} variables "
          f"(loaded in {r['load_s']:.1f} s); load average {r['loadavg'][0]:.2f}")  # fmt: skip
    print(f"  table API   {r['runs']:>6} runs: {r['api_big_s'] * 1000:7.0f} ms, "
          f"{r['api_big_bytes'] / 1e6:.1f} MB;  {r['runs'] // 10} runs: "
          f"{r['api_small_s'] * 1000:.0f} ms")  # fmt: skip
    print(f"  first paint {r['runs']:>6} runs: {big:7.0f} ms (median of 5, navigation start to "
          f"rows drawn; all: {', '.join(f'{x:.0f}' for x in r['paint_big_ms'])})")  # fmt: skip
    print(f"  first paint {r['runs'] // 10:>6} runs: {small:7.0f} ms  -> ratio {big / small:.2f}")
    for key, what in (("scroll", "a screen per frame"), ("scroll_smooth", "120 px per frame"),
                      ("scroll_static", "static HTML table, a screen per frame (baseline)")):  # fmt: skip
        s = r[key]
        print(f"  scrolling, {what}: {s['frames']} frames, frame p50 {s['p50_ms']:.1f} ms, "
              f"p95 {s['p95_ms']:.1f} ms, max {s['max_ms']:.0f} ms, {s['over_50ms']} over 50 ms")  # fmt: skip
    print(
        f"  scrolling p50 vs static table: ratio "
        f"{r['scroll']['p50_ms'] / max(0.1, r['scroll_static']['p50_ms']):.2f}"
    )
    for key in ("live_baseline", "live"):
        v = r[key]
        print(f"  live {v['rate']:5.0f}/s for {v['seconds']:.0f} s to {len(v['received_per_browser'])}"
              f" browsers: sent {v['sent']}, received {v['received_per_browser']}; lag p50 "
              f"{v['p50_ms']:.0f} ms, p99 {v['p99_ms']:.0f} ms, max {v['max_ms']:.0f} ms; "
              f"p50 by third {[round(x) for x in v['thirds_p50_ms']]}, "
              f"p99 by third {[round(x) for x in v['thirds_p99_ms']]}")  # fmt: skip
    ratio = r["live"]["p99_ms"] / max(1.0, r["live_baseline"]["p99_ms"])
    print(
        f"  lag p99 at {r['live']['rate']:.0f}/s vs {r['live_baseline']['rate']:.0f}/s: "
        f"ratio {ratio:.2f}"
    )
    print(f"  load average after: {r['loadavg_after'][0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("RUNSTREAM_POSTGRES_DSN", DEFAULT_DSN))
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("RUNSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092"),
    )
    parser.add_argument(
        "--chromium", default=os.environ.get("RUNSTREAM_CHROMIUM", "/usr/bin/chromium")
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--variables", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0, help="updates per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--browsers", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        show(report)


if __name__ == "__main__":
    main()
