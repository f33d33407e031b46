// The run table of one proposal in memory: rows, columns, and how each message
// of the updates feed changes them.

import { formatNumber, formatTime, formatValue, numeric, splitTitle } from "./format.js";

const FIXED = [
  { key: "__sel", kind: "sel", title: "", width: 30 },
  { key: "run", kind: "run", title: "Run", width: 64 },
  { key: "__status", kind: "status", title: "Status", width: 150 },
  { key: "start_time", kind: "time", title: "Timestamp", width: 160 },
  { key: "comment", kind: "comment", title: "Comment", width: 220 },
];

const PASS = {
  queued: "queued", waiting: "waiting", running: "running", variable_done: "running",
  variable_failed: "running", finished: "done", failed: "failed",
};

function newRow(run) {
  return { run, start: null, added: null, cells: Object.create(null), decor: Object.create(null), proc: null, job: null, rev: 0, v: 0 };
}

// What a ValueView of the feed becomes in the cell encoding of the table.
function cellOf(view) {
  if (view.error !== null && view.error !== undefined) return null;
  if (view.cleared) return undefined;
  const s = view.summary;
  if ((s === null || s === undefined) && ["thumbnail", "trendline", "numpy"].includes(view.summary_type)) {
    return { $b: view.summary_type };
  }
  if (view.summary_type === "complex" && Array.isArray(s)) return { $c: s };
  if (Array.isArray(s)) return { $c: s };
  return s === undefined ? null : s;
}

export class Model {
  constructor(proposal) {
    this.proposal = proposal;
    this.variables = new Map();
    this.rows = new Map();
    this.columns = [];
    this.hidden = new Set(JSON.parse(localStorage.getItem(this.hiddenKey()) || "[]"));
    this.colsVersion = 0;
  }

  hiddenKey() {
    return `runstream.hidden.${this.proposal}`;
  }

  load(snapshot) {
    this.rows = new Map();
    this.merge(snapshot);
  }

  // Add a snapshot's runs (the table comes in two parts: the newest runs first).
  merge(snapshot) {
    this.variables = new Map(snapshot.variables.map((v) => [v.name, v]));
    for (const [run, start, added, cells] of snapshot.runs) {
      const row = this.ensureRow(run);
      row.start = start;
      row.added = added;
      Object.assign(row.cells, cells);
      row.rev += 1;
    }
    for (const [run, name, error, errorCls, bold, bg, units] of snapshot.decor) {
      const row = this.rows.get(run);
      if (row) row.decor[name] = { error, error_cls: errorCls, bold, bg, units };
    }
    for (const [run, status, trigger, variable, reason, counts, requestId, at] of snapshot.processing) {
      const row = this.rows.get(run);
      if (row) row.proc = { status, trigger, variable, reason, counts, request_id: requestId, at };
    }
    for (const [run, state, backend, jobId, exitStatus, reason, at] of snapshot.jobs) {
      const row = this.rows.get(run);
      if (row) row.job = { state, backend, job_id: jobId, exit_status: exitStatus, reason, at };
    }
    this.rebuildColumns();
  }

  rebuildColumns() {
    const names = new Set(this.variables.keys());
    for (const row of this.rows.values()) {
      for (const name of Object.keys(row.cells)) names.add(name);
      for (const name of Object.keys(row.decor)) names.add(name);
    }
    names.delete("comment");
    names.delete("start_time");
    const vars = [...names].map((name) => {
      const v = this.variables.get(name) || { name, title: name };
      const [group, leaf] = splitTitle(v.title || name);
      const width = Math.min(240, Math.max(90, 20 + 8 * Math.max(leaf.length, (v.units || "").length + 6)));
      return { key: name, kind: "var", title: v.title || name, group, leaf, units: v.units || null,
               userType: v.user_type || null, width, description: v.description || null };
    });
    vars.sort((a, b) => (a.userType ? 1 : 0) - (b.userType ? 1 : 0) || a.title.localeCompare(b.title));
    this.columns = [...FIXED.map((c) => ({ ...c, group: "", leaf: c.title })), ...vars];
    this.colsVersion += 1;
  }

  visibleColumns() {
    return this.columns.filter((c) => !this.hidden.has(c.key));
  }

  setHidden(key, hidden) {
    if (hidden) this.hidden.add(key);
    else this.hidden.delete(key);
    localStorage.setItem(this.hiddenKey(), JSON.stringify([...this.hidden]));
    this.colsVersion += 1;
  }

  ensureRow(run) {
    let row = this.rows.get(run);
    if (!row) {
      row = newRow(run);
      this.rows.set(run, row);
    }
    return row;
  }

  // Apply one message of the updates feed. Returns {runs: [changed runs], columns, structure}.
  apply(u) {
    const out = { runs: [], columns: false, structure: false };
    switch (u.type) {
      case "values_updated": {
        const isNew = !this.rows.has(u.run);
        const row = this.ensureRow(u.run);
        for (const [name, view] of Object.entries(u.values)) {
          if (name === "start_time") {
            row.start = typeof view.summary === "number" ? view.summary : row.start;
            continue;
          }
          const cell = cellOf(view);
          if (cell === undefined) delete row.cells[name];
          else row.cells[name] = cell;
          const variable = this.variables.get(name);
          const units = view.units && (!variable || view.units !== variable.units) ? view.units : null;
          if (view.error || view.bold || view.background || units) {
            row.decor[name] = { error: view.error ?? null, error_cls: view.error_cls ?? null,
                                bold: view.bold ?? null, bg: view.background ?? null, units };
          } else {
            delete row.decor[name];
          }
          if (name !== "comment" && !this.columns.some((c) => c.key === name)) out.columns = true;
        }
        row.rev += 1;
        row.v += 1;
        out.runs.push(u.run);
        out.structure = isNew;
        break;
      }
      case "run_added": {
        const isNew = !this.rows.has(u.run);
        const row = this.ensureRow(u.run);
        row.start = u.start_time ?? row.start;
        row.added = u.added_at ?? row.added;
        row.rev += 1;
        out.runs.push(u.run);
        out.structure = isNew;
        break;
      }
      case "variables_set": {
        for (const v of u.variables) this.variables.set(v.name, { ...v, tags: v.tags || [] });
        out.columns = true;
        break;
      }
      case "processing_state_set": {
        const s = u.state;
        const isNew = !this.rows.has(s.run);
        const row = this.ensureRow(s.run);
        row.proc = { status: s.status, trigger: s.trigger, variable: s.variable, reason: s.reason,
                     counts: s.counts || {}, request_id: s.request_id, at: Date.parse(s.time) / 1000 };
        row.rev += 1;
        out.runs.push(s.run);
        out.structure = isNew;
        break;
      }
      case "job_state_set": {
        const s = u.state;
        const row = this.rows.get(s.run);
        if (row) {
          row.job = { state: s.state, backend: s.backend, job_id: s.job_id, exit_status: s.exit_status,
                      reason: s.reason, at: Date.parse(s.time) / 1000 };
          row.rev += 1;
          out.runs.push(s.run);
        }
        break;
      }
      default:
        break;
    }
    if (out.columns) this.rebuildColumns();
    return out;
  }

  unitsOf(row, column) {
    const d = row.decor[column.key];
    return (d && d.units) || column.units || "";
  }

  // The text a cell shows (for filtering and for non-graphic cells).
  text(row, column) {
    switch (column.kind) {
      case "run": return String(row.run);
      case "time": return formatTime(row.start);
      case "status": return statusOf(row).text;
      case "sel": return "";
      default: {
        const d = row.decor[column.key];
        if (d && d.error) return `${d.error_cls || "Error"}: ${d.error}`;
        const value = row.cells[column.key];
        const text = formatValue(value);
        const units = text && typeof value !== "string" ? this.unitsOf(row, column) : "";
        return units ? `${text} ${units}` : text;
      }
    }
  }

  sortValue(row, column) {
    switch (column.kind) {
      case "run": return row.run;
      case "time": return row.start;
      case "status": return statusOf(row).text;
      default: {
        const d = row.decor[column.key];
        if (d && d.error) return null;
        const value = row.cells[column.key];
        const n = numeric(value);
        if (n !== null) return n;
        return value === null || value === undefined ? null : formatValue(value);
      }
    }
  }

  // The rows to show: filtered by text, sorted by one column.
  view(filter, sort) {
    let rows = [...this.rows.values()];
    const needle = filter.trim().toLowerCase();
    if (needle) {
      const cols = this.visibleColumns().filter((c) => c.kind !== "sel");
      rows = rows.filter((row) => cols.some((c) => this.text(row, c).toLowerCase().includes(needle)));
    }
    const column = sort && this.columns.find((c) => c.key === sort.key);
    if (column) {
      const keyed = rows.map((row) => [this.sortValue(row, column), row]);
      const dir = sort.dir === "desc" ? -1 : 1;
      keyed.sort(([a, ra], [b, rb]) => {
        if (a === null && b === null) return ra.run - rb.run;
        if (a === null) return 1; // nothing last, either way
        if (b === null) return -1;
        if (typeof a === "number" && typeof b === "number") return (a - b) * dir || ra.run - rb.run;
        if (typeof a === "number") return -dir;
        if (typeof b === "number") return dir;
        return String(a).localeCompare(String(b)) * dir || ra.run - rb.run;
      });
      rows = keyed.map(([, row]) => row);
    } else {
      rows.sort((a, b) => b.run - a.run); // newest first: new runs appear at the top
    }
    return rows;
  }
}

// The processing state of a run as one word (and a longer text).
export function statusOf(row) {
  const p = row.proc;
  const j = row.job;
  let s = p ? PASS[p.status] || p.status : "";
  let text = s;
  if (p) {
    if (s === "running" && p.variable) text = `running (${p.variable})`;
    if (s === "done" && p.counts && p.counts.failed) text = `done, ${p.counts.failed} failed`;
    if ((s === "failed" || s === "waiting") && p.reason) text = `${s}: ${p.reason}`;
  }
  if (j) {
    const job = `job${j.job_id ? " " + j.job_id : ""} ${j.state}`;
    const active = ["submitting", "pending", "running"].includes(j.state);
    const bad = !active && j.state !== "completed";
    if (active || bad || !s) text = text ? `${text} · ${job}` : job;
    if (active || bad || !s) s = j.state;
  }
  return { s, text };
}

export { formatNumber };
