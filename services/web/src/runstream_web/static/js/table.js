// One proposal's live run table: snapshot, live updates, sorting, filtering,
// columns, editing, CSV export, reprocessing.

import { ApiError, getJSON, paths, post } from "./api.js";
import { download, toCsv } from "./csv.js";
import { Detail } from "./detail.js";
import { clear, el, toast } from "./dom.js";
import { edit } from "./editor.js";
import { Grid } from "./grid.js";
import { Live } from "./live.js";
import { Model } from "./model.js";
import { Reprocessing } from "./reprocess.js";

const $ = (id) => document.getElementById(id);
const FIRST_RUNS = 200; // painted before the rest of the table arrives

export class TablePage {
  constructor(proposal, probe, canWrite) {
    this.proposal = proposal;
    this.probe = probe;
    this.abort = new AbortController();
    this.model = new Model(proposal);
    this.filter = "";
    this.sort = null;
    this.pending = new Map(); // command id -> the edit waiting for the store's answer
    this.early = new Map(); // answers that came before the POST returned
    this.lastSelected = null;
    this.grid = new Grid($("grid"), this.model, {
      onSort: (key) => this.toggleSort(key),
      onSelect: (run, on, shift) => this.select(run, on, shift),
      onCellClick: (run, key) => this.openDetail(run, key),
      onCellEdit: (run, key, cell) => this.startEdit(run, key, cell),
      onRendered: () => this.rendered(),
    });
    this.grid.canWrite = canWrite;
    this.detail = new Detail($("detail"), this.model);
    this.detail.onClose = () => { this.grid.active = null; this.grid.touch(); };
    this.reprocessing = new Reprocessing(this);
    this.live = new Live(proposal, {
      onUpdates: (batch) => this.onUpdates(batch),
      onReset: () => this.load(),
      onState: (state) => { const live = $("live"); live.dataset.state = state; live.textContent = state; },
    });
    this.viewTimer = 0;
    this.viewDue = Infinity;
    this.started = performance.now();
    this.bindTools();
  }

  on(target, type, handler) {
    target.addEventListener(type, handler, { signal: this.abort.signal });
  }

  bindTools() {
    const filter = $("filter");
    filter.value = "";
    let timer = 0;
    this.on(filter, "input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { this.filter = filter.value; this.refreshView(); }, 120);
    });
    const tall = $("tall");
    tall.checked = localStorage.getItem("runstream.tall") === "1";
    const applyTall = () => {
      document.body.classList.toggle("tall", tall.checked);
      localStorage.setItem("runstream.tall", tall.checked ? "1" : "0");
      this.grid.measure();
      this.refreshView(true);
    };
    document.body.classList.toggle("tall", tall.checked);
    this.grid.measure();
    this.on(tall, "change", applyTall);
    this.on($("export"), "click", () => {
      download(`p${this.proposal}_runs.csv`, toCsv(this.model, this.grid.rows));
    });
    this.on($("columns"), "toggle", () => { if ($("columns").open) this.renderColumnMenu(); });
    this.on($("addvar"), "click", () => this.addVariable());
    this.on($("reprocess"), "click", () => this.reprocessing.open());
    this.on($("grid"), "keydown", (e) => this.onKey(e));
  }

  setWritable(canWrite) {
    this.grid.canWrite = canWrite;
    this.grid.touch();
  }

  async start() {
    await this.load();
  }

  // The newest runs first (painted at once), then the rest; updates that come
  // meanwhile wait, so that the older snapshot never overwrites them.
  async load() {
    this.probe.loads = (this.probe.loads || 0) + 1;
    this.holding = [];
    let first;
    try {
      first = await getJSON(`${paths.table(this.proposal)}?newest=${FIRST_RUNS}`);
    } catch (err) {
      this.loadFailed(err);
      return;
    }
    if (this.abort.signal.aborted) return;
    this.model.load(first);
    this.loaded = true;
    this.refreshView(true);
    this.live.start(first.cursor);
    if (!first.complete) {
      try {
        this.model.merge(await getJSON(`${paths.table(this.proposal)}?before=${first.oldest}`));
      } catch (err) {
        this.loadFailed(err);
        return;
      }
      if (this.abort.signal.aborted) return;
    }
    const held = this.holding;
    this.holding = null;
    if (held.length) this.apply(held);
    this.refreshView(true);
  }

  loadFailed(err) {
    this.live.stop();
    toast(`cannot load proposal ${this.proposal}: ${err.message}`, "error");
    if (!(err instanceof ApiError) || err.status >= 500) setTimeout(() => this.load(), 3000);
  }

  rendered() {
    if (this.probe.firstPaintMs === null && this.loaded) { // the first frame with the table
      this.probe.firstPaintMs = performance.now() - this.started;
      this.probe.navigationToPaintMs = performance.now();
      this.probe.ready = true;
    }
    this.countText();
  }

  countText() {
    const shown = this.grid.rows.length;
    const total = this.model.rows.size;
    const sel = this.grid.selected.size;
    $("count").textContent = `${shown === total ? `${total} runs` : `${shown} of ${total} runs`}${sel ? ` · ${sel} selected` : ""}`;
  }

  // Filter and sort again: at once, soon (150 ms), or, for changed values under
  // a sort or filter, within a second (10,000 rows take tens of ms to sort).
  refreshView(now = false, delay = 150) {
    const apply = () => {
      clearTimeout(this.viewTimer);
      this.viewTimer = 0;
      this.viewDue = Infinity;
      this.grid.sort = this.sort;
      this.grid.headVersion = -1;
      this.grid.setRows(this.model.view(this.filter, this.sort));
    };
    if (now) {
      apply();
    } else if (!this.viewTimer || performance.now() + delay < this.viewDue) {
      clearTimeout(this.viewTimer);
      this.viewDue = performance.now() + delay;
      this.viewTimer = setTimeout(apply, delay);
    }
  }

  onUpdates(batch) {
    if (this.holding) this.holding.push(...batch);
    else this.apply(batch);
  }

  apply(batch) {
    let structure = false;
    let values = false;
    for (const u of batch) {
      this.probe.updates += 1;
      if (u.time && this.probe.lags.length < 100000) this.probe.lags.push(Date.now() - Date.parse(u.time));
      this.answer(u);
      const change = this.model.apply(u);
      structure ||= change.structure || change.columns;
      values ||= change.runs.length > 0;
      if (this.detail.current && change.runs.includes(this.detail.current[0]) && u.type === "values_updated"
          && this.detail.current[1] in u.values) {
        this.detail.show(...this.detail.current);
      }
    }
    this.reprocessing.observe(batch);
    if (structure) this.refreshView();
    else if (values && (this.sort || this.filter)) this.refreshView(false, 1000);
    this.grid.touch();
  }

  // The store's answer to one of this page's edits.
  answer(u) {
    const id = u.type === "command_rejected" ? u.command_event_id : u.correlation_id;
    if (!id) return;
    const edit = this.pending.get(id);
    if (!edit) { // perhaps ours, before the POST returned: keep it a while
      if (u.type === "values_updated" || u.type === "command_rejected") {
        this.early.set(id, u);
        if (this.early.size > 500) this.early.delete(this.early.keys().next().value);
      }
      return;
    }
    this.pending.delete(id);
    if (u.type === "command_rejected") this.refused(edit, u.reason);
    else this.grid.marks.delete(edit.where);
  }

  // asc -> desc -> the default order (newest run first)
  toggleSort(key) {
    if (!this.sort || this.sort.key !== key) this.sort = { key, dir: "asc" };
    else if (this.sort.dir === "asc") this.sort = { key, dir: "desc" };
    else this.sort = null;
    this.refreshView(true);
  }

  select(run, on, shift) {
    const sel = this.grid.selected;
    if (shift && this.lastSelected !== null) {
      const runs = this.grid.rows.map((r) => r.run);
      const [a, b] = [runs.indexOf(this.lastSelected), runs.indexOf(run)].sort((x, y) => x - y);
      if (a >= 0) for (const r of runs.slice(a, b + 1)) on ? sel.add(r) : sel.delete(r);
    }
    if (on) sel.add(run);
    else sel.delete(run);
    this.lastSelected = run;
    this.grid.touch();
  }

  // A click: the cell becomes the active one; a value opens in the side panel
  // (an editable cell does not: a double click edits it, and the panel would move it).
  openDetail(run, key) {
    if (["run", "__status", "start_time"].includes(key)) return;
    this.grid.active = [run, key];
    this.grid.touch();
    const column = this.model.columns.find((c) => c.key === key);
    const editable = this.grid.canWrite && column && (column.kind === "comment" || column.userType);
    if (!editable || !this.detail.root.hidden) this.detail.show(run, key);
  }

  onKey(event) {
    if (event.key === "Enter" && this.grid.active) {
      const [run, key] = this.grid.active;
      const cell = this.grid.cellNode(run, key);
      if (cell) this.startEdit(run, key, cell);
    } else if (event.key === "Escape" && !this.detail.root.hidden) {
      this.detail.close();
    }
  }

  startEdit(run, key, cell) {
    const column = this.model.columns.find((c) => c.key === key);
    if (!column || !this.grid.canWrite || !(column.kind === "comment" || column.userType)) return;
    const row = this.model.rows.get(run);
    const initial = row ? row.cells[key] : null;
    edit(cell, {
      initial: initial === undefined ? null : initial,
      type: column.kind === "comment" ? "string" : column.userType,
      onCommit: (value) => this.send(run, column, value),
      onCancel: () => this.grid.refreshAll(),
    });
  }

  async send(run, column, value) {
    const where = `${run}:${column.key}`;
    const row = this.model.rows.get(run);
    const edit = { where, row, key: column.key, prev: row ? row.cells[column.key] : undefined };
    if (row) { row.cells[column.key] = value; row.rev += 1; } // shown at once, marked pending
    this.grid.marks.set(where, "pending");
    this.grid.refreshAll();
    try {
      const answer = column.kind === "comment"
        ? await post(paths.comment(this.proposal, run), { text: value })
        : await post(paths.value(this.proposal, run, column.key), { value: value === "" && column.userType !== "string" ? null : value });
      this.pending.set(answer.command, edit);
      const early = this.early.get(answer.command);
      if (early) { this.early.delete(answer.command); this.answer(early); }
    } catch (err) {
      this.refused(edit, err.message);
    }
    this.grid.touch();
  }

  refused(edit, message) {
    if (edit.row) {
      if (edit.prev === undefined) delete edit.row.cells[edit.key];
      else edit.row.cells[edit.key] = edit.prev;
      edit.row.rev += 1;
    }
    this.grid.marks.set(edit.where, "rejected");
    toast(`refused: ${message}`, "error");
    setTimeout(() => { this.grid.marks.delete(edit.where); this.grid.touch(); }, 5000);
  }

  renderColumnMenu() {
    const box = clear($("columns").querySelector(".menu-body"));
    const all = el("div", {}, [
      el("button", { type: "button", text: "show all", onclick: () => this.setAllColumns(false) }),
      " ",
      el("button", { type: "button", text: "hide all", onclick: () => this.setAllColumns(true) }),
    ]);
    box.append(all);
    let group = null;
    for (const c of this.model.columns) {
      if (c.kind === "sel" || c.kind === "run") continue;
      if (c.group !== group && c.group) box.append(el("div", { class: "group", text: c.group }));
      group = c.group;
      const box_ = el("input", { type: "checkbox", dataset: { key: c.key } });
      box_.checked = !this.model.hidden.has(c.key);
      box_.addEventListener("change", () => { this.model.setHidden(c.key, !box_.checked); this.grid.headVersion = -1; this.grid.touch(); });
      box.append(el("label", {}, [box_, ` ${c.group ? c.leaf : c.title}`]));
    }
  }

  setAllColumns(hidden) {
    for (const c of this.model.columns) if (c.kind !== "sel" && c.kind !== "run") this.model.setHidden(c.key, hidden);
    this.renderColumnMenu();
    this.grid.headVersion = -1;
    this.grid.touch();
  }

  addVariable() {
    const dialog = $("addvar-dialog");
    const form = dialog.querySelector("form");
    form.reset();
    dialog.querySelector(".dialog-error").textContent = "";
    const submit = async (event) => {
      if (event.submitter && event.submitter.value === "cancel") return;
      event.preventDefault();
      const data = new FormData(form);
      try {
        await post(paths.userVariables(this.proposal), {
          title: data.get("title"), type: data.get("type"), description: data.get("description") || null,
        });
        dialog.close();
        toast("user variable added", "ok", 3000);
      } catch (err) {
        dialog.querySelector(".dialog-error").textContent = err.message;
      }
    };
    form.addEventListener("submit", submit, { signal: this.abort.signal });
    dialog.addEventListener("close", () => form.removeEventListener("submit", submit), { once: true });
    dialog.showModal();
  }

  stop() {
    this.abort.abort();
    this.live.stop();
    this.detail.close();
    clearTimeout(this.viewTimer);
    this.reprocessing.stop();
  }
}
