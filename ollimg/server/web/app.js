// The ollimg web page. Plain JS, no build step, nothing from the internet: it talks to this server
// only through the documented API (/api/...), with the API key the user gave, kept in localStorage.
"use strict";

const $ = (selector) => document.querySelector(selector);
const KEY = "ollimg.apiKey";
const THEME = "ollimg.theme";
const SIZES = [[256, 256], [512, 512], [768, 768], [1024, 1024], [1024, 768], [768, 1024], [1280, 720], [720, 1280]];

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
      // A key saved while this request was out is tried before asking (a slow refusal of no key
      // must not open the dialog again with no reason given).
      if (localStorage.getItem(KEY) === key) {
        await askKey(key ? "That key was refused. Check OLLIMG_API_KEY on the server." : "");
      }
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

const VIEWS = { create: () => showStudio(create), edit: () => showStudio(edit), gallery: showGallery, models: showModels };

function route() {
  const name = VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : "create";
  for (const view of Object.keys(VIEWS)) {
    $(`#view-${view}`).hidden = view !== name;
    const link = $(`#nav-${view}`);
    if (view === name) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  VIEWS[name]();
}

// -- create and edit: the views that generate ---------------------------------------------------

// A studio is one generating view. Its elements share an id prefix ("" for Create, "edit-" for
// Edit); `fields` maps an API field to the element (by id suffix) whose error line shows it.
const FIELDS = {
  prompt: "prompt", negative_prompt: "negative", model: "model", width: "size", height: "size", size: "size",
  steps: "steps", guidance: "guidance", seed: "seed", n: "n",
};
const create = {
  name: "create", prefix: "", fields: FIELDS, defaults: {}, running: null,
  input: (id) => (id === "size" && $("#size").value === "custom" ? $("#width") : null),
  body: createBody, sizes: fillCreateSizes,
};
const edit = {
  name: "edit", prefix: "edit-", fields: { ...FIELDS, images: "image", mask: "mask", strength: "strength" },
  defaults: {}, running: null,
  input: (id) => ({ image: $("#edit-file"), mask: $("#edit-canvas") })[id] || null,
  body: editBody, sizes: fillEditSizes,
};
const STUDIOS = [create, edit];
const state = { models: [] };

function at(s, id) {
  return $(`#${s.prefix}${id}`);
}

async function showStudio(s) {
  if (!state.models.length) await loadModelChoices();
}

function visibleStudio() {
  return STUDIOS.find((s) => !$(`#view-${s.name}`).hidden);
}

async function loadModelChoices() {
  try {
    const [tags, builtin] = await Promise.all([
      api("/api/tags").then((r) => r.json()), api("/api/builtin").then((r) => r.json()),
    ]);
    state.models = tags.models;
    for (const s of STUDIOS) fillModels(s, tags.models, builtin.models);
  } catch (e) {
    for (const s of STUDIOS) at(s, "model-error").textContent = e.message;
    return;
  }
  await Promise.all(STUDIOS.map(modelChanged));
}

function fillModels(s, stored, builtin) {
  const select = at(s, "model");
  const previous = select.value;
  select.replaceChildren();
  for (const m of stored) {
    const d = m.details || {};
    const info = [d.family, bytes(m.size), d.quantization_level].filter(Boolean).join(" · ");
    select.append(el("option", { value: m.name, text: `${m.name} — ${info}` }));
  }
  for (const b of builtin.filter((b) => !b.stored && !stored.some((m) => m.name === b.name))) {  // imported meanwhile
    select.append(el("option", { value: b.name, text: `${b.name} — built in (imported on first use)` }));
  }
  if (!select.options.length) select.append(el("option", { value: "", text: "no models: pull one under Models" }));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  at(s, "model-error").textContent = "";
}

async function modelChanged(s) {
  const name = at(s, "model").value;
  s.defaults = {};
  at(s, "model-info").textContent = "";
  if (state.models.some((m) => m.name === name)) {
    try {
      const show = await api("/api/show", { method: "POST", body: { model: name } }).then((r) => r.json());
      s.defaults = show.parameters || {};
      at(s, "model-info").textContent = show.description || "";
    } catch (e) {
      at(s, "model-error").textContent = e.message;
    }
  }
  at(s, "steps").placeholder = s.defaults.steps ?? "default";
  at(s, "guidance").placeholder = s.defaults.guidance ?? "default";
  s.sizes();
}

function fillCreateSizes() {
  const select = $("#size");
  const previous = select.value;
  const d = create.defaults;
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
    $("#width").value = create.defaults.width || 512;
    $("#height").value = create.defaults.height || 512;
  }
}

function number(s, id) {
  const text = at(s, id).value.trim();
  return text === "" ? undefined : Number(text);
}

// What both views send: the prompt, the model and its settings, streamed with previews, kept in the gallery.
function commonBody(s) {
  const body = {
    model: at(s, "model").value, prompt: at(s, "prompt").value, n: number(s, "n") ?? 1,
    steps: number(s, "steps"), guidance: number(s, "guidance"), stream: true, gallery: true,
  };
  const negative = at(s, "negative").value.trim();
  if (negative) body.negative_prompt = negative;
  if (!at(s, "seed-random").checked) body.seed = number(s, "seed");
  const steps = body.steps ?? s.defaults.steps ?? 8;
  body.previews = Math.max(0, Math.min(steps - 1, 20));
  if (!body.prompt.trim()) throw new ApiError("Write a prompt first.", 400, "prompt");
  return body;
}

async function createBody() {
  const body = commonBody(create);
  const size = $("#size").value;
  if (size === "custom") {
    body.width = number(create, "width");
    body.height = number(create, "height");
  } else if (/^\d+x\d+$/.test(size)) {  // else the model's default (also while its sizes load)
    [body.width, body.height] = size.split("x").map(Number);
  }
  return body;
}

function clearErrors(root) {
  for (const node of root.querySelectorAll(".error")) node.textContent = "";
  for (const node of root.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showError(s, e) {
  const id = s.fields[e.param];
  at(s, id ? `${id}-error` : "form-error").textContent = e.message;
  if (id) {
    const field = s.input(id) || at(s, id);
    field.setAttribute("aria-invalid", "true");
    field.focus();
  }
}

async function generate(s, event) {
  if (event) event.preventDefault();
  if (s.running) return;
  clearErrors($(`#view-${s.name}`));
  let body;
  try {
    body = await s.body();
  } catch (e) {
    showError(s, e);
    return;
  }
  const controller = new AbortController();
  const run = { controller, started: performance.now(), step: 0, total: body.steps || s.defaults.steps || 0 };
  s.running = run;
  at(s, "generate").disabled = true;
  at(s, "stop").disabled = false;
  at(s, "timings").textContent = "";
  const slots = makeSlots(s, body.n || 1);
  setProgress(s, 0, "Starting… (the model loads on first use)");
  run.ticker = setInterval(() => tick(s, run), 250);
  try {
    const response = await api("/api/generate", { method: "POST", body, signal: controller.signal });
    setProgress(s, 0, "Generating…");
    run.generating = performance.now();
    await ndjson(response, (line) => {
      if (line.done) finished(s, line, slots, body, run);
      else if (line.preview !== undefined) showPreview(slots[line.image_index || 0], line.preview);
      else if (line.step !== undefined) {
        run.step = line.step;
        run.total = line.total;
        run.elapsed = line.elapsed;
        if (line.status) run.status = line.status;  // step 0: what the runtime is doing first (e.g. compiling)
        tick(s, run);
      }
    });
  } catch (e) {
    for (const slot of slots) slot.remove();
    if (e.name === "AbortError") {
      setProgress(s, 0, "Stopped: the server cancelled the generation.");
    } else {
      setProgress(s, 0, "Failed.");
      showError(s, e);
    }
  } finally {
    clearInterval(run.ticker);
    s.running = null;
    at(s, "generate").disabled = false;
    at(s, "stop").disabled = true;
  }
}

function tick(s, run) {
  if (run.done) return;
  const wall = (performance.now() - run.started) / 1000;
  if (!run.step) {
    setProgress(s, 0, `${run.status || (run.generating ? "Generating…" : "Starting (loading the model)…")} ${seconds(wall)}`);
    return;
  }
  const eta = run.elapsed / run.step * (run.total - run.step);
  setProgress(s, run.step / run.total,
    `Step ${run.step}/${run.total} · ${seconds(wall)} elapsed · ${run.step < run.total ? `about ${seconds(eta)} left` : "finishing"}`);
}

function setProgress(s, fraction, text) {
  at(s, "progress").value = fraction;
  at(s, "status").textContent = text;
}

function makeSlots(s, n) {
  const results = at(s, "results");
  results.replaceChildren();
  const slots = [];
  for (let i = 0; i < n; i++) {
    const slot = el("figure", { class: "slot pending", "data-image": i },
      el("div", { class: "frame" }), el("figcaption", { text: n > 1 ? `image ${i + 1}: waiting…` : "waiting…" }));
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

function finished(s, line, slots, body, run) {
  run.done = true;
  const total = line.total_duration / 1e9;
  setProgress(s, 1, `Done in ${seconds(total)}.`);
  const mime = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" }[line.format] || "image/png";
  line.images.forEach((b64, i) => {
    const slot = slots[i] || at(s, "results").appendChild(el("figure", { class: "slot" }));
    const seed = line.seeds[i];
    const src = `data:${mime};base64,${b64}`;
    const img = el("img", { class: "final", src, alt: `generated image, seed ${seed}` });
    const entry = {
      id: line.gallery_ids[i], model: line.model, prompt: body.prompt, negative_prompt: body.negative_prompt,
      width: line.width, height: line.height, steps: line.steps, guidance: line.guidance, seed, format: line.format,
      strength: line.strength, mask: Boolean(body.mask),
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
  for (const [k, label] of [["text_encode", "text"], ["image_encode", "image"], ["denoise", "denoise"], ["decode", "decode"], ["encode", "encode"]]) {
    if (t[k] !== undefined) parts.push(`${label} ${seconds(t[k])}`);
  }
  parts.push(`total ${seconds(total)}`);
  const kept = line.gallery_ids.length === line.images.length ? "kept in the gallery"
    : `${line.images.length - line.gallery_ids.length} not kept in the gallery (see the server log)`;
  const strength = line.strength != null ? `, strength ${line.strength}` : "";
  at(s, "timings").textContent = `${line.width}×${line.height}, ${line.steps} steps, guidance ${line.guidance}${strength} · ${parts.join(" · ")} · ${kept}`;
  if (line.gallery_ids.length) gallery.stale = true;
  if (!state.models.some((m) => m.name === line.model)) loadModelChoices();  // a built-in model is stored now
}

function stop(s) {
  if (s.running) s.running.controller.abort();
}

// Fills a studio's prompt, model and settings from a gallery entry (or a result).
async function useSettings(entry) {
  const s = entry.strength != null ? edit : create;
  location.hash = `#${s.name}`;
  at(s, "prompt").value = entry.prompt;
  at(s, "negative").value = entry.negative_prompt || "";
  at(s, "steps").value = entry.steps;
  at(s, "guidance").value = entry.guidance;
  at(s, "seed").value = entry.seed;
  at(s, "seed-random").checked = false;
  at(s, "n").value = 1;
  if (s === edit) setStrength(entry.strength);
  at(s, "prompt").focus();
  if (!state.models.length) await loadModelChoices();
  const models = [...at(s, "model").options].map((o) => o.value);
  if (models.includes(entry.model)) at(s, "model").value = entry.model;
  await modelChanged(s);
  if (s === create) {
    $("#size").value = "custom";
    $("#width").value = entry.width;
    $("#height").value = entry.height;
    sizeChanged();
    return;
  }
  if (entry.id) {  // the image it started from and its mask, as the gallery kept them
    try {
      await setSource(await api(`/api/gallery/${entry.id}/source`).then((r) => r.blob()), "the kept image");
      if (entry.mask) await setMask(await api(`/api/gallery/${entry.id}/mask`).then((r) => r.blob()));
    } catch (e) {
      showError(edit, new ApiError(`Could not load the image this edit started from: ${e.message}`, e.status, "images"));
    }
  }
  fillEditSizes([entry.width, entry.height]);
}

// -- edit: the image to start from and its mask ------------------------------------------------

const WORK_SIDE = 1024;  // the mask is painted at most this large (then scaled to the image's size)
const MASK_COLOR = "rgb(255 0 160)";
const paint = { source: null, cursor: null, last: null, frame: 0 };

async function decodeImage(blob) {
  try {
    return await createImageBitmap(blob, { imageOrientation: "from-image" });  // upright, as the server reads it (EXIF)
  } catch (e) {
    if (e.name === "TypeError") return createImageBitmap(blob);  // a browser without that value: EXIF is its default
    throw e;
  }
}

function readDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function canvas(width, height) {
  return Object.assign(document.createElement("canvas"), { width, height });
}

// Shows `blob` as the image to edit, with an empty mask; a file the browser cannot read is an error.
async function setSource(blob, name) {
  $("#edit-image-error").textContent = "";
  $("#edit-file").removeAttribute("aria-invalid");
  let bitmap;
  try {
    bitmap = await decodeImage(blob);
  } catch (e) {
    throw new ApiError(`${name || "That file"} is not an image this browser can read: use a PNG, JPEG or WebP.`, 400, "images");
  }
  const scale = Math.min(1, WORK_SIDE / Math.max(bitmap.width, bitmap.height));
  const w = Math.max(1, Math.round(bitmap.width * scale));
  const h = Math.max(1, Math.round(bitmap.height * scale));
  const base = canvas(w, h);
  base.getContext("2d").drawImage(bitmap, 0, 0, w, h);
  paint.source = {
    dataUrl: await readDataUrl(blob), width: bitmap.width, height: bitmap.height, name,
    base, mask: canvas(w, h), tint: canvas(w, h),
  };
  bitmap.close();
  const view = $("#edit-canvas");
  view.width = w;
  view.height = h;
  paint.cursor = { x: w / 2, y: h / 2 };
  $("#edit-stage").hidden = false;
  $("#edit-image-info").textContent = `${name ? `${name}, ` : ""}${paint.source.width}×${paint.source.height} pixels.`;
  fitCanvas();
  fillEditSizes();
  redraw();
}

async function chooseSource(blob, name, fromInput = false) {
  if (!fromInput) $("#edit-file").value = "";  // dropped or pasted: the file input no longer says what is shown
  try {
    await setSource(blob, name);
  } catch (e) {
    showError(edit, e);
  }
}

// A mask from the server (greyscale, white = redrawn) into the paint mask.
async function setMask(blob) {
  const bitmap = await decodeImage(blob);
  const { mask } = paint.source;
  const tmp = canvas(mask.width, mask.height).getContext("2d");
  tmp.drawImage(bitmap, 0, 0, mask.width, mask.height);
  bitmap.close();
  const pixels = tmp.getImageData(0, 0, mask.width, mask.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i + 3] = d[i];
    d[i] = d[i + 1] = d[i + 2] = 255;
  }
  mask.getContext("2d").putImageData(pixels, 0, 0);
  redraw();
}

// The canvas at the largest size that fits its column and half the screen's height.
function fitCanvas() {
  if (!paint.source) return;
  const view = $("#edit-canvas");
  const box = view.parentElement.clientWidth - 2;
  const scale = Math.min(box / view.width, (window.innerHeight * 0.5) / view.height);
  view.style.width = `${Math.floor(view.width * scale)}px`;
  view.style.height = `${Math.floor(view.height * scale)}px`;
}

function brushRadius() {
  const view = $("#edit-canvas");
  const shown = view.getBoundingClientRect().width || view.width;
  return (Number($("#edit-brush").value) / 2) * (view.width / shown);
}

function redraw() {
  cancelAnimationFrame(paint.frame);
  paint.frame = requestAnimationFrame(() => {
    const src = paint.source;
    if (!src) return;
    const view = $("#edit-canvas");
    const ctx = view.getContext("2d");
    const tint = src.tint.getContext("2d");
    tint.globalCompositeOperation = "copy";
    tint.drawImage(src.mask, 0, 0);
    tint.globalCompositeOperation = "source-in";
    tint.fillStyle = MASK_COLOR;
    tint.fillRect(0, 0, src.tint.width, src.tint.height);
    ctx.globalAlpha = 1;
    ctx.drawImage(src.base, 0, 0);
    ctx.globalAlpha = 0.55;
    ctx.drawImage(src.tint, 0, 0);
    ctx.globalAlpha = 1;
    if (paint.showCursor) {
      const r = brushRadius();
      const line = view.width / (view.getBoundingClientRect().width || view.width);
      for (const [color, width] of [["#000", 3 * line], ["#fff", line]]) {
        ctx.beginPath();
        ctx.arc(paint.cursor.x, paint.cursor.y, r, 0, 2 * Math.PI);
        ctx.strokeStyle = color;
        ctx.lineWidth = width;
        ctx.stroke();
      }
    }
  });
}

function erasing() {
  return $("#edit-erase").checked;
}

// Paints (or erases) a stroke from `a` to `b` on the mask, in canvas pixels.
function strokeMask(a, b) {
  const ctx = paint.source.mask.getContext("2d");
  const r = brushRadius();
  ctx.globalCompositeOperation = erasing() ? "destination-out" : "source-over";
  ctx.fillStyle = ctx.strokeStyle = "#fff";
  ctx.lineWidth = 2 * r;
  ctx.lineCap = "round";
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
  ctx.beginPath();  // the dot at the end (a line of no length draws nothing)
  ctx.arc(b.x, b.y, r, 0, 2 * Math.PI);
  ctx.fill();
  $("#edit-mask-error").textContent = "";
  redraw();
}

function pointAt(event) {
  const view = $("#edit-canvas");
  const rect = view.getBoundingClientRect();
  return { x: (event.clientX - rect.left) * (view.width / rect.width), y: (event.clientY - rect.top) * (view.height / rect.height) };
}

function onPointer(event) {
  if (!paint.source) return;
  const view = $("#edit-canvas");
  const p = pointAt(event);
  paint.cursor = p;
  paint.showCursor = event.type !== "pointerleave";
  if (event.type === "pointerdown" && (event.button === 0 || event.pointerType !== "mouse")) {
    view.setPointerCapture(event.pointerId);
    paint.last = p;
    strokeMask(p, p);
    event.preventDefault();
  } else if (event.type === "pointermove" && paint.last) {
    strokeMask(paint.last, p);
    paint.last = p;
  } else if (event.type === "pointerup" || event.type === "pointercancel") {
    paint.last = null;
  }
  redraw();
}

function onCanvasKey(event) {
  if (!paint.source) return;
  const view = $("#edit-canvas");
  const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  const c = paint.cursor;
  if (moves[event.key]) {
    const step = Math.max(2, brushRadius());
    const next = {
      x: Math.min(view.width, Math.max(0, c.x + moves[event.key][0] * step)),
      y: Math.min(view.height, Math.max(0, c.y + moves[event.key][1] * step)),
    };
    if (event.shiftKey) strokeMask(c, next);
    paint.cursor = next;
  } else if (event.key === " ") {
    strokeMask(c, c);
  } else if (event.key === "x" || event.key === "X") {
    (erasing() ? $("#edit-paint") : $("#edit-erase")).checked = true;
    toast(erasing() ? "The brush erases." : "The brush paints.");
  } else if (event.key === "[" || event.key === "]") {
    const brush = $("#edit-brush");
    brush.value = Number(brush.value) + (event.key === "]" ? 8 : -8);
    showBrush();
  } else {
    return;
  }
  event.preventDefault();
  paint.showCursor = true;
  redraw();
}

function showBrush() {
  $("#edit-brush-value").textContent = `${$("#edit-brush").value} px`;
  redraw();
}

function setStrength(value) {
  $("#edit-strength").value = value;
  $("#edit-strength-value").textContent = Number($("#edit-strength").value).toFixed(2);
}

function clearMask() {
  if (!paint.source) return;
  const { mask } = paint.source;
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  redraw();
}

function maskPainted() {
  const { mask } = paint.source;
  const d = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height).data;
  for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) return true;
  return false;
}

// The mask as the API takes it (OpenAI's convention, which the native API shares): a PNG of the
// image's size, transparent where the image is redrawn and opaque where it is kept.
function maskPng() {
  const { mask, width, height } = paint.source;
  const out = canvas(width, height);
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(mask, 0, 0, width, height);
  return out.toDataURL("image/png");
}

// Sizes for an edit: the image's (rounded down to multiples of 16, as the server does) or scaled
// down to fit a side; `wanted` ([w, h]) is added and chosen when it is none of them.
function fillEditSizes(wanted) {
  const select = $("#edit-size");
  const previous = wanted ? wanted.join("x") : select.value;
  select.replaceChildren();
  const src = paint.source;
  if (!src) {
    select.append(el("option", { value: "", text: "the image's size" }));
    return;
  }
  const round = (v) => Math.max(16, v - (v % 16));
  const long = Math.max(src.width, src.height);
  const own = `${round(src.width)}x${round(src.height)}`;
  select.append(el("option", { value: "", "data-size": own, text: `the image's size (${own.replace("x", "×")})` }));
  const seen = new Set([own]);
  const sides = [create.defaults.width, edit.defaults.width, edit.defaults.height, 256, 512, 768, 1024]
    .filter((side) => side && side < long);
  for (const side of [...new Set(sides)].sort((a, b) => a - b)) {
    const size = `${round(Math.round(src.width * side / long))}x${round(Math.round(src.height * side / long))}`;
    if (seen.has(size)) continue;
    seen.add(size);
    select.append(el("option", { value: size, text: `${size.replace("x", "×")} (fits in ${side})` }));
  }
  if (wanted && !seen.has(previous)) select.append(el("option", { value: previous, text: `${previous.replace("x", "×")} (as before)` }));
  const modelSide = Math.max(edit.defaults.width || 0, edit.defaults.height || 0);
  const fitting = [...select.options].filter((o) => o.value && Math.max(...o.value.split("x").map(Number)) <= modelSide);
  if ([...select.options].some((o) => (o.value || o.dataset.size) === previous)) {
    select.value = previous === own ? "" : previous;
  } else {
    select.value = long > modelSide && fitting.length ? fitting[fitting.length - 1].value : "";
  }
}

async function editBody() {
  const body = commonBody(edit);
  if (!paint.source) throw new ApiError("Choose, drop or paste an image to start from.", 400, "images");
  body.images = [paint.source.dataUrl];
  if (maskPainted()) body.mask = maskPng();
  body.strength = Number($("#edit-strength").value);
  const size = $("#edit-size").value;
  if (/^\d+x\d+$/.test(size)) [body.width, body.height] = size.split("x").map(Number);
  return body;
}

function firstImage(items) {
  for (const item of items || []) {
    const file = item.getAsFile ? (item.kind === "file" ? item.getAsFile() : null) : item;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function startEdit() {
  setStrength($("#edit-strength").value);
  showBrush();
  fillEditSizes();
  $("#edit-form").addEventListener("submit", (e) => generate(edit, e));
  $("#edit-stop").addEventListener("click", () => stop(edit));
  $("#edit-model").addEventListener("change", () => modelChanged(edit));
  $("#edit-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) chooseSource(file, file.name, true);
  });
  const zone = $("#view-edit");  // drop anywhere in the view
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", (e) => { if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging"); });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) chooseSource(file, file.name);
  });
  document.addEventListener("paste", (e) => {
    const file = !$("#view-edit").hidden && firstImage(e.clipboardData && e.clipboardData.items);
    if (!file) return;  // text pastes into the text fields as usual
    e.preventDefault();
    chooseSource(file, "the pasted image");
  });
  const view = $("#edit-canvas");
  for (const type of ["pointerdown", "pointermove", "pointerup", "pointercancel", "pointerleave"]) view.addEventListener(type, onPointer);
  view.addEventListener("keydown", onCanvasKey);
  view.addEventListener("focus", () => { paint.showCursor = true; redraw(); });
  view.addEventListener("blur", () => { paint.showCursor = false; redraw(); });
  $("#edit-brush").addEventListener("input", showBrush);
  $("#edit-strength").addEventListener("input", () => setStrength($("#edit-strength").value));
  $("#edit-clear").addEventListener("click", clearMask);
  window.addEventListener("resize", () => { fitCanvas(); redraw(); });
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
  const isEdit = entry.strength != null;
  const item = el("button", {
    type: "button", class: "thumb", "data-id": entry.id, title: entry.prompt,
    "aria-label": `${entry.prompt} (${isEdit ? "an edit, " : ""}seed ${entry.seed}, ${entry.model})`, onclick: () => openViewer(entry),
  }, img, isEdit ? el("span", { class: "badge", "aria-hidden": "true", text: "edit" }) : null);
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
    ["Edit", entry.strength != null ? `strength ${entry.strength}, ${entry.mask ? "inside a mask" : "no mask"}` : null],
    ["Started from", entry.source_digest && `an image with sha256 ${entry.source_digest.slice(7, 19)}…`],
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
  state.models = [];  // the create and edit views reload their choices
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
  $("#create-form").addEventListener("submit", (e) => generate(create, e));
  $("#stop").addEventListener("click", () => stop(create));
  $("#model").addEventListener("change", () => modelChanged(create));
  $("#size").addEventListener("change", sizeChanged);
  for (const s of STUDIOS) {
    at(s, "seed-random").addEventListener("change", () => { if (!at(s, "seed-random").checked) at(s, "seed").focus(); });
    at(s, "seed").addEventListener("input", () => { at(s, "seed-random").checked = at(s, "seed").value === ""; });
  }
  startEdit();
  document.addEventListener("keydown", (e) => {
    const s = visibleStudio();
    if (!s || document.querySelector("dialog[open]")) return;
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") generate(s, e);
    if (e.key === "Escape" && s.running) stop(s);
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
