// Generate: prompt, size presets, LoRAs with scales, reference images; live progress over the SSE stream; a
// gallery of results.
import { api, blobUrl } from "./api.js";
import { follow } from "./sse.js";
import { SIZE_PRESETS } from "./presets.js";
import { referencePicker, referenceStrip } from "./references.js";
import { control, readValues, requestSchema } from "./schema.js";
import { authImage, badge, clear, el, errorBox, progressBar, when } from "./ui.js";

const OPTION_FIELDS = ["steps", "guidance", "seed", "num_images", "preset"];
const ACTIVE = new Set(["queued", "running"]);
// A browser opens at most 6 HTTP/1.1 connections to one host and each SSE stream holds one: a few streams, and
// the rest of the running generations are polled, so image and API requests are never starved.
const MAX_STREAMS = 3;
const POLL_MS = 3000;
let streams = 0;

// scaleRule: the OpenAPI rule of a LoRA's scale; the slider spans its useful middle (at most -2..2).
function loraPicker(loras, chosenId, scaleRule) {
  if (!loras.length) return el("p", { class: "muted" }, "No LoRAs yet: train one or import a file.");
  return el("div", { class: "lora-picker", id: "lora-picker" }, loras.map((l) => {
    const scale = el("input", { type: "range", min: Math.max(scaleRule.minimum ?? -2, -2),
                                max: Math.min(scaleRule.maximum ?? 2, 2), step: 0.05, value: scaleRule.default ?? 1,
                                class: "scale", title: scaleRule.description, "aria-label": `scale of ${l.name}` });
    const out = el("output", {}, Number(scale.value).toFixed(2));
    scale.addEventListener("input", () => { out.textContent = Number(scale.value).toFixed(2); });
    const box = el("input", { type: "checkbox", class: "use", checked: l.id === chosenId, dataset: { id: l.id } });
    return el("div", { class: "lora-choice" }, el("label", { class: "check" }, box, " ", el("strong", {}, l.name),
      l.trigger ? el("span", { class: "muted" }, ` — trigger “${l.trigger}”`) : null), scale, out);
  }));
}

// One generation as a card: status, progress of the current image, the images as they are finished.
function jobCard(gen, { live = false } = {}) {
  const images = el("div", { class: "gallery-images" });
  const bar = el("div");
  const head = el("div", { class: "gen-head" });
  const card = el("article", { class: "gen", dataset: { id: gen.id } }, head, bar, images);
  const n = gen.params.num_images || 1;

  let headFor = null;  // what the head was last built from
  function show() {
    // rebuilt only when it changes: progress comes every step, and a Cancel button replaced between a person's
    // mouse-down and mouse-up loses the click
    const key = JSON.stringify([gen.status, gen.cancel_requested]);
    if (key !== headFor) { headFor = key; showHead(); }
    showBody();
  }

  function showHead() {
    clear(head, el("p", { class: "prompt" }, gen.prompt), el("div", { class: "muted small" }, badge(gen.status),
      ` ${gen.params.width}×${gen.params.height} · ${gen.params.steps} steps · seed ${gen.params.seed} · ${when(gen.created_at)}`,
      ACTIVE.has(gen.status) ? el("button", { class: "danger small", disabled: gen.cancel_requested, onclick: async (e) => {
        e.target.disabled = true;
        try { Object.assign(gen, await api(`/v1/generations/${gen.id}/cancel`, { method: "POST" })); show(); }
        catch (err) { head.append(errorBox(err)); }
      } }, "Cancel") : null), referenceStrip(gen.params.reference_images));
  }

  function showBody() {
    if (ACTIVE.has(gen.status)) {
      const done = gen.images.length, p = gen.progress;
      const frac = (done + (p.total_steps ? p.step / p.total_steps : 0)) / n;
      clear(bar, progressBar(Math.min(frac, 1), `image ${Math.min(done + 1, n)} of ${n} · step ${p.step} / ${p.total_steps}`));
    } else {
      clear(bar, gen.error ? errorBox({ message: gen.error }) : null,
        (gen.warnings || []).map((w) => el("p", { class: "warning" }, w)));
    }
    const have = new Set([...images.children].map((c) => c.dataset.index));
    for (const im of gen.images) {
      if (have.has(String(im.index))) continue;
      const img = authImage(im.url, `${gen.prompt} (seed ${im.seed})`, blobUrl);
      images.append(el("a", { class: "result", dataset: { index: im.index }, title: `seed ${im.seed} — open full size`,
        href: "#", onclick: (e) => { e.preventDefault(); if (img.src) window.open(img.src, "_blank"); } }, img));
    }
  }
  show();
  let stop = () => {};
  if (live && ACTIVE.has(gen.status) && streams < MAX_STREAMS) {
    streams += 1;
    let open = true;
    const release = () => { if (open) { open = false; streams -= 1; } };
    const close = follow(`/v1/generations/${gen.id}/events`, (event, data) => {
      if (event === "snapshot") Object.assign(gen, data);
      else if (event === "progress") { gen.progress = data; gen.status = "running"; }
      else if (event === "image" && !gen.images.some((i) => i.index === data.index)) {
        gen.images.push({ seed: gen.params.seed + data.index, ...data });
        gen.progress = { ...gen.progress, step: 0 };
      } else if (event === "status") gen.status = data.status;
      if (!ACTIVE.has(gen.status)) release();
      show();
    });
    stop = () => { close(); release(); };
  } else if (live && ACTIVE.has(gen.status)) {
    const timer = setInterval(async () => {
      try { Object.assign(gen, await api(`/v1/generations/${gen.id}`)); show(); } catch { /* next tick */ }
      if (!ACTIVE.has(gen.status)) clearInterval(timer);
    }, POLL_MS);
    stop = () => clearInterval(timer);
  }
  return { card, stop };
}

export async function render(root, _rest, params) {
  const schema = await requestSchema("/v1/generations");
  const props = schema.properties;
  const loras = (await api("/v1/loras?limit=100")).data;
  const status = el("div", { id: "generate-status" });
  const current = el("div", { id: "current" });
  const gallery = el("div", { class: "gallery", id: "gallery" });
  const stops = [];
  const width = control("width", props.width, false), height = control("height", props.height, false);
  // the service's own default size first (128 px on the bundled model: OpenAPI carries it, api/default_size.py)
  const serviceSize = { label: `Default ${props.width.default}×${props.height.default}`,
                        width: props.width.default, height: props.height.default };
  const sizes = [serviceSize, ...SIZE_PRESETS.filter((s) => s.width !== serviceSize.width || s.height !== serviceSize.height)];
  const sizeButtons = sizes.map((s) => el("button", { type: "button", class: "chip", onclick: (e) => {
    form.elements.width.value = s.width; form.elements.height.value = s.height;
    sizeButtons.forEach((b) => b.classList.toggle("active", b === e.currentTarget));
  } }, s.label));

  const refs = referencePicker(props.reference_images);
  const form = el("form", { class: "card", id: "generate-form", novalidate: true },
    el("h2", {}, "Generate"),
    control("prompt", props.prompt, true), control("negative_prompt", props.negative_prompt, false),
    el("div", { class: "field" }, el("label", {}, "Size"), el("div", { class: "chips" }, sizeButtons)),
    el("div", { class: "grid2" }, width, height),
    el("div", { class: "field" }, el("label", {}, "LoRAs"), loraPicker(loras, params.get("lora"), props.loras.items.properties.scale),
      el("small", { class: "help" }, `${props.loras.description}; scale: ${props.loras.items.properties.scale.description}`)),
    refs.node,
    el("details", {}, el("summary", {}, "Sampling options"),
      el("div", { class: "grid3" }, OPTION_FIELDS.map((n) => control(n, props[n], false)))),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Generate")), status);
  form.elements.prompt.placeholder = "sks style, a lighthouse on a cliff at dusk";

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const fields = Object.fromEntries(Object.entries(props).filter(([n]) => n !== "loras" && n !== "reference_images"));
    const body = readValues(form, fields);
    body.reference_images = refs.ids();
    body.loras = [...form.querySelectorAll(".lora-choice")].filter((c) => c.querySelector(".use").checked)
      .map((c) => ({ id: c.querySelector(".use").dataset.id, scale: Number(c.querySelector(".scale").value) }));
    clear(status);
    try {
      const gen = await api("/v1/generations", { method: "POST", json: body });
      const { card, stop } = jobCard(gen, { live: true });
      stops.push(stop);
      current.prepend(card);
      gallery.querySelector("#gallery-empty")?.remove();
    } catch (err) { refs.mark(err); clear(status, errorBox(err)); }
  });

  clear(root, form, el("section", { class: "card" }, el("h2", {}, "Results"), current, gallery));
  try {
    const page = await api("/v1/generations?limit=24");
    for (const g of page.data) {
      const { card, stop } = jobCard(g, { live: true });
      stops.push(stop);
      gallery.append(card);
    }
    if (!page.data.length) gallery.append(el("p", { class: "muted", id: "gallery-empty" }, "Nothing generated yet."));
  } catch (err) { gallery.append(errorBox(err)); }
  return () => stops.forEach((s) => s());
}
