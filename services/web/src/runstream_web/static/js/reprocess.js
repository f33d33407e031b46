// Reprocessing chosen runs (all or chosen variables), and its progress: the
// service answers with the id of the run message ingest makes for each run,
// and the processing states on the feed say when each of them is finished.

import { paths, post } from "./api.js";
import { clear, el, toast } from "./dom.js";

const $ = (id) => document.getElementById(id);

export class Reprocessing {
  constructor(page) {
    this.page = page;
    this.expected = new Map(); // request id -> run
    this.done = new Map(); // run -> "finished" | "failed"
    this.hideTimer = 0;
  }

  open() {
    const dialog = $("reprocess-dialog");
    const form = dialog.querySelector("form");
    const selected = [...this.page.grid.selected].sort((a, b) => a - b);
    form.reset();
    form.elements.runs.value = selected.length ? "selected" : "all";
    form.querySelector('input[value="selected"]').disabled = !selected.length;
    form.querySelector(".sel-label").textContent = selected.length
      ? `the ${selected.length} selected run${selected.length > 1 ? "s" : ""} (${selected.slice(0, 8).join(", ")}${selected.length > 8 ? ", …" : ""})`
      : "selected runs (select rows with their check boxes)";
    const list = clear(form.querySelector(".varlist"));
    for (const c of this.page.model.columns) {
      if (c.kind !== "var" || c.userType) continue;
      list.append(el("label", {}, [el("input", { type: "checkbox", name: "var", value: c.key }), ` ${c.title}`]));
    }
    dialog.querySelector(".dialog-error").textContent = "";
    const submit = async (event) => {
      if (event.submitter && event.submitter.value === "cancel") return;
      event.preventDefault();
      const body = {
        runs: form.elements.runs.value === "all" ? "all" : selected,
        variables: form.elements.vars.value === "chosen"
          ? [...form.querySelectorAll('input[name="var"]:checked')].map((i) => i.value) : [],
        data: form.elements.data.value,
      };
      if (form.elements.vars.value === "chosen" && !body.variables.length) {
        dialog.querySelector(".dialog-error").textContent = "choose at least one variable";
        return;
      }
      try {
        const answer = await post(paths.reprocess(this.page.proposal), body);
        dialog.close();
        this.track(answer.runs);
      } catch (err) {
        dialog.querySelector(".dialog-error").textContent = err.message;
      }
    };
    form.addEventListener("submit", submit, { signal: this.page.abort.signal });
    dialog.addEventListener("close", () => form.removeEventListener("submit", submit), { once: true });
    dialog.showModal();
  }

  track(runs) {
    this.expected = new Map(Object.entries(runs).map(([id, run]) => [id, Number(run)]));
    this.done = new Map();
    toast(`asked to reprocess ${this.expected.size} run${this.expected.size === 1 ? "" : "s"}`, "ok", 3000);
    this.show();
  }

  observe(batch) {
    if (!this.expected.size) return;
    let changed = false;
    for (const u of batch) {
      if (u.type !== "processing_state_set") continue;
      const run = this.expected.get(u.state.request_id);
      if (run === undefined || this.done.has(run)) continue;
      if (u.state.status === "finished" || u.state.status === "failed") {
        this.done.set(run, u.state.status);
        changed = true;
      }
    }
    if (changed) this.show();
  }

  show() {
    const box = $("progress");
    const total = this.expected.size;
    const done = this.done.size;
    const failed = [...this.done.values()].filter((s) => s === "failed").length;
    box.hidden = false;
    box.querySelector(".progress-bar span").style.width = `${total ? (100 * done) / total : 100}%`;
    box.querySelector(".progress-text").textContent =
      `reprocessed ${done}/${total} runs${failed ? `, ${failed} failed` : ""}`;
    box.dataset.done = String(done);
    box.dataset.total = String(total);
    clearTimeout(this.hideTimer);
    if (done === total) this.hideTimer = setTimeout(() => { box.hidden = true; this.expected = new Map(); }, 15000);
  }

  stop() {
    clearTimeout(this.hideTimer);
    $("progress").hidden = true;
  }
}
