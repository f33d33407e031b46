// A virtualised grid: only the rows in sight (and a few around) exist in the
// page, recycled while scrolling, so 10,000 runs scroll like 40. Every value
// goes in as text or as an image URL, never as markup.

import { paths } from "./api.js";
import { blobType, formatValue } from "./format.js";
import { el } from "./dom.js";
import { statusOf } from "./model.js";

const OVERSCAN = 8;

export class Grid {
  constructor(root, model, handlers) {
    this.root = root;
    this.head = root.querySelector(".head");
    this.body = root.querySelector(".body");
    this.model = model;
    this.handlers = handlers;
    this.rows = [];
    this.pool = [];
    this.selected = new Set();
    this.marks = new Map(); // "run:key" -> "pending" | "rejected"
    this.active = null; // [run, key]
    this.sort = null;
    this.canWrite = false;
    this.headVersion = -1;
    this.frame = 0;
    this.measure();
    root.addEventListener("scroll", () => this.schedule(), { passive: true });
    window.addEventListener("resize", () => this.schedule());
    this.body.addEventListener("click", (e) => this.onClick(e));
    this.body.addEventListener("dblclick", (e) => this.onDouble(e));
    this.head.addEventListener("click", (e) => {
      const cell = e.target.closest(".leaves > div");
      if (cell && cell.dataset.key && cell.dataset.key !== "__sel") handlers.onSort(cell.dataset.key);
    });
  }

  // The row height comes from the style sheet (--row-h): read again when it changes.
  measure() {
    this.rowH = parseFloat(getComputedStyle(document.body).getPropertyValue("--row-h")) || 30;
  }

  setRows(rows) {
    this.rows = rows;
    this.body.style.height = `${rows.length * this.rowH}px`;
    for (const slot of this.pool) slot.row = null; // positions changed
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  // Rows whose content changed: redrawn at the next frame if in sight.
  touch() {
    this.schedule();
  }

  // Redraw every row in sight (after an editor went away).
  refreshAll() {
    for (const slot of this.pool) slot.rev = -1;
    this.schedule();
  }

  columns() {
    return this.model.visibleColumns();
  }

  renderHeader() {
    const cols = this.columns();
    this.root.style.setProperty("--cols", cols.map((c) => `${c.width}px`).join(" "));
    this.root.style.setProperty("--grid-w", `${cols.reduce((sum, c) => sum + c.width, 0)}px`);
    const groups = el("div", { class: "hrow groups" });
    for (let i = 0; i < cols.length;) {
      let j = i + 1;
      while (cols[i].group && j < cols.length && cols[j].group === cols[i].group) j += 1;
      const cell = el("div", { text: cols[i].group, title: cols[i].group || null });
      if (j - i > 1) cell.style.gridColumn = `span ${j - i}`;
      groups.append(cell);
      i = j;
    }
    const leaves = el("div", { class: "hrow leaves" });
    for (const c of cols) {
      const cell = el("div", { dataset: { key: c.key }, title: c.description ? `${c.title}\n${c.description}` : c.title });
      cell.append(c.leaf);
      if (c.units) cell.append(el("span", { class: "units", text: `[${c.units}]` }));
      const sort = this.sort || { key: "run", dir: "desc" };
      if (sort.key === c.key) cell.dataset.sort = sort.dir;
      leaves.append(cell);
    }
    this.head.replaceChildren(groups, leaves);
    this.headVersion = this.model.colsVersion;
  }

  render() {
    if (this.headVersion !== this.model.colsVersion) this.renderHeader();
    const top = this.root.scrollTop;
    const height = this.root.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / this.rowH) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / this.rowH) + OVERSCAN);
    if (this.pool.length < last - first) this.grow(last - first);
    // Row i always goes to slot i % n: scrolling by a row refills one slot, not all.
    const n = this.pool.length;
    const shown = new Uint8Array(n);
    const cols = this.columns();
    for (let index = first; index < last; index += 1) {
      const k = index % n;
      shown[k] = 1;
      this.place(this.pool[k], this.rows[index], index, cols);
    }
    for (let k = 0; k < n; k += 1) {
      const slot = this.pool[k];
      if (!shown[k] && slot.node.style.display !== "none") {
        slot.node.style.display = "none";
        slot.row = null;
      }
    }
    if (this.handlers.onRendered) this.handlers.onRendered();
  }

  grow(count) {
    for (const slot of this.pool) slot.row = null; // the row-to-slot mapping changes
    while (this.pool.length < count + 4) {
      const node = el("div", { class: "row" });
      this.body.append(node);
      this.pool.push({ node, row: null, rev: -1, cv: -1, y: -1, stamp: "" });
    }
  }

  place(slot, row, index, cols) {
    const y = index * this.rowH;
    if (slot.y !== y || slot.node.style.display === "none") {
      slot.node.style.display = "";
      slot.node.style.transform = `translateY(${y}px)`;
      slot.y = y;
    }
    if (Number(slot.node.dataset.run) === row.run && slot.node.querySelector(".editor")) {
      slot.row = row; // being edited: left alone until the editor closes
      return;
    }
    const stamp = this.stampOf(row);
    if (slot.row !== row || slot.rev !== row.rev || slot.cv !== this.model.colsVersion || slot.stamp !== stamp) {
      this.fill(slot.node, row, cols, slot.cv !== this.model.colsVersion);
      slot.row = row;
      slot.rev = row.rev;
      slot.cv = this.model.colsVersion;
      slot.stamp = stamp;
    }
  }

  // What else decides a row's look: selection, edit marks, the active cell, write access.
  stampOf(row) {
    let stamp = this.selected.has(row.run) ? "s" : "";
    if (this.canWrite) stamp += "w";
    if (this.active && this.active[0] === row.run) stamp += `a${this.active[1]}`;
    if (this.marks.size) {
      for (const [key, mark] of this.marks) if (key.startsWith(`${row.run}:`)) stamp += `${key}${mark}`;
    }
    return stamp;
  }

  fill(node, row, cols, rebuild) {
    if (rebuild || node.childElementCount !== cols.length) {
      node.replaceChildren(...cols.map((c) => el("div", { dataset: { key: c.key } })));
    }
    node.dataset.run = String(row.run);
    node.classList.toggle("selected", this.selected.has(row.run));
    const cells = node.children;
    for (let i = 0; i < cols.length; i += 1) this.fillCell(cells[i], row, cols[i]);
  }

  fillCell(cell, row, col) {
    cell.className = "";
    cell.removeAttribute("style");
    cell.removeAttribute("title");
    const mark = this.marks.get(`${row.run}:${col.key}`);
    if (mark) cell.classList.add(mark);
    if (this.active && this.active[0] === row.run && this.active[1] === col.key) cell.classList.add("active");
    switch (col.kind) {
      case "sel": {
        cell.className += " sel";
        const box = el("input", { type: "checkbox", "aria-label": `select run ${row.run}` });
        box.checked = this.selected.has(row.run);
        cell.replaceChildren(box);
        return;
      }
      case "run":
        cell.classList.add("run", "num");
        cell.textContent = String(row.run);
        return;
      case "status": {
        const { s, text } = statusOf(row);
        cell.replaceChildren(text ? el("span", { class: "st", dataset: { s }, text }) : "");
        if (text) cell.title = text;
        return;
      }
      case "time":
        cell.textContent = this.model.text(row, col);
        return;
      default:
        this.fillValue(cell, row, col);
    }
  }

  fillValue(cell, row, col) {
    const editable = this.canWrite && (col.kind === "comment" || col.userType);
    if (editable) cell.classList.add("editable");
    const decor = row.decor[col.key];
    if (decor && decor.error) {
      cell.classList.add("err");
      cell.replaceChildren(el("span", { class: "cls", text: decor.error_cls || "Error" }), decor.error);
      cell.title = `${decor.error_cls || "Error"}: ${decor.error}`;
      return;
    }
    const value = row.cells[col.key];
    const blob = blobType(value);
    if (blob === "thumbnail" || blob === "trendline") {
      cell.classList.add("thumb");
      const img = el("img", { alt: blob, loading: "lazy", decoding: "async",
                              src: paths.summary(this.model.proposal, row.run, col.key, row.v) });
      cell.replaceChildren(img);
      return;
    }
    const text = formatValue(value);
    const numericLike = typeof value === "number" || (value && typeof value === "object");
    if (numericLike) cell.classList.add("num");
    if (decor && decor.bold) cell.classList.add("bold");
    if (decor && decor.bg) cell.style.background = `rgb(${decor.bg.map(Number).join(",")})`;
    const units = text && typeof value !== "string" ? this.model.unitsOf(row, col) : "";
    cell.replaceChildren(text);
    if (units) cell.append(el("span", { class: "units", text: ` ${units}` }));
    if (text.length > 12) cell.title = text;
  }

  cellAt(target) {
    const cell = target.closest(".row > div");
    if (!cell) return null;
    const run = Number(cell.parentElement.dataset.run);
    return { cell, run, key: cell.dataset.key };
  }

  onClick(event) {
    const hit = this.cellAt(event.target);
    if (!hit) return;
    if (hit.key === "__sel") {
      if (event.target.tagName === "INPUT") this.handlers.onSelect(hit.run, event.target.checked, event.shiftKey);
      return;
    }
    this.handlers.onCellClick(hit.run, hit.key, hit.cell, event);
  }

  onDouble(event) {
    const hit = this.cellAt(event.target);
    if (hit && hit.key !== "__sel") this.handlers.onCellEdit(hit.run, hit.key, hit.cell);
  }

  // The page element of a cell, if it is in sight.
  cellNode(run, key) {
    for (const slot of this.pool) {
      if (slot.row && slot.row.run === run) return slot.node.querySelector(`:scope > div[data-key="${CSS.escape(key)}"]`);
    }
    return null;
  }

  scrollToRun(run) {
    const index = this.rows.findIndex((r) => r.run === run);
    if (index >= 0) this.root.scrollTop = Math.max(0, index * this.rowH - this.root.clientHeight / 2);
  }
}
