// CSV export of what the table shows: shown columns, filtered and sorted rows.

import { csvValue, formatTime } from "./format.js";
import { statusOf } from "./model.js";

function quote(text, isString) {
  let t = text;
  // a spreadsheet would run a text starting with = + - @ as a formula
  if (isString && /^[=+\-@\t\r]/.test(t)) t = `'${t}`;
  return /[",\n\r]/.test(t) ? `"${t.replaceAll('"', '""')}"` : t;
}

export function toCsv(model, rows) {
  const cols = model.visibleColumns().filter((c) => c.kind !== "sel");
  const lines = [cols.map((c) => quote(c.units ? `${c.title} [${c.units}]` : c.title, true)).join(",")];
  for (const row of rows) {
    lines.push(cols.map((c) => {
      if (c.kind === "run") return String(row.run);
      if (c.kind === "time") return formatTime(row.start);
      if (c.kind === "status") return quote(statusOf(row).text, true);
      const d = row.decor[c.key];
      if (d && d.error) return "";
      const value = row.cells[c.key];
      return quote(csvValue(value), typeof value === "string");
    }).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

export function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
