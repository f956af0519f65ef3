// The ollimg web page. Plain JS, no build step, nothing from the internet: it talks to this server
// only through the documented API (/api/...), with the API key the user gave, kept in localStorage.
"use strict";

const $ = (selector) => document.querySelector(selector);
const KEY = "ollimg.apiKey";
const THEME = "ollimg.theme";
const SIZES = [[256, 256], [512, 512], [768, 768], [1024, 1024], [1024, 768], [768, 1024], [1280, 720], [720, 1280]];
const FIELDS = {  // API field -> the element whose error line shows it
  prompt: "prompt", negative_prompt: "negative", model: "model", width: "size", height: "size", size: "size",
  steps: "steps", guidance: "guidance", seed: "seed", n: "n",
};

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, param, code) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

let keyPrompt = null;  // one open key dialog at a time

async function api(path, { method = "GET", body, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    const key = localStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && attempt < 5) {
      await askKey(key ? "That key was refused. Check OLLIMG_API_KEY on the server." : "");
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

async function errorOf(response) {
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  const message = typeof body.error === "string" ? body.error : (body.error && body.error.message) || response.statusText;
  return new ApiError(message || `HTTP ${response.status}`, response.status, body.param, body.code);
}

// Reads an NDJSON stream, calling onLine per object; an {"error"} line throws.
async function ndjson(response, onLine) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const text of lines) {
      if (!text.trim()) continue;
      const obj = JSON.parse(text);
      if (obj.error) throw new ApiError(obj.error, 200, obj.param, obj.code);
      onLine(obj);
    }
    if (done) return;
  }
}

function askKey(message) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("#key-dialog");
  $("#key-error").textContent = message || "";
  $("#key-input").value = "";
  keyPrompt = new Promise((resolve) => {
    dialog.addEventListener("close", function done() {
      dialog.removeEventListener("close", done);
      const value = $("#key-input").value.trim();
      if (value) localStorage.setItem(KEY, value);
      keyPrompt = null;
      showKeyState();
      resolve();
    });
  });
  dialog.showModal();
  return keyPrompt;
}

function showKeyState() {
  $("#forget-key").hidden = !localStorage.getItem(KEY);
}

// An image the API serves, as a blob: URL (an <img src> cannot carry the API key).
async function blobUrl(path) {
  const response = await api(path);
  return URL.createObjectURL(await response.blob());
}

// -- small helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = [["TB", 1e12], ["GB", 1e9], ["MB", 1e6], ["KB", 1e3]];
  for (const [unit, scale] of units) {
    if (n >= scale) return `${(n / scale).toPrecision(n / scale < 10 ? 2 : 3).replace(/\.0$/, "")} ${unit}`;
  }
  return `${n} B`;
}

function seconds(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function ago(iso) {
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!isFinite(s)) return "";
  const steps = [[60, "second", 1], [3600, "minute", 60], [86400, "hour", 3600], [604800, "day", 86400],
    [2629800, "week", 604800], [31557600, "month", 2629800], [Infinity, "year", 31557600]];
  for (const [limit, unit, size] of steps) {
    if (Math.abs(s) < limit) {
      const n = Math.max(1, Math.round(Math.abs(s) / size));
      return s >= 0 ? `${n} ${unit}${n > 1 ? "s" : ""} ago` : `in ${n} ${unit}${n > 1 ? "s" : ""}`;
    }
  }
  return "";
}

function toast(message) {
  const node = $("#toast");
  node.textContent = message;
  node.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => node.classList.remove("show"), 2500);
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {  // not a secure context (a LAN address over http): the old way
    const area = el("textarea", { class: "sr" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast(`Copied ${text}`);
}

function confirmDialog(text, ok = "Delete") {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = ok;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// -- views --------------------------------------------------------------------------------------

const VIEWS = { create: showCreate, gallery: showGallery, models: showModels };

function route() {
  const name = VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : "create";
  for (const view of Object.keys(VIEWS)) {
    $(`#view-${view}`).hidden = view !== name;
    const link = $(`#nav-${view}`);
    if (view === name) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  VIEWS[name]();
}

// -- create -------------------------------------------------------------------------------------

const state = { models: [], defaults: {}, running: null };

async function showCreate() {
  if (!state.models.length) await loadModelChoices();
}

async function loadModelChoices() {
  const select = $("#model");
  const previous = select.value;
  try {
    const [tags, builtin] = await Promise.all([
      api("/api/tags").then((r) => r.json()), api("/api/builtin").then((r) => r.json()),
    ]);
    state.models = tags.models;
    select.replaceChildren();
    for (const m of tags.models) {
      const d = m.details || {};
      const info = [d.family, bytes(m.size), d.quantization_level].filter(Boolean).join(" · ");
      select.append(el("option", { value: m.name, text: `${m.name} — ${info}` }));
    }
    for (const b of builtin.models.filter((b) => !b.stored)) {
      select.append(el("option", { value: b.name, text: `${b.name} — built in (imported on first use)` }));
    }
    if (!select.options.length) {
      select.append(el("option", { value: "", text: "no models: pull one under Models" }));
    }
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
    $("#model-error").textContent = "";
    await modelChanged();
  } catch (e) {
    $("#model-error").textContent = e.message;
  }
}

async function modelChanged() {
  const name = $("#model").value;
  const stored = state.models.find((m) => m.name === name);
  state.defaults = {};
  $("#model-info").textContent = "";
  if (stored) {
    try {
      const show = await api("/api/show", { method: "POST", body: { model: name } }).then((r) => r.json());
      state.defaults = show.parameters || {};
      $("#model-info").textContent = show.description || "";
    } catch (e) {
      $("#model-error").textContent = e.message;
    }
  }
  const d = state.defaults;
  $("#steps").placeholder = d.steps ?? "default";
  $("#guidance").placeholder = d.guidance ?? "default";
  fillSizes();
}

function fillSizes() {
  const select = $("#size");
  const previous = select.value;
  const d = state.defaults;
  select.replaceChildren(el("option", {
    value: "default", text: d.width && d.height ? `model default (${d.width}×${d.height})` : "model default",
  }));
  for (const [w, h] of SIZES) select.append(el("option", { value: `${w}x${h}`, text: `${w}×${h}` }));
  select.append(el("option", { value: "custom", text: "custom…" }));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  sizeChanged();
}

function sizeChanged() {
  const custom = $("#size").value === "custom";
  $("#custom-size").hidden = !custom;
  if (custom && !$("#width").value) {
    $("#width").value = state.defaults.width || 512;
    $("#height").value = state.defaults.height || 512;
  }
}

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

function requestBody() {
  const body = {
    model: $("#model").value, prompt: $("#prompt").value, n: number("#n") ?? 1,
    steps: number("#steps"), guidance: number("#guidance"), stream: true, gallery: true,
  };
  const negative = $("#negative").value.trim();
  if (negative) body.negative_prompt = negative;
  const size = $("#size").value;
  if (size === "custom") {
    body.width = number("#width");
    body.height = number("#height");
  } else if (size !== "default") {
    [body.width, body.height] = size.split("x").map(Number);
  }
  if (!$("#seed-random").checked) body.seed = number("#seed");
  const steps = body.steps ?? state.defaults.steps ?? 8;
  body.previews = Math.max(0, Math.min(steps - 1, 20));
  return body;
}

function clearErrors(root) {
  for (const node of root.querySelectorAll(".error")) node.textContent = "";
  for (const node of root.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showError(e, fallback) {
  const id = FIELDS[e.param];
  const target = id ? $(`#${id}-error`) : $(fallback);
  target.textContent = e.message;
  if (id) {
    const field = id === "size" ? ($("#size").value === "custom" ? $("#width") : $("#size")) : $(`#${id}`);
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

async function generate(event) {
  if (event) event.preventDefault();
  if (state.running) return;
  const form = $("#create-form");
  clearErrors(form);
  const body = requestBody();
  if (!body.prompt.trim()) {
    showError(new ApiError("Write a prompt first.", 400, "prompt"));
    return;
  }
  const controller = new AbortController();
  const run = { controller, started: performance.now(), step: 0, total: body.steps || state.defaults.steps || 0 };
  state.running = run;
  $("#generate").disabled = true;
  $("#stop").disabled = false;
  $("#timings").textContent = "";
  const slots = makeSlots(body.n || 1);
  setProgress(0, "Starting… (the model loads on first use)");
  run.ticker = setInterval(() => tick(run), 250);
  try {
    const response = await api("/api/generate", { method: "POST", body, signal: controller.signal });
    setProgress(0, "Generating…");
    run.generating = performance.now();
    await ndjson(response, (line) => {
      if (line.done) finished(line, slots, body, run);
      else if (line.preview !== undefined) showPreview(slots[line.image || 0], line.preview);
      else if (line.step !== undefined) {
        run.step = line.step;
        run.total = line.total;
        run.elapsed = line.elapsed;
        tick(run);
      }
    });
  } catch (e) {
    if (e.name === "AbortError") {
      setProgress(0, "Stopped: the server cancelled the generation.");
      for (const slot of slots) slot.remove();
    } else {
      setProgress(0, "Failed.");
      for (const slot of slots) slot.remove();
      showError(e, "#form-error");
    }
  } finally {
    clearInterval(run.ticker);
    state.running = null;
    $("#generate").disabled = false;
    $("#stop").disabled = true;
  }
}

function tick(run) {
  if (run.done) return;
  const wall = (performance.now() - run.started) / 1000;
  if (!run.step) {
    setProgress(0, `${run.generating ? "Generating" : "Starting (loading the model)"}… ${seconds(wall)}`);
    return;
  }
  const eta = run.elapsed / run.step * (run.total - run.step);
  setProgress(run.step / run.total,
    `Step ${run.step}/${run.total} · ${seconds(wall)} elapsed · ${run.step < run.total ? `about ${seconds(eta)} left` : "finishing"}`);
}

function setProgress(fraction, text) {
  $("#progress").value = fraction;
  $("#status").textContent = text;
}

function makeSlots(n) {
  const results = $("#results");
  results.replaceChildren();
  const slots = [];
  for (let i = 0; i < n; i++) {
    const slot = el("figure", { class: "slot pending" }, el("div", { class: "frame" }), el("figcaption", { text: "waiting…" }));
    results.append(slot);
    slots.push(slot);
  }
  return slots;
}

function showPreview(slot, b64) {
  if (!slot) return;
  const frame = slot.querySelector(".frame");
  let img = frame.querySelector("img.preview");
  if (!img) {
    img = el("img", { class: "preview", alt: "preview of the image forming" });
    frame.replaceChildren(img);
  }
  img.src = `data:image/png;base64,${b64}`;
  slot.querySelector("figcaption").textContent = "preview";
}

function finished(line, slots, body, run) {
  run.done = true;
  const total = line.total_duration / 1e9;
  setProgress(1, `Done in ${seconds(total)}.`);
  const mime = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" }[line.format] || "image/png";
  line.images.forEach((b64, i) => {
    const slot = slots[i] || $("#results").appendChild(el("figure", { class: "slot" }));
    const seed = line.seeds[i];
    const src = `data:${mime};base64,${b64}`;
    const img = el("img", { class: "final", src, alt: `generated image, seed ${seed}` });
    const entry = {
      id: line.gallery_ids[i], model: line.model, prompt: body.prompt, negative_prompt: body.negative_prompt,
      width: line.width, height: line.height, steps: line.steps, guidance: line.guidance, seed, format: line.format,
    };
    slot.className = "slot";
    slot.replaceChildren(
      el("button", { type: "button", class: "frame", "aria-label": `Open image ${i + 1} (seed ${seed})`, onclick: () => openViewer(entry, src) }, img),
      el("figcaption", {},
        el("span", { class: "seed-label", text: `seed ${seed}` }),
        el("button", { type: "button", class: "link", text: "copy", "aria-label": `Copy seed ${seed}`, onclick: () => copyText(String(seed)) }),
        el("a", { href: src, download: `ollimg-${seed}.${line.format === "jpeg" ? "jpg" : line.format}`, text: "download" })),
    );
  });
  for (const slot of slots.slice(line.images.length)) slot.remove();
  const t = line.timings || {};
  const parts = [];
  if (line.load_duration) parts.push(`load ${seconds(line.load_duration / 1e9)}`);
  for (const [k, label] of [["text_encode", "text"], ["denoise", "denoise"], ["decode", "decode"], ["encode", "encode"]]) {
    if (t[k] !== undefined) parts.push(`${label} ${seconds(t[k])}`);
  }
  parts.push(`total ${seconds(total)}`);
  const kept = line.gallery_ids.length === line.images.length ? "kept in the gallery"
    : `${line.images.length - line.gallery_ids.length} not kept in the gallery (see the server log)`;
  $("#timings").textContent = `${line.width}×${line.height}, ${line.steps} steps, guidance ${line.guidance} · ${parts.join(" · ")} · ${kept}`;
  if (line.gallery_ids.length) gallery.stale = true;
  if (!state.models.some((m) => m.name === line.model)) loadModelChoices();  // a built-in model is stored now
}

function stop() {
  if (state.running) state.running.controller.abort();
}

function useSettings(entry) {
  const models = [...$("#model").options].map((o) => o.value);
  if (models.includes(entry.model)) $("#model").value = entry.model;
  $("#prompt").value = entry.prompt;
  $("#negative").value = entry.negative_prompt || "";
  $("#steps").value = entry.steps;
  $("#guidance").value = entry.guidance;
  $("#seed").value = entry.seed;
  $("#seed-random").checked = false;
  $("#n").value = 1;
  modelChanged().then(() => {
    $("#size").value = "custom";
    $("#width").value = entry.width;
    $("#height").value = entry.height;
    sizeChanged();
  });
  location.hash = "#create";
  $("#prompt").focus();
}

// -- gallery ------------------------------------------------------------------------------------

const gallery = { stale: true, next: null, urls: [] };

async function showGallery() {
  if (gallery.stale) await loadGallery();
}

async function loadGallery(more = false) {
  $("#gallery-error").textContent = "";
  const params = new URLSearchParams({ limit: "48" });
  const q = $("#gallery-q").value.trim();
  const model = $("#gallery-model").value;
  if (q) params.set("q", q);
  if (model) params.set("model", model);
  if (more && gallery.next) params.set("before", gallery.next);
  let page;
  try {
    page = await api(`/api/gallery?${params}`).then((r) => r.json());
  } catch (e) {
    $("#gallery-error").textContent = e.message;
    return;
  }
  gallery.stale = false;
  const grid = $("#gallery-grid");
  if (!more) {
    for (const url of gallery.urls) URL.revokeObjectURL(url);
    gallery.urls = [];
    grid.replaceChildren();
  }
  const select = $("#gallery-model");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "all models" }), ...page.models.map((m) => el("option", { value: m, text: m })));
  select.value = page.models.includes(chosen) ? chosen : "";
  for (const entry of page.images) grid.append(galleryItem(entry));
  const shown = grid.children.length;
  gallery.next = page.images.length ? page.images[page.images.length - 1].id : null;
  $("#gallery-more").hidden = shown >= page.total;
  $("#gallery-summary").textContent = page.total || shown
    ? `${page.total} image${page.total === 1 ? "" : "s"}${q || model ? " match" : ""} · the gallery holds ${bytes(page.bytes)} of ${bytes(page.max_bytes)} (the oldest go first)`
    : (q || model ? "No image matches." : "No images yet: the ones you create are kept here.");
}

function galleryItem(entry) {
  const img = el("img", { alt: entry.prompt, loading: "lazy", width: 256, height: 256 });
  const item = el("button", {
    type: "button", class: "thumb", "data-id": entry.id, title: entry.prompt,
    "aria-label": `${entry.prompt} (seed ${entry.seed}, ${entry.model})`, onclick: () => openViewer(entry),
  }, img);
  blobUrl(`/api/gallery/${entry.id}/thumbnail`).then((url) => { gallery.urls.push(url); img.src = url; })
    .catch((e) => { img.alt = `could not load: ${e.message}`; });
  return item;
}

let viewing = null;
const viewer = { url: null };  // the full-size image on show (its own blob: URL, kept apart from the grid's)

async function openViewer(entry, src) {
  viewing = entry;
  const dialog = $("#viewer");
  $("#viewer-title").textContent = entry.prompt;
  const img = $("#viewer-img");
  img.alt = entry.prompt;
  img.src = src || "";
  const params = [["Model", entry.model], ["Seed", entry.seed], ["Size", `${entry.width}×${entry.height}`],
    ["Steps", entry.steps], ["Guidance", entry.guidance], ["Negative prompt", entry.negative_prompt],
    ["Created", entry.created_at && new Date(entry.created_at).toLocaleString()]];
  $("#viewer-params").replaceChildren(...params.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  const download = $("#viewer-download");
  download.download = `ollimg-${entry.seed}.${entry.format === "jpeg" ? "jpg" : entry.format}`;
  download.href = src || "#";
  $("#viewer-delete").hidden = !entry.id;
  if (!dialog.open) dialog.showModal();
  if (viewer.url) URL.revokeObjectURL(viewer.url);
  viewer.url = null;
  if (!src && entry.id) {
    try {
      const url = await blobUrl(`/api/gallery/${entry.id}/image`);
      if (viewing !== entry) { URL.revokeObjectURL(url); return; }
      viewer.url = url;
      img.src = url;
      download.href = url;
    } catch (e) {
      img.alt = `could not load: ${e.message}`;
    }
  }
}

async function deleteViewing() {
  const entry = viewing;
  if (!entry || !entry.id) return;
  if (!(await confirmDialog(`Delete this image (seed ${entry.seed}) from the gallery?`))) return;
  try {
    await api(`/api/gallery/${entry.id}`, { method: "DELETE" });
  } catch (e) {
    toast(e.message);
    return;
  }
  $("#viewer").close();
  const item = document.querySelector(`.thumb[data-id="${entry.id}"]`);
  if (item) item.remove();
  gallery.stale = true;
  if (!$("#view-gallery").hidden) loadGallery();
  toast("Deleted.");
}

// -- models -------------------------------------------------------------------------------------

async function showModels() {
  await Promise.all([loadModels(), loadPs()]);
}

async function loadModels() {
  $("#models-error").textContent = "";
  let tags;
  try {
    tags = await api("/api/tags").then((r) => r.json());
  } catch (e) {
    $("#models-error").textContent = e.message;
    return;
  }
  const rows = tags.models.map((m) => {
    const d = m.details || {};
    return el("tr", { "data-model": m.name },
      el("td", { text: m.name }), el("td", { text: d.family || "" }), el("td", { text: bytes(m.size) }),
      el("td", { text: d.quantization_level || "" }), el("td", { text: ago(m.modified_at), title: m.modified_at }),
      el("td", { class: "buttons" },
        el("button", { type: "button", text: "Show", "aria-label": `Show ${m.name}`, onclick: () => showModel(m.name) }),
        el("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${m.name}`, onclick: () => deleteModel(m.name) })));
  });
  $("#models-table tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 6, class: "hint", text: "No models in the store yet. Pull one above, or generate with the built-in model." }))]));
  state.models = [];  // the create view reloads its choices
}

async function loadPs() {
  let ps;
  try {
    ps = await api("/api/ps").then((r) => r.json());
  } catch (e) {
    $("#models-error").textContent = e.message;
    return;
  }
  const rows = ps.models.map((m) => el("tr", { "data-model": m.name },
    el("td", { text: m.name + (m.busy ? " (busy)" : "") }), el("td", { text: m.processor }), el("td", { text: bytes(m.size) }),
    el("td", { text: m.expires_at ? ago(m.expires_at) : "until stopped" }),
    el("td", { class: "buttons" }, el("button", { type: "button", text: "Unload", "aria-label": `Unload ${m.name}`, onclick: () => unload(m.name) }))));
  $("#ps-table tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 5, class: "hint", text: "No model is loaded." }))]));
}

async function showModel(name) {
  try {
    const m = await api("/api/show", { method: "POST", body: { model: name } }).then((r) => r.json());
    $("#model-title").textContent = m.name;
    const d = m.details || {};
    const params = Object.entries(m.parameters || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    const info = m.info || {};
    const rows = [["Family", d.family], ["Parameters", d.parameter_size], ["Quantization", d.quantization_level],
      ["Format", d.format], ["Size", bytes(m.size)], ["Digest", m.digest], ["Modified", new Date(m.modified_at).toLocaleString()],
      ["Capabilities", (m.capabilities || []).join(", ")], ["Defaults", params], ["Tensors", m.tensors],
      ["License", m.license], ["Description", m.description]];
    for (const [k, v] of Object.entries(info)) {
      if (typeof v !== "object") rows.push([k, v]);
    }
    $("#model-details").replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
    $("#model-dialog").showModal();
  } catch (e) {
    $("#models-error").textContent = e.message;
  }
}

async function deleteModel(name) {
  if (!(await confirmDialog(`Delete ${name}? Its files go unless another model uses them.`))) return;
  try {
    const r = await api("/api/delete", { method: "DELETE", body: { model: name } }).then((r) => r.json());
    toast(`Deleted ${r.deleted.join(", ")}, freed ${bytes(r.bytes)}.`);
  } catch (e) {
    $("#models-error").textContent = e.message;
  }
  await showModels();
}

async function unload(name) {
  try {
    await api("/api/generate", { method: "POST", body: { model: name, prompt: "", keep_alive: 0, stream: false } });
    toast(`Unloaded ${name}.`);
  } catch (e) {
    $("#models-error").textContent = e.message;
  }
  await loadPs();
}

let pulling = null;

async function pull(event) {
  event.preventDefault();
  if (pulling) return;
  clearErrors($("#pull-form"));
  const name = $("#pull-name").value.trim();
  if (!name) {
    $("#pull-error").textContent = "Name a model to pull, like registry.example.com/team/model:tag.";
    return;
  }
  pulling = new AbortController();
  const blobs = new Map();  // digest -> [completed, total]
  $("#pull-progress").hidden = false;
  $("#pull").disabled = true;
  $("#pull-stop").hidden = false;
  const bar = $("#pull-bar");
  const status = $("#pull-status");
  bar.value = 0;
  status.textContent = "starting…";
  try {
    const response = await api("/api/pull", { method: "POST", body: { model: name }, signal: pulling.signal });
    await ndjson(response, (line) => {
      if (line.digest && line.total) blobs.set(line.digest, [line.completed || 0, line.total]);
      let done = 0, total = 0;
      for (const [c, t] of blobs.values()) { done += c; total += t; }
      if (total) bar.value = done / total;
      if (line.status === "success") {
        bar.value = 1;
        status.textContent = `Pulled ${name}.`;
      } else {
        status.textContent = `${line.status}${total ? ` · ${bytes(done)} of ${bytes(total)}` : ""}`;
      }
    });
    await loadModels();
  } catch (e) {
    if (e.name === "AbortError") {
      status.textContent = "Stopped: the part already pulled is kept, a new pull goes on from there.";
    } else {
      $("#pull-error").textContent = e.message;
      status.textContent = "Failed.";
    }
  } finally {
    pulling = null;
    $("#pull").disabled = false;
    $("#pull-stop").hidden = true;
  }
}

// -- start --------------------------------------------------------------------------------------

function setTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const current = document.documentElement.dataset.theme
    || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  const next = current === "dark" ? "light" : "dark";
  localStorage.setItem(THEME, next);
  setTheme(next);
}

function start() {
  setTheme(localStorage.getItem(THEME));
  showKeyState();
  $("#theme").addEventListener("click", toggleTheme);
  $("#create-form").addEventListener("submit", generate);
  $("#stop").addEventListener("click", stop);
  $("#model").addEventListener("change", modelChanged);
  $("#size").addEventListener("change", sizeChanged);
  $("#seed-random").addEventListener("change", () => { if (!$("#seed-random").checked) $("#seed").focus(); });
  $("#seed").addEventListener("input", () => { $("#seed-random").checked = $("#seed").value === ""; });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter" && !$("#view-create").hidden) generate(e);
    if (e.key === "Escape" && state.running && !document.querySelector("dialog[open]")) stop();
  });
  $("#gallery-filter").addEventListener("submit", (e) => { e.preventDefault(); loadGallery(); });
  $("#gallery-model").addEventListener("change", () => loadGallery());
  $("#gallery-q").addEventListener("input", () => {
    clearTimeout(loadGallery.timer);
    loadGallery.timer = setTimeout(() => loadGallery(), 300);
  });
  $("#gallery-more").addEventListener("click", () => loadGallery(true));
  $("#viewer-delete").addEventListener("click", deleteViewing);
  $("#viewer-seed").addEventListener("click", () => viewing && copyText(String(viewing.seed)));
  $("#viewer-reuse").addEventListener("click", () => { const e = viewing; $("#viewer").close(); useSettings(e); });
  $("#pull-form").addEventListener("submit", pull);
  $("#pull-stop").addEventListener("click", () => pulling && pulling.abort());
  $("#models-refresh").addEventListener("click", showModels);
  $("#forget-key").addEventListener("click", () => { localStorage.removeItem(KEY); showKeyState(); toast("The API key is forgotten."); });
  window.addEventListener("hashchange", route);
  api("/api/version").then((r) => r.json()).then((v) => { $("#version").textContent = `ollimg ${v.version}`; }).catch(() => {});
  route();
}

start();
