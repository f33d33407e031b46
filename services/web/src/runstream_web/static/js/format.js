// How values look: numbers, the store's special encodings, units, errors.
//
// Cell encoding (the store's): numbers, strings, booleans, null as themselves;
// {"$f": "NaN"} non-finite floats, {"$i": "123…"} big integers,
// {"$c": [re, im]} complex numbers, {"$b": "thumbnail" | "trendline" | "numpy"}
// a binary summary kept in the run file.

export function blobType(value) {
  return value !== null && typeof value === "object" && "$b" in value ? value.$b : null;
}

export function formatNumber(x) {
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e15) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return x.toExponential(4).replace(/\.?0+e/, "e");
  return String(Number(x.toPrecision(6)));
}

// The text of a cell value (without units); "" for nothing.
export function formatValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return formatNumber(value);
  if (typeof value === "boolean") return value ? "✓" : "✗";
  if (typeof value === "string") return value;
  if (typeof value === "object") {
    if ("$f" in value) return String(value.$f);
    if ("$i" in value) return String(value.$i);
    if ("$c" in value) {
      const [re, im] = value.$c.map(Number);
      return `${formatNumber(re)}${im < 0 ? "-" : "+"}${formatNumber(Math.abs(im))}j`;
    }
    if ("$b" in value) return value.$b === "thumbnail" ? "<thumbnail>" : value.$b === "trendline" ? "<sparkline>" : "<ndarray>";
  }
  return String(value);
}

// A value as a plain number for sorting and trends (null if not numeric).
export function numeric(value) {
  if (typeof value === "number") return value;
  if (typeof value === "boolean") return value ? 1 : 0;
  if (value && typeof value === "object") {
    if ("$f" in value) return Number(value.$f);
    if ("$i" in value) return Number(value.$i);
  }
  return null;
}

// The raw text of a value for CSV export.
export function csvValue(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "object") {
    if ("$f" in value) return String(value.$f);
    if ("$i" in value) return String(value.$i);
    if ("$c" in value) return `(${value.$c[0]}${value.$c[1] < 0 ? "" : "+"}${value.$c[1]}j)`;
    return formatValue(value);
  }
  return String(value);
}

export function formatTime(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return "";
  const d = new Date(epochSeconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// "XGM/Intensity" -> ["XGM", "Intensity"]; "Trains" -> ["", "Trains"].
export function splitTitle(title) {
  const i = title.indexOf("/");
  if (i <= 0 || i === title.length - 1) return ["", title];
  return [title.slice(0, i).trim(), title.slice(i + 1).trim()];
}
