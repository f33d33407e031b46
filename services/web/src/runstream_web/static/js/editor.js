// Editing a comment or a user variable in place: Enter or leaving the cell
// saves, Escape cancels. The service checks the value; a refusal comes back
// as an error message.

import { el } from "./dom.js";

export function edit(cell, { initial, type, onCommit, onCancel }) {
  let input;
  if (type === "boolean") {
    input = el("select", { class: "editor", "aria-label": "new value" }, [
      el("option", { value: "", text: "" }),
      el("option", { value: "true", text: "true" }),
      el("option", { value: "false", text: "false" }),
    ]);
    input.value = initial === true ? "true" : initial === false ? "false" : "";
  } else {
    input = el("input", { class: "editor", type: "text", "aria-label": "new value", spellcheck: "false" });
    input.value = initial ?? "";
  }
  let done = false;
  const finish = (commit) => {
    if (done) return;
    done = true;
    const value = input.value;
    input.remove();
    if (commit && value !== String(initial ?? "")) onCommit(value);
    else onCancel();
  };
  input.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Enter") finish(true);
    else if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  if (type === "boolean") input.addEventListener("change", () => finish(true));
  cell.replaceChildren(input);
  input.focus();
  if (input.select) input.select();
  return input;
}
