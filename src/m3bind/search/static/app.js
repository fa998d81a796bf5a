// The search page: text or study queries against the m3bind search API, results grouped by modality.
// Plain DOM code with no dependencies, so the page works offline. Every value from the server is
// put in the page as text (textContent), never as HTML.
"use strict";

const state = { modalities: [], token: sessionStorage.getItem("m3bind-token") || "", thumbnails: [] };
const $ = (id) => document.getElementById(id);

// Guesses only fill the modality when the user left it on "from the file type".
const MODALITY_BY_SUFFIX = [[".nii.gz", "ct"], [".nii", "ct"], [".dcm", "xray"], [".png", "retina"],
  [".jpg", "pathology"], [".jpeg", "pathology"], [".tif", "pathology"], [".tiff", "pathology"], [".zip", "ct"]];

function show(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) { /* not JSON: keep the status text */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response;
}

function checkedModalities() {
  const boxes = [...document.querySelectorAll("#modalities input")];
  const checked = boxes.filter((box) => box.checked).map((box) => box.value);
  return checked.length === boxes.length ? null : checked;
}

// A bound space keeps a modality gap: one top-k over all modalities can be all of one of them.
function perModality() {
  return $("per-modality").checked;
}

function resultsWanted() {
  return Math.max(1, parseInt($("k").value, 10) || 10);
}

async function searchText(text) {
  show(`Searching for “${text}”…`);
  const body = { text, k: resultsWanted(), modalities: checkedModalities(), per_modality: perModality() };
  const response = await api("/api/search/text", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  render(await response.json(), `Studies matching “${text}”`);
}

async function searchFile(file) {
  let modality = $("upload-modality").value;
  if (!modality) {
    const name = file.name.toLowerCase();
    const guess = MODALITY_BY_SUFFIX.find(([suffix]) => name.endsWith(suffix));
    modality = guess && state.modalities.includes(guess[1]) ? guess[1] : state.modalities[0];
  }
  show(`Searching with ${file.name} (${modality})…`);
  const form = new FormData();
  form.append("file", file);
  form.append("modality", modality);
  form.append("k", String(resultsWanted()));
  form.append("per_modality", String(perModality()));
  for (const m of checkedModalities() || []) form.append("modalities", m);
  const response = await api("/api/search/study", { method: "POST", body: form });
  render(await response.json(), `Studies like ${file.name} (${modality})`);
}

async function searchSimilar(hit) {
  show(`Searching with study ${hit.id}…`);
  const body = { id: hit.id, k: resultsWanted(), modalities: checkedModalities(), per_modality: perModality() };
  const response = await api("/api/search/similar", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  render(await response.json(), `Studies like study ${hit.id} (${hit.modality}, patient ${hit.patient_id || "?"})`);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadThumbnail(img, url) {
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    state.thumbnails.push(objectUrl);
    img.src = objectUrl;
  } catch (error) {
    img.alt = `no preview (${error.message})`;
  }
}

function card(hit) {
  const node = element("button", "card");
  node.type = "button";
  node.dataset.id = hit.id;
  node.title = "Search with this study";
  const img = element("img", "thumb");
  img.alt = `${hit.modality} study ${hit.id}`;
  node.append(img);
  loadThumbnail(img, hit.thumbnail);
  node.append(element("span", "score", `score ${hit.score.toFixed(3)}`));
  const labels = element("div", "labels");
  for (const label of hit.labels) labels.append(element("span", "label", label));
  if (!hit.labels.length) labels.append(element("span", "meta", "no labels"));
  node.append(labels);
  const excerpt = hit.report.length > 180 ? `${hit.report.slice(0, 177)}…` : hit.report;
  node.append(element("p", "report", excerpt));
  node.append(element("span", "meta", `#${hit.id} · patient ${hit.patient_id || "?"}`));
  node.addEventListener("click", () => searchSimilar(hit).catch((error) => show(error.message, true)));
  return node;
}

function render(answer, title) {
  for (const url of state.thumbnails.splice(0)) URL.revokeObjectURL(url);
  const results = $("results");
  results.replaceChildren();
  const groups = new Map();
  for (const hit of answer.hits) {
    if (!groups.has(hit.modality)) groups.set(hit.modality, []);
    groups.get(hit.modality).push(hit);
  }
  const order = [...state.modalities, ...[...groups.keys()].filter((m) => !state.modalities.includes(m))];
  for (const modality of order.filter((m) => groups.has(m))) {
    const hits = groups.get(modality);
    const section = element("section", "group");
    section.dataset.modality = modality;
    section.append(element("h2", "", `${modality} (${hits.length})`));
    const cards = element("div", "cards");
    for (const hit of hits) cards.append(card(hit));
    section.append(cards);
    results.append(section);
  }
  show(answer.hits.length ? `${title}: ${answer.hits.length} results` : `${title}: no results`);
}

async function start() {
  const health = await (await fetch("/api/health")).json();
  state.modalities = health.model_modalities;
  const counts = Object.entries(health.modalities).map(([m, n]) => `${n} ${m}`).join(", ");
  $("status").textContent = `${health.studies} studies (${counts || "empty"}) · model ${health.model} · ${health.vector_index} index`;
  $("k").max = String(health.max_k);
  $("token-box").hidden = !health.token_required;
  $("token").value = state.token;
  for (const modality of state.modalities) {
    const label = element("label", "", "");
    const box = element("input");
    box.type = "checkbox";
    box.value = modality;
    box.checked = true;
    label.append(box, ` ${modality}`);
    $("modalities").append(label);
    const option = element("option", "", modality);
    option.value = modality;
    $("upload-modality").append(option);
  }
}

$("token").addEventListener("change", () => {
  state.token = $("token").value.trim();
  sessionStorage.setItem("m3bind-token", state.token);
});
$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (text) searchText(text).catch((error) => show(error.message, true));
});
$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) searchFile(file).catch((error) => show(error.message, true));
  $("file").value = "";
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) searchFile(file).catch((error) => show(error.message, true));
});
start().catch((error) => show(`cannot reach the server: ${error.message}`, true));
