// The page of `fapm serve`: upload parts to POST /predict?heatmap=1, show the calibrated overlay,
// the last parts with a running NG count, and the held-out normal scores with the threshold
// (GET /model). No network beyond this service; a token, if the service needs one, is read from
// the address's fragment: http://host:port/#token=...
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const recent = [];
let model = null;
let total = 0, ng = 0;

function $(id) { return document.getElementById(id); }

function showError(text) { $("error").textContent = text || ""; }

async function loadModel() {
  const answer = await fetch("model", {headers});
  const body = await answer.json();
  if (!answer.ok) { showError(body.error); return; }
  model = body;
  $("model-id").textContent = body.id;
  $("model-name").textContent = "(" + body.name + ")";
  drawHistogram();
}

function drawHistogram() {
  const svg = $("histogram"), width = 640, height = 180, pad = 24;
  const normal = model ? model.normal_scores : [];
  const threshold = model && model.thresholds ? model.thresholds.image_threshold : null;
  const values = normal.concat(recent.map(r => r.raw_score), threshold === null ? [] : [threshold]);
  svg.innerHTML = "";
  if (!values.length) { return; }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { hi = lo + 1; }
  const x = v => pad + (v - lo) / (hi - lo) * (width - 2 * pad);
  const bins = 30, counts = new Array(bins).fill(0);
  for (const v of normal) { counts[Math.min(bins - 1, Math.floor((v - lo) / (hi - lo) * bins))] += 1; }
  const top = Math.max(1, ...counts), barWidth = (width - 2 * pad) / bins;
  const ns = "http://www.w3.org/2000/svg";
  const add = (name, attrs) => {
    const node = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) { node.setAttribute(k, v); }
    svg.appendChild(node);
    return node;
  };
  counts.forEach((c, i) => {
    const h = c / top * (height - 2 * pad);
    add("rect", {x: pad + i * barWidth, y: height - pad - h, width: Math.max(1, barWidth - 1), height: h,
                 fill: "#8ab", class: "bar"});
  });
  if (threshold !== null) {
    add("line", {x1: x(threshold), x2: x(threshold), y1: pad / 2, y2: height - pad, stroke: "#c22",
                 "stroke-width": 2, class: "threshold"});
    add("text", {x: x(threshold) + 3, y: pad, fill: "#c22", "font-size": 11}).textContent =
      "threshold " + threshold.toFixed(2);
  }
  for (const r of recent) {
    add("line", {x1: x(r.raw_score), x2: x(r.raw_score), y1: height - pad, y2: height - pad + 8,
                 stroke: r.decision === "NG" ? "#c22" : "#2a2", "stroke-width": 2, class: "tick"});
  }
  add("text", {x: pad, y: height - 4, "font-size": 11, fill: "#555"}).textContent = lo.toFixed(1);
  add("text", {x: width - pad - 30, y: height - 4, "font-size": 11, fill: "#555"}).textContent = hi.toFixed(1);
}

function showPart(name, body) {
  $("current").hidden = false;
  $("part-name").textContent = name;
  const badge = $("decision");
  badge.textContent = body.decision;
  badge.className = "badge " + body.decision;
  const score = body.score === null ? "" : "score " + body.score.toFixed(3) + ", ";
  $("numbers").textContent = score + "raw " + body.raw_score.toFixed(3) + ", pixels above threshold " +
    (body.ng_pixel_share === null ? "-" : (100 * body.ng_pixel_share).toFixed(2) + " %") + ", " +
    body.ms.toFixed(1) + " ms, model " + body.model.id;
  $("overlay").src = body.heatmap;
  total += 1;
  if (body.decision === "NG") { ng += 1; }
  $("ng-count").textContent = ng;
  $("total-count").textContent = total;
  recent.unshift({name, ...body});
  recent.splice(50);
  const row = document.createElement("tr");
  const cells = [name, body.decision, body.score === null ? "" : body.score.toFixed(3),
                 body.raw_score.toFixed(3), body.ms.toFixed(1), body.model.id];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 1) { td.className = body.decision; }
    row.appendChild(td);
  });
  const tbody = $("recent").querySelector("tbody");
  tbody.insertBefore(row, tbody.firstChild);
  while (tbody.rows.length > 20) { tbody.deleteRow(-1); }
  drawHistogram();
}

async function score(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const answer = await fetch("predict?heatmap=1", {method: "POST", body: form, headers});
  const body = await answer.json();
  if (!answer.ok) { showError(file.name + ": " + body.error); return; }
  showError("");
  showPart(file.name, body);
}

async function scoreAll(files) {
  for (const file of files) {
    try { await score(file); } catch (e) { showError(file.name + ": " + e); }
  }
}

$("file").addEventListener("change", e => { scoreAll([...e.target.files]); e.target.value = ""; });
const drop = $("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => {
  e.preventDefault();
  drop.classList.remove("over");
  scoreAll([...e.dataTransfer.files]);
});
loadModel().catch(e => showError("GET /model: " + e));
