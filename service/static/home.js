// The home page's playground (service/home.py): a CSV of one sequence becomes the body of
// POST /v1/models/NAME/versions/V/inspect, and the answer becomes Plotly charts. The script checks nothing itself:
// the CSV is sent as it was read (numbers as numbers, anything else as it is), so a malformed file is answered with
// the service's own located message, which the page shows with the CSV line it points to.
"use strict";

const DATA = JSON.parse(document.getElementById("playground-data").textContent);
const $ = (id) => document.getElementById(id);
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
// ColorBrewer's RdBu, blue for negative: the colours of the command's picture (matplotlib's RdBu_r).
const DIVERGING = ["#053061", "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d", "#b2182b", "#67001f"]
  .map((c, i) => [i / 10, c]);
const GATES = {
  input: "input gate i (1: write the candidate)",
  forget: "forget gate f (1: keep the cell state)",
  cell: "candidate cell g",
  output: "output gate o (1: expose the cell)",
  reset: "reset gate r (0: ignore the previous state)",
  update: "update gate z (1: keep the previous state)",
  new: "new gate n (candidate state)",
};
const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
const BASE = {
  paper_bgcolor: "#fff", plot_bgcolor: "#fff", margin: { l: 55, r: 20, t: 34, b: 40 },
  font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 11, color: "#1f2933" },
};
let answerUrl = null;

const selected = () => DATA.versions[Number($("model").value)];
const color = (c) => PALETTE[c % PALETTE.length];
const title = (text) => ({ text, x: 0.01, xanchor: "left", font: { size: 13 } });

// ------------------------------------------------------------------------------------------- CSV -> request body

function value(text) {
  if (text === undefined || text === "") return null;
  return NUMBER.test(text) ? Number(text) : text;
}

// {body, lines}: lines[t] is the CSV line of timestep t. A header (a first line without numbers) picks the
// model's feature columns by name; one that lacks some is sent as objects keyed by it, and the service says which.
function parseCsv(text, features) {
  const rows = text.split(/\r?\n/)
    .map((line, i) => ({ line: i + 1, cells: line.split(",").map((c) => c.trim()) }))
    .filter((row) => row.cells.some((c) => c !== ""));
  const header = rows.length && rows[0].cells.every((c) => !NUMBER.test(c)) ? rows.shift().cells : null;
  let sequence;
  if (!header) {
    sequence = rows.map((row) => row.cells.map(value));
  } else if (features.every((f) => header.includes(f))) {
    const at = features.map((f) => header.indexOf(f));
    sequence = rows.map((row) => at.map((i) => value(row.cells[i])));
  } else {
    sequence = rows.map((row) => Object.fromEntries(header.map((h, i) => [h, value(row.cells[i])])));
  }
  return { body: { sequence }, lines: rows.map((row) => row.line) };
}

// ---------------------------------------------------------------------------------------------------- requests

async function inspect() {
  const version = selected();
  const { body, lines } = parseCsv($("csv").value, version.features);
  const url = `/v1/models/${encodeURIComponent(version.name)}/versions/${version.version}/inspect`;
  const started = performance.now();
  busy(true, "inspecting…");
  try {
    const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      showError(answer?.error?.message ?? `${response.status} ${response.statusText}`, lines);
      busy(false, "");
      return;
    }
    show(answer, url, body);
    busy(false, `${answer.timesteps} timesteps in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  } catch (err) {
    showError(`the request failed: ${err.message}`, lines);
    busy(false, "");
  }
}

function busy(on, text) {
  $("run").disabled = on;
  $("status").textContent = text;
}

function showError(message, lines) {
  const box = $("error");
  box.replaceChildren();
  const code = document.createElement("code");
  code.textContent = message;
  box.append("The service refused this sequence: ", code);
  const located = [...new Set([...message.matchAll(/sequence\[(\d+)\]/g)].map((m) => Number(m[1])))];
  const where = located.filter((t) => lines[t] !== undefined).map((t) => `sequence[${t}] is line ${lines[t]} of the CSV`);
  if (where.length) box.append(`\n(${where.join("; ")})`);
  box.hidden = false;
  $("results").hidden = true;
}

// ------------------------------------------------------------------------------------------------------ charts

function segments(labels) {
  const runs = [];
  labels.forEach((label, t) => {
    const last = runs[runs.length - 1];
    if (last && last.label === label) last.end = t;
    else runs.push({ label, start: t, end: t });
  });
  return runs;
}

function show(answer, url, body) {
  $("error").hidden = true;
  $("results").hidden = false;
  summary(answer);
  drawProbabilities(answer);
  const pick = $("layer");
  pick.replaceChildren(...answer.layers.map((entry, i) => new Option(`${entry.layer} ${entry.direction}`, i)));
  $("layer-pick").hidden = answer.layers.length < 2;
  drawGates(answer, 0);
  pick.onchange = () => drawGates(answer, Number(pick.value));
  drawMemory(answer);
  drawHorizon(answer);
  curl(url, body, answer);
}

// A chip of alternating plain and bold parts (text only: class names come from the manifest).
function chip(...parts) {
  const span = document.createElement("span");
  span.className = "chip";
  parts.forEach((part, i) => {
    if (i % 2 === 0) return span.append(String(part));
    const bold = document.createElement("b");
    bold.textContent = part;
    span.append(bold);
  });
  return span;
}

function summary(a) {
  const runs = segments(a.labels);
  const listed = runs.slice(0, 6).map((r) => `${r.label} t${r.start}${r.end > r.start ? `–${r.end}` : ""}`).join(" → ");
  const more = runs.length > 6 ? ` → … (${runs.length - 6} more)` : "";
  const mean = a.horizon.reduce((s, h) => s + h, 0) / a.horizon.length;
  $("summary").replaceChildren(
    chip("", a.timesteps, " timesteps"),
    chip(`${a.bidirectional ? "bidirectional " : ""}${a.cell.toUpperCase()}, ${a.head.replace("_", "-")} head`),
    chip("predicted: ", listed + more),
    chip("horizon: ", mean.toFixed(1), ` steps back on average (max ${Math.max(...a.horizon)})`),
    chip(`numpy vs onnxruntime: max |Δp| ${a.check.max_abs_difference.toExponential(1)}`),
  );
}

function drawProbabilities(a) {
  const t = a.labels.map((_, i) => i);
  const traces = a.classes.map((name, c) => ({
    type: "scatter", mode: "lines", name, x: t, y: a.probabilities.map((p) => p[c]),
    line: { color: color(c), width: 2 }, hovertemplate: "%{y:.3f}",
  }));
  const runs = segments(a.labels);
  const shapes = runs.map((r) => ({
    type: "rect", xref: "x", yref: "paper", x0: r.start - 0.5, x1: r.end + 0.5, y0: 0, y1: 1, layer: "below",
    fillcolor: color(a.classes.indexOf(r.label)), opacity: 0.13, line: { width: 0 },
  }));
  const annotations = runs.filter((r) => r.end - r.start + 1 >= a.timesteps / 12).map((r) => ({
    x: (r.start + r.end) / 2, y: 1.0, xref: "x", yref: "paper", yanchor: "bottom", showarrow: false,
    text: r.label, font: { size: 11, color: color(a.classes.indexOf(r.label)) },
  }));
  const last = a.head === "last" ? " (last head: the answer for the sequence cut after t)" : "";
  Plotly.react("probabilities", traces, {
    ...BASE, height: 300, hovermode: "x unified", shapes, annotations, margin: { ...BASE.margin, t: 48 },
    title: title("predicted class (background) and class probabilities along time"),
    xaxis: { title: { text: `timestep t${last}` }, range: [-0.5, a.timesteps - 0.5], zeroline: false },
    yaxis: { title: { text: "probability" }, range: [-0.02, 1.02] },
    legend: { orientation: "h", x: 1, xanchor: "right", y: 1.2 },
  }, CONFIG);
}

const transpose = (rows) => rows[0].map((_, j) => rows.map((row) => row[j]));

function percentile99(values) {
  const sorted = values.flat().map(Math.abs).sort((x, y) => x - y);
  return Math.max(sorted[Math.floor(0.99 * (sorted.length - 1))], 1e-6);
}

function drawGates(a, index) {
  const entry = a.layers[index];
  const strips = Object.entries(entry.gates).map(([name, values]) => {
    const bounded = name === "cell" || name === "new";
    return { name, label: GATES[name], values, colors: bounded ? DIVERGING : "Viridis", min: bounded ? -1 : 0, max: 1 };
  });
  if (entry.cell_state) {
    const scale = percentile99(entry.cell_state);
    strips.push({ name: "cell_state", label: "cell state c (colours clipped at the 99th percentile)", values: entry.cell_state, colors: DIVERGING, min: -scale, max: scale });
  }
  strips.push({ name: "hidden", label: "hidden state h", values: entry.hidden, colors: DIVERGING, min: -1, max: 1 });
  const grid = $("gates");
  [...grid.children].forEach((div) => Plotly.purge(div));
  grid.replaceChildren();
  for (const strip of strips) {
    const ticks = [strip.min, (strip.min + strip.max) / 2, strip.max];
    const div = document.createElement("div");
    div.className = "plot gate";
    div.dataset.name = strip.name;
    grid.append(div);
    Plotly.newPlot(div, [{
      type: "heatmap", z: transpose(strip.values), colorscale: strip.colors, zmin: strip.min, zmax: strip.max,
      hovertemplate: `t=%{x}, unit %{y}<br>${strip.name}: %{z:.3f}<extra></extra>`, colorbar: { thickness: 10, len: 0.9, tickvals: ticks, ticktext: ticks.map((v) => String(Number(v.toPrecision(2)))) },
    }], {
      ...BASE, height: 230, margin: { l: 45, r: 60, t: 30, b: 40 }, title: title(`layer ${entry.layer} ${entry.direction}: ${strip.label}`),
      xaxis: { title: { text: "timestep", standoff: 8 } }, yaxis: { title: { text: "unit" } },
    }, CONFIG);
  }
}

function drawMemory(a) {
  const m = a.memory;
  const scale = Math.max(1e-12, m.reduce((top, row) => row.reduce((x, v) => Math.max(x, Math.abs(v)), top), 0));
  // Symmetric log colours: confident predictions move by 1e-4 where uncertain ones move by 0.5; both must show.
  const lin = scale * 1e-3;
  const slog = (v) => Math.sign(v) * Math.log10(1 + Math.abs(v) / lin);
  const ticks = [0];
  for (let k = Math.ceil(Math.log10(lin)); k <= Math.floor(Math.log10(scale)); k++) ticks.push(10 ** k, -(10 ** k));
  ticks.sort((x, y) => x - y);
  const t = a.horizon.map((_, i) => i);
  Plotly.react("memory", [{
    type: "heatmap", z: m.map((row) => row.map(slog)), customdata: m, colorscale: DIVERGING, zmin: -slog(scale), zmax: slog(scale),
    hovertemplate: "output t=%{y}, input t'=%{x}<br>Δp = %{customdata:.2e}<extra></extra>",
    colorbar: { thickness: 10, tickvals: ticks.map(slog), ticktext: ticks.map((v) => (v === 0 ? "0" : v.toExponential(0))), title: { text: "Δp" } },
  }, {
    type: "scatter", mode: "lines", name: "horizon", x: t.map((i) => i - a.horizon[i] + 0.5), y: t, customdata: a.horizon,
    line: { color: "#111", width: 1.2, shape: "vh" }, hovertemplate: "t=%{y}: %{customdata} steps back<extra>horizon</extra>",
  }], {
    ...BASE, height: 520, showlegend: false, margin: { ...BASE.margin, t: 52 },
    title: title("memory: Δp(class predicted at t) when x<sub>t'</sub> is occluded<br><span style='font-size:11px;color:#6b7785'>red: x<sub>t'</sub> supported that class; blue: it argued against it; line: the horizon</span>"),
    xaxis: { title: { text: "input timestep t' (replaced by the training mean)" }, range: [-0.5, a.timesteps - 0.5] },
    yaxis: { title: { text: "output timestep t" }, range: [-0.5, a.timesteps - 0.5] },
  }, CONFIG);
}

function drawHorizon(a) {
  const t = a.horizon.map((_, i) => i);
  const mean = a.horizon.reduce((s, h) => s + h, 0) / a.horizon.length;
  Plotly.react("horizon", [
    { type: "scatter", mode: "lines", name: "horizon", x: t, y: a.horizon, line: { color: "#111", width: 1.5 }, hovertemplate: "t=%{x}: %{y} steps back<extra></extra>" },
    { type: "scatter", mode: "lines", name: "mean", x: [0, a.timesteps - 1], y: [mean, mean], line: { color: "#98a2b3", dash: "dash", width: 1 }, hovertemplate: `mean ${mean.toFixed(1)}<extra></extra>` },
  ], {
    ...BASE, height: 520, showlegend: false, margin: { ...BASE.margin, t: 52 },
    title: title(`horizon: the steps back that hold 90 % of what moved each prediction<br><span style='font-size:11px;color:#6b7785'>mean ${mean.toFixed(1)} steps (dashed)</span>`),
    xaxis: { title: { text: "timestep t" }, range: [-0.5, a.timesteps - 0.5] }, yaxis: { title: { text: "steps back" }, rangemode: "tozero" },
  }, CONFIG);
}

function curl(url, body, answer) {
  const json = JSON.stringify(body).replaceAll("'", "'\\''");
  $("curl").textContent = `curl -s ${location.origin}${url} -H 'Content-Type: application/json' -d '${json}'`;
  if (answerUrl) URL.revokeObjectURL(answerUrl);
  answerUrl = URL.createObjectURL(new Blob([JSON.stringify(answer)], { type: "application/json" }));
  $("download").href = answerUrl;
}

// ------------------------------------------------------------------------------------------------------ inputs

function offerExamples() {
  const features = selected().features;
  const fits = DATA.examples.filter((e) => features.every((f) => e.columns.includes(f)));
  $("example").replaceChildren(new Option(fits.length ? "(pick a bundled recording)" : "(none for this model's features)", ""), ...fits.map((e) => new Option(e.title, e.file)));
}

async function pickExample() {
  const file = $("example").value;
  if (!file) return;
  const response = await fetch(DATA.examples_url + file);
  $("csv").value = await response.text();
  await inspect();
}

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  $("csv").value = await file.text();
  $("example").value = "";
  await inspect();
}

$("inspect-form")?.addEventListener("submit", (event) => { event.preventDefault(); inspect(); });
if (DATA.versions.length) {
  $("model").addEventListener("change", offerExamples);
  $("example").addEventListener("change", pickExample);
  $("file").addEventListener("change", upload);
  $("copy").addEventListener("click", () => navigator.clipboard?.writeText($("curl").textContent));
  offerExamples();
}
