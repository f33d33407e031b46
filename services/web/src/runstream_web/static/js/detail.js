// The full value of one cell: its data plotted (1-D line, 2-D image, plotly
// figure), a scalar as a trend over all runs, and every earlier value with
// the context revision that produced it. plotly.js is served by this service.

import { getJSON, paths } from "./api.js";
import { clear, el } from "./dom.js";
import { formatTime, formatValue, numeric } from "./format.js";

let plotlyLoading = null;

export function loadPlotly() {
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = "/vendor/plotly.min.js";
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => reject(new Error("plotly.js did not load"));
      document.head.append(script);
    });
  }
  return plotlyLoading;
}

const LAYOUT = { margin: { l: 55, r: 15, t: 30, b: 45 }, height: 380, font: { size: 11 } };
const CONFIG = { displaylogo: false, responsive: true };

function short(hash) {
  return hash ? String(hash).slice(0, 10) : "";
}

export class Detail {
  constructor(root, model) {
    this.root = root;
    this.model = model;
    this.current = null;
    this.token = 0;
    root.querySelector(".close").addEventListener("click", () => this.close());
  }

  close() {
    this.root.hidden = true;
    this.current = null;
    if (this.onClose) this.onClose();
  }

  isShowing(run, key) {
    return this.current && this.current[0] === run && this.current[1] === key;
  }

  async show(run, key) {
    this.current = [run, key];
    const token = ++this.token;
    const p = this.model.proposal;
    const column = this.model.columns.find((c) => c.key === key);
    this.root.hidden = false;
    this.root.querySelector("h2").textContent = `${column ? column.title : key} · run ${run}`;
    const meta = clear(this.root.querySelector(".meta"));
    const plot = clear(this.root.querySelector(".plot"));
    const history = clear(this.root.querySelector(".history"));
    let info;
    try {
      info = await getJSON(paths.value(p, run, key));
    } catch (err) {
      if (token === this.token) meta.append(el("p", { text: err.message }));
      return;
    }
    if (token !== this.token) return;
    this.renderMeta(meta, info);
    this.renderHistory(history, info.history);
    const value = info.value || {};
    if (value.error || key === "comment" || info.user_type) return;
    // the stored data if it is an array, a figure or text; else a number's trend over runs
    const plotted = await this.plotData(plot, p, run, key, token, value.units);
    if (!plotted && token === this.token && numeric(value.summary) !== null && typeof value.summary !== "boolean") {
      await this.plotTrend(plot, p, run, key, column, token);
    }
  }

  renderMeta(meta, info) {
    const v = info.value || {};
    const dl = el("dl", { class: "meta" });
    const add = (label, text, cls) => {
      if (text === null || text === undefined || text === "") return;
      dl.append(el("dt", { text: label }), el("dd", { text, class: cls }));
    };
    if (v.error) {
      add("Error", v.error_cls || "Error", "err");
      add("Message", v.error, "err");
    } else {
      add("Value", formatValue(v.summary) + (v.units && typeof v.summary !== "string" ? ` ${v.units}` : ""));
    }
    if (v.cleared) add("Value", "(cleared: the variable returned None)");
    add("Summary", v.summary_type);
    add("Provenance", v.provenance);
    add("Context revision", v.revision ? String(v.revision) : "");
    add("Context hash", short(v.context_hash));
    add("Updated", formatTime(v.at));
    if (info.user_type) add("Editable", `${info.user_type} (user variable)`);
    meta.replaceWith(dl);
    dl.classList.add("meta");
  }

  renderHistory(box, history) {
    if (!history || !history.length) {
      box.append(el("p", { text: "no history" }));
      return;
    }
    const table = el("table", {}, [el("thead", {}, [el("tr", {}, ["Recorded", "Value", "Revision", "Context", "Provenance"].map((h) => el("th", { text: h })))])]);
    const body = el("tbody");
    for (const h of history) {
      const value = h.error ? `${h.error_cls || "Error"}: ${h.error}` : h.cleared ? "(cleared)" : formatValue(h.summary);
      body.append(el("tr", { class: h.superseded ? "superseded" : null, title: h.superseded ? "superseded by a newer context revision" : null }, [
        el("td", { text: formatTime(h.at) }),
        el("td", { text: value }),
        el("td", { text: h.revision ? String(h.revision) : "" }),
        el("td", { text: short(h.context_hash) }),
        el("td", { text: h.provenance || "" }),
      ]));
    }
    table.append(body);
    box.append(table);
  }

  // Plot the stored data; false when there is nothing more to show than the value.
  async plotData(box, p, run, key, token, units) {
    let data;
    try {
      data = await getJSON(paths.plot(p, run, key));
    } catch (err) {
      if (err.status !== 404 && token === this.token) box.append(el("p", { text: `cannot plot: ${err.message}` }));
      return false;
    }
    if (token !== this.token || data.kind === "scalar") return false;
    if (data.kind === "text") {
      box.append(el("pre", { text: data.text }));
      return true;
    }
    if (data.note) box.append(el("p", { class: "note", text: data.note }));
    const area = el("div", { class: "plot-area", dataset: { kind: data.kind } });
    box.append(area);
    const Plotly = await loadPlotly();
    if (token !== this.token) return true;
    const figure = this.figure({ ...data, units: data.units || units });
    if (!figure) {
      area.replaceWith(el("p", { text: `cannot plot ${data.kind}` }));
      return true;
    }
    await Plotly.newPlot(area, figure.traces, figure.layout, CONFIG);
    return true;
  }

  figure(data) {
    let layout = { ...LAYOUT };
    let traces;
    if (data.kind === "line") {
      const x = data.x || data.y.map((_, i) => i * data.step);
      traces = [{ x, y: data.y, type: "scatter", mode: "lines", line: { width: 1.2 } }];
      layout.xaxis = { title: { text: (data.dims && data.dims[0]) || "index" } };
      layout.yaxis = { title: { text: data.units || "" } };
    } else if (data.kind === "image") {
      const axis = (n) => Array.from({ length: n }, (_, i) => i * data.step);
      traces = [{ z: data.z, x: data.x || axis(data.z[0] ? data.z[0].length : 0), y: data.y || axis(data.z.length),
                  type: "heatmap", colorscale: "Viridis" }];
      layout.yaxis = { autorange: "reversed", scaleanchor: "x" };
    } else if (data.kind === "rgb") {
      traces = [{ z: data.z, type: "image" }];
    } else if (data.kind === "plotly") {
      const figure = JSON.parse(data.figure);
      traces = figure.data || [];
      layout = { ...(figure.layout || {}), height: LAYOUT.height };
    } else {
      return null;
    }
    if (data.step > 1) layout.title = { text: `shape ${data.shape.join("×")}, shown decimated ×${data.step}`, font: { size: 11 } };
    return { traces, layout };
  }

  async plotTrend(box, p, run, key, column, token) {
    const data = await getJSON(paths.trend(p, key));
    if (token !== this.token) return;
    const area = el("div", { class: "plot-area", dataset: { kind: "trend" } });
    box.append(el("p", { text: `${column ? column.title : key} over all runs` }), area);
    const Plotly = await loadPlotly();
    if (token !== this.token) return;
    const runs = data.points.map((pt) => pt[0]);
    const values = data.points.map((pt) => pt[2]);
    const here = data.points.filter((pt) => pt[0] === run);
    const traces = [
      { x: runs, y: values, type: "scatter", mode: "lines+markers", name: key, marker: { size: 5 } },
      { x: here.map((pt) => pt[0]), y: here.map((pt) => pt[2]), type: "scatter", mode: "markers", name: `run ${run}`, marker: { size: 11, color: "#d1242f" } },
    ];
    const layout = { ...LAYOUT, showlegend: false, xaxis: { title: { text: "run" } }, yaxis: { title: { text: (column && column.units) || "" } } };
    await Plotly.newPlot(area, traces, layout, CONFIG);
  }
}
