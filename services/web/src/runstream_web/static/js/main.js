// The page: a proposal list (#/) and a proposal's live run table (#/p/<number>).

import { getJSON, setToken, token } from "./api.js";
import { clear, el, toast } from "./dom.js";
import { formatTime } from "./format.js";
import { TablePage } from "./table.js";

const probe = { firstPaintMs: null, ready: false, updates: 0, lags: [], page: null };
window.__runstream = probe; // read by the browser tests and the benchmark

let session = { can_write: false, why: "" };
let page = null;

async function loadSession() {
  try {
    session = await getJSON("/api/session");
  } catch (err) {
    toast(`cannot reach the service: ${err.message}`, "error");
  }
  document.body.classList.toggle("can-write", Boolean(session.can_write));
  const who = document.getElementById("who");
  who.textContent = session.can_write ? (session.user ? `editing as ${session.user}` : "") : "read-only";
  who.title = session.why || "";
  const signin = document.getElementById("signin");
  signin.hidden = session.write_access !== "token";
  signin.textContent = token() ? "Sign out" : "Sign in";
  if (page) page.setWritable(Boolean(session.can_write));
}

document.getElementById("signin").addEventListener("click", async () => {
  if (token()) {
    setToken(null);
  } else {
    const value = prompt("Write token");
    if (!value) return;
    setToken(value.trim());
  }
  await loadSession();
  if (token() && !session.can_write) {
    setToken(null);
    toast("that token does not allow writes", "error");
    await loadSession();
  }
});

async function showProposals() {
  document.getElementById("tableview").hidden = true;
  const main = document.getElementById("proposals");
  main.hidden = false;
  document.getElementById("where").textContent = "";
  document.title = "runstream";
  const body = clear(main.querySelector("tbody"));
  let list = [];
  try {
    list = await getJSON("/api/proposals");
  } catch (err) {
    toast(err.message, "error");
  }
  for (const p of list) {
    const tr = el("tr", { dataset: { proposal: String(p.proposal) } }, [
      el("td", {}, [el("a", { href: `#/p/${p.proposal}`, text: String(p.proposal) })]),
      el("td", { text: String(p.runs) }),
      el("td", { text: p.last_run === null ? "" : String(p.last_run) }),
      el("td", { text: formatTime(p.last_added) }),
    ]);
    tr.addEventListener("click", () => { location.hash = `#/p/${p.proposal}`; });
    body.append(tr);
  }
  if (!list.length) body.append(el("tr", {}, [el("td", { colspan: "4", text: "no proposals yet" })]));
}

function route() {
  if (page) {
    page.stop();
    page = null;
    probe.page = null;
  }
  const match = location.hash.match(/^#\/p\/(\d+)/);
  if (!match) {
    showProposals();
    return;
  }
  document.getElementById("proposals").hidden = true;
  document.getElementById("tableview").hidden = false;
  const proposal = Number(match[1]);
  document.getElementById("where").textContent = `proposal ${proposal}`;
  document.title = `p${proposal} · runstream`;
  page = new TablePage(proposal, probe, Boolean(session.can_write));
  probe.page = page;
  page.start();
}

window.addEventListener("hashchange", route);
route(); // the table loads while the session is asked for: writing is enabled when it answers
loadSession();
