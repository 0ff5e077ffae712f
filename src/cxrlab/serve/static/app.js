// cxrlab serve: the page. It uses the JSON API only (GET /api/model, POST /api/predict), one
// request per film so that one bad film does not stop the others. Every text that comes from a
// file or from the server is set with textContent, never parsed as HTML.
"use strict";

const state = { model: null, rows: [], names: new Set(), sortKey: null, sortDescending: false };
const UNLIKE = "unlike the training films"; // the server's warning, shown once: as the banner
const PARALLEL = 2; // requests in flight at once

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fillList(list, items) {
  list.replaceChildren(...items.map((item) => el("li", item)));
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function sourcesText(model) {
  return model.training_sources || "The training sources are not known (the model is not in a run folder).";
}

async function loadModel() {
  const response = await fetch("/api/model");
  const model = await response.json();
  state.model = model;
  const point = model.operating_point ? "; operating point " + model.operating_point.description : "";
  document.getElementById("model-summary").textContent =
    model.arch + " (" + model.runtime + ", " + model.name + "): " + model.classes.join(", ") +
    "; films " + (model.crop === "lungs" ? "cut to their lung box, " : "") + "resized to " +
    model.image_size + " px (" + model.resize + "); temperature " +
    model.temperature.toFixed(3) + point + ".";
  const limits = model.known_limitations.length
    ? model.known_limitations
    : ["No model card limitations are known for this model (it is not in a run folder)."];
  fillList(document.getElementById("limitations"), limits);
  document.getElementById("sources").textContent = sourcesText(model);
  fillList(document.getElementById("notes"), model.notes);
  document.getElementById("notes-heading").hidden = model.notes.length === 0;
  const toggle = document.getElementById("gradcam");
  if (!model.gradcam.available) {
    toggle.checked = false;
    toggle.disabled = true;
    document.getElementById("gradcam-note").textContent =
      "Grad-CAM unavailable: " + model.gradcam.reason;
  }
  document.getElementById("ood-note").textContent = model.ood.available
    ? "Out-of-distribution check: " + model.ood.method + "."
    : "No check for films unlike the training films: " + model.ood.reason + ".";
  buildHeader();
}

// One name per film in its card, the table and the CSV: the file's own, made unique ("a.png (2)").
function uniqueName(name) {
  let unique = name;
  for (let k = 2; state.names.has(unique); k++) unique = name + " (" + k + ")";
  state.names.add(unique);
  return unique;
}

// The server's "<file name>: <reason>" as the reason alone (the table has the name beside it).
function reason(detail, name) {
  return detail.startsWith(name + ": ") ? detail.slice(name.length + 2) : detail;
}

function columns() {
  const classes = state.model ? state.model.classes : [];
  const point = state.model && state.model.operating_point;
  return [
    { key: "filename", label: "file" },
    { key: "decision", label: "decision" },
    ...(point ? [{ key: "operating_decision", label: "operating point" }] : []),
    ...classes.map((c) => ({ key: "p:" + c, label: "p(" + c + ")", digits: 4 })),
    { key: "ood_score", label: "OOD score", digits: 1 },
    { key: "unlike_training", label: "unlike training" },
    { key: "error", label: "error" },
  ];
}

function cell(row, key) {
  if (key.startsWith("p:")) return row.probabilities ? row.probabilities[key.slice(2)] : null;
  if (key === "ood_score") return row.ood ? row.ood.score : null;
  if (key === "unlike_training") return row.ood ? row.ood.unlike_training : null;
  return row[key] === undefined ? null : row[key];
}

function shown(value, digits) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return value.toFixed(digits === undefined ? 4 : digits);
  return String(value);
}

function buildHeader() {
  const tr = document.querySelector("#table thead tr");
  tr.replaceChildren(
    ...columns().map((column) => {
      const th = el("th", column.label);
      th.dataset.key = column.key;
      th.addEventListener("click", () => sortBy(column.key));
      return th;
    })
  );
}

function sortBy(key) {
  state.sortDescending = state.sortKey === key ? !state.sortDescending : false;
  state.sortKey = key;
  renderTable();
}

function compare(a, b) {
  if (a === b) return 0;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

function renderTable() {
  const batch = document.getElementById("batch");
  batch.hidden = state.rows.length < 2;
  const rows = [...state.rows];
  if (state.sortKey) {
    rows.sort((x, y) => {
      const a = cell(x, state.sortKey);
      const b = cell(y, state.sortKey);
      if (a === null || b === null) return (a === null) - (b === null); // empty cells last
      const order = compare(a, b);
      return state.sortDescending ? -order : order;
    });
  }
  for (const th of document.querySelectorAll("#table th")) {
    th.classList.toggle("sorted", th.dataset.key === state.sortKey);
    th.classList.toggle("descending", th.dataset.key === state.sortKey && state.sortDescending);
  }
  document.querySelector("#table tbody").replaceChildren(
    ...rows.map((row) => {
      const tr = el("tr", null, row.error ? "failed" : row.ood && row.ood.unlike_training ? "unlike" : "");
      for (const column of columns()) tr.append(el("td", shown(cell(row, column.key), column.digits)));
      return tr;
    })
  );
}

function csvField(value) {
  let text = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = "'" + text; // not a formula in a spreadsheet
  return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
}

function downloadCsv() {
  const cols = columns();
  const lines = [cols.map((c) => csvField(c.label)).join(",")];
  for (const row of state.rows) lines.push(cols.map((c) => csvField(cell(row, c.key))).join(","));
  // The byte-order mark makes spreadsheets read the file as UTF-8 (café, not cafÃ©).
  const blob = new Blob(["\ufeff" + lines.join("\r\n") + "\r\n"], { type: "text/csv" });
  const link = el("a");
  link.href = URL.createObjectURL(blob);
  link.download = "cxrlab-predictions.csv";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function newCard(name) {
  const card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".filename").textContent = name;
  document.getElementById("cards").prepend(card);
  return card;
}

function showError(card, message) {
  card.classList.add("error");
  card.querySelector(".status").textContent = message;
}

function showResult(card, result) {
  const model = state.model;
  card.querySelector(".status").hidden = true;
  card.querySelector(".body").hidden = false;
  card.querySelector(".film").src = result.film_png;
  const cam = card.querySelector(".cam");
  if (result.gradcam_png) {
    cam.querySelector(".overlay").src = result.gradcam_png;
    cam.querySelector(".cam-caption").textContent =
      "Grad-CAM of " + result.decision + " (the most probable class): where the film pushed the " +
      "model towards it";
    cam.hidden = !document.getElementById("gradcam").checked;
    card.classList.add("has-overlay");
  }
  const bars = card.querySelector(".bars");
  for (const name of model.classes) {
    const p = result.probabilities[name];
    const row = el("div", null, "bar-row" + (name === result.decision ? " chosen" : ""));
    row.append(el("span", name, "bar-label"));
    const track = el("span", null, "bar-track");
    const fill = el("span", null, "bar-fill");
    fill.style.width = percent(p);
    track.append(fill);
    row.append(track, el("span", percent(p), "bar-value"));
    bars.append(row);
  }
  card.querySelector(".decision").textContent =
    "Most probable: " + result.decision + " (" + percent(result.probabilities[result.decision]) + ")";
  card.querySelector(".operating").textContent = result.operating_decision
    ? "Operating point (" + model.operating_point.label + " at p ≥ " +
      model.operating_point.threshold.toFixed(3) + "): " + result.operating_decision
    : "";
  const warning = card.querySelector(".ood-warning");
  const unlike = result.warnings.find((w) => w.startsWith(UNLIKE));
  if (result.ood && result.ood.unlike_training) {
    warning.hidden = false;
    warning.textContent = unlike
      ? "Unlike the training films" + unlike.slice(UNLIKE.length)
      : "Unlike the training films: this answer may not apply to this image.";
    card.classList.add("unlike");
  }
  card.querySelector(".ood").textContent = result.ood
    ? "OOD score " + result.ood.score.toFixed(1) + " (threshold " + result.ood.threshold.toFixed(1) + ")"
    : "No out-of-distribution check for this model.";
  fillList(card.querySelector(".warnings"), result.warnings.filter((w) => w !== unlike));
  card.querySelector(".card-sources").textContent = sourcesText(model);
  fillList(card.querySelector(".card-limits ul"), model.known_limitations);
}

async function predictOne(file) {
  const name = uniqueName(file.name);
  const card = newCard(name);
  const limit = state.model.max_upload_mb * 1e6;
  if (file.size > limit) {
    const message = "over the upload limit of " + state.model.max_upload_mb + " MB";
    showError(card, name + ": " + message);
    state.rows.push({ filename: name, error: message });
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const wanted = state.model.gradcam.available && document.getElementById("gradcam").checked;
  let row;
  try {
    const response = await fetch("/api/predict?gradcam=" + wanted, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: file.name + ": HTTP " + response.status }));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      showError(card, detail);
      row = { filename: name, error: reason(detail, file.name) };
    } else {
      const result = body.results[0];
      showResult(card, result);
      row = { ...result, filename: name, error: null };
    }
  } catch (error) {
    const message = "the server did not answer (" + error.message + ")";
    showError(card, name + ": " + message);
    row = { filename: name, error: message };
  }
  delete row.film_png;
  delete row.gradcam_png;
  state.rows.push(row);
}

async function predictAll(files) {
  if (!state.model) return;
  const queue = [...files];
  const worker = async () => {
    while (queue.length) {
      await predictOne(queue.shift());
      renderTable();
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, queue.length) }, worker));
  renderTable();
}

function setUp() {
  const input = document.getElementById("files");
  input.addEventListener("change", () => {
    predictAll(input.files);
    input.value = "";
  });
  const drop = document.getElementById("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const kind of ["dragleave", "drop"]) {
    drop.addEventListener(kind, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    predictAll(event.dataTransfer.files);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") input.click();
  });
  document.getElementById("gradcam").addEventListener("change", (event) => {
    // Shown or hidden on the films answered so far; asked for (or not) with the next ones.
    for (const card of document.querySelectorAll(".card.has-overlay")) {
      card.querySelector(".cam").hidden = !event.target.checked;
    }
  });
  document.getElementById("csv").addEventListener("click", downloadCsv);
  loadModel().catch((error) => {
    document.getElementById("model-summary").textContent =
      "Could not load the model description: " + error.message;
  });
}

document.addEventListener("DOMContentLoaded", setUp);
