// Trainings: the form (presets + every field with the API's own help text), the list, and one job followed
// live over its SSE stream: progress, ETA, loss curve, previews (LoRA on | off), cancel, downloads.
import { api, blobUrl } from "./api.js";
import { follow } from "./sse.js";
import { LossChart } from "./loss_chart.js";
import { downloadButtons } from "./loras.js";
import { control, readValues, requestSchema, setValue } from "./schema.js";
import { authImage, badge, clear, duration, el, errorBox, progressBar, when } from "./ui.js";

const MAIN_FIELDS = ["steps", "rank", "alpha", "learning_rate", "resolution", "batch_size", "sample_every", "seed"];
const TEXT_FIELDS = ["trigger", "name", "sample_prompts"];
const NOT_FIELDS = ["dataset_id", "preset"];  // the dataset has its own select; a preset is the buttons
const ACTIVE = new Set(["queued", "running"]);
// The API keeps only the latest loss; the curve is what this tab saw, kept while the tab lives.
const curves = new Map();

async function trainingForm(selectedDataset, onSubmitted) {
  const schema = await requestSchema("/v1/trainings");
  const props = schema.properties;
  const datasets = (await api("/v1/datasets?limit=100")).data;
  // The service's own recipes (core/train/presets.py): the same ones `o1lora train --preset` and the API take.
  const presets = await api("/v1/training-presets");
  // preselected: the one the service gives a request without a preset (the "bundled" one on the bundled model)
  const defaultPreset = Object.keys(presets).find((k) => presets[k].default) || "standard";
  let chosenPreset = defaultPreset;
  const status = el("div");
  const datasetSelect = el("select", { id: "f-dataset_id", name: "dataset_id", required: true },
    datasets.length ? null : el("option", { value: "" }, "upload a dataset first"),
    datasets.map((d) => el("option", { value: d.id, selected: d.id === selectedDataset },
      `${d.name} (${d.num_images} images)`)));
  const other = Object.keys(props).filter((n) => !NOT_FIELDS.includes(n) && !MAIN_FIELDS.includes(n) && !TEXT_FIELDS.includes(n));
  const presetNote = el("span", { class: "muted", id: "preset-note" });
  const presetButtons = Object.entries(presets).map(([key, p]) =>
    el("button", { type: "button", class: "preset", dataset: { preset: key }, onclick: () => applyPreset(key) },
      el("strong", {}, p.label, p.default ? " (default)" : ""), el("small", {}, p.summary)));

  const form = el("form", { class: "card", id: "training-form", novalidate: true },
    el("h2", {}, "New training"),
    el("div", { class: "field" }, el("label", { for: "f-dataset_id" }, "Dataset"), datasetSelect,
      el("small", { class: "help" }, props.dataset_id.description)),
    el("div", { class: "presets", role: "group", "aria-label": "presets" }, presetButtons), presetNote,
    el("div", { class: "grid2" }, TEXT_FIELDS.slice(0, 2).map((n) => control(n, props[n], schema.required.has(n)))),
    control("sample_prompts", props.sample_prompts, false),
    el("div", { class: "grid4" }, MAIN_FIELDS.map((n) => control(n, props[n], schema.required.has(n)))),
    el("details", {}, el("summary", {}, "More options"),
      el("div", { class: "grid3" }, other.map((n) => control(n, props[n], schema.required.has(n))))),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Start training")), status);

  function applyPreset(key) {
    for (const [name, prop] of Object.entries(props)) {
      if (NOT_FIELDS.includes(name) || TEXT_FIELDS.includes(name)) continue;
      const v = name in presets[key].values ? presets[key].values[name] : prop.default;
      setValue(form.elements[name], v);
    }
    chosenPreset = key;
    for (const b of presetButtons) b.classList.toggle("active", b.dataset.preset === key);
    const v = readValues(form, props);
    presetNote.textContent = `${presets[key].label}: ${v.resolution} px, rank ${v.rank}, ${v.steps} steps, `
      + `learning rate ${v.learning_rate}` + " — change any field below.";
  }
  applyPreset(defaultPreset);
  form.elements.trigger.placeholder = "e.g. sks style";
  form.elements.sample_prompts.placeholder = "one per line, e.g. sks style, a lighthouse at dusk";

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    // every field is sent as shown; the preset's name goes along so the job records where its values came from
    const body = { dataset_id: datasetSelect.value, preset: chosenPreset, ...readValues(form, props) };
    clear(status);
    form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
    try {
      const job = await api("/v1/trainings", { method: "POST", json: body });
      onSubmitted(job);
    } catch (err) {
      // mark each field the API named (its `field` is the JSON key, or "sample_prompts[0]")
      for (const d of [...err.details, { field: err.field }]) {
        const name = d.field && d.field.split(/[.[]/)[0];
        if (name && form.elements[name]) form.elements[name].classList.add("invalid");
      }
      clear(status, errorBox(err));
    }
  });
  return form;
}

function previewGrid(job, grid) {
  // progress events arrive several times a second: rebuild the images only when a preview was added
  const key = `${job.previews.length}`;
  if (grid.dataset.shown === key) return;
  grid.dataset.shown = key;
  const byStep = new Map();
  for (const p of job.previews) (byStep.get(p.step) || byStep.set(p.step, []).get(p.step)).push(p);
  const steps = [...byStep.keys()].sort((a, b) => b - a);
  clear(grid, steps.length ? steps.map((step) => el("div", { class: "preview-step" },
    el("h4", {}, `step ${step}`),
    el("div", { class: "preview-row" }, byStep.get(step).map((p) => el("figure", { class: "preview", dataset: { step, index: p.index } },
      authImage(p.url, `step ${step}: ${p.prompt}`, blobUrl),
      el("div", { class: "halves" }, el("span", {}, "LoRA on"), el("span", {}, "LoRA off")),
      el("figcaption", {}, p.prompt))))))
    : el("p", { class: "muted" }, job.params.sample_every && job.params.sample_prompts.length
      ? `Previews appear every ${job.params.sample_every} steps.` : "This job renders no previews."));
}

async function detail(root, id) {
  const head = el("div", { class: "job-head" });
  const facts = el("dl", { class: "facts wide" });
  const bar = el("div");
  const canvas = el("canvas", { class: "loss", id: "loss-chart", height: 240 });
  const grid = el("div", { class: "previews", id: "previews" });
  const ending = el("div", { id: "job-end" });
  const streamNote = el("span", { class: "muted small", id: "stream-state" }, "connecting…");
  let job = null;
  const chart = new LossChart(canvas, 0);
  chart.points = curves.get(id) || [];
  const record = (step, loss) => { chart.add(step, loss); curves.set(id, chart.points); };

  let headFor = null;  // what the head was last built from
  function showHead() {
    clear(head, el("h2", {}, job.name, " ", badge(job.status)),
      ACTIVE.has(job.status) ? el("button", { class: "danger", id: "cancel", disabled: job.cancel_requested,
        onclick: async (e) => {
          e.target.disabled = true;
          try { job = { ...job, ...(await api(`/v1/trainings/${id}/cancel`, { method: "POST" })) }; show(); }
          catch (err) { head.append(errorBox(err)); }
        } }, job.cancel_requested ? "Stopping…" : "Cancel") : null);
  }

  function show() {
    const p = job.progress;
    chart.totalSteps = p.total_steps;
    // The head (title, badge, Cancel) is rebuilt only when it changes: progress events come every step, and a
    // button replaced between a person's mouse-down and mouse-up loses the click.
    const key = JSON.stringify([job.name, job.status, job.cancel_requested]);
    if (key !== headFor) { headFor = key; showHead(); }
    // before its first step a job may be preparing (the base model drawing the prior images): the bar says so,
    // or the job looks stuck at step 0
    const preparing = job.status === "running" && p.phase && !p.step ? p.phase : null;
    clear(facts, [["Step", `${p.step} / ${p.total_steps}`], ["Loss", p.loss != null ? p.loss.toFixed(4) : "–"],
      ["Speed", p.seconds_per_step ? `${p.seconds_per_step.toFixed(2)} s/step` : "–"],
      ["ETA", job.status === "running" ? duration(p.eta_seconds) : "–"], ["Trigger", job.trigger],
      ["Started", when(job.started_at) || "waiting for a worker"], ["Attempt", String(job.attempt)]]
      .map(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { fact: k.toLowerCase() } }, v)]));
    clear(bar, progressBar(p.total_steps ? p.step / p.total_steps : 0,
      preparing || `${Math.round(100 * (p.total_steps ? p.step / p.total_steps : 0))}%`));
    previewGrid(job, grid);
    chart.draw();
  }

  async function showEnd() {
    if (job.status === "succeeded" && job.lora_id) {
      const lora = await api(`/v1/loras/${job.lora_id}`);
      clear(ending, el("div", { class: "ok" }, el("strong", {}, "Done. Your LoRA:"), downloadButtons(lora),
        el("a", { class: "button primary", href: `#generate?lora=${lora.id}` }, "Generate with it →")));
    } else if (job.status === "failed") {
      clear(ending, errorBox({ message: `Failed: ${job.error || "no reason recorded"}` }));
    } else if (job.status === "canceled") {
      clear(ending, el("p", { class: "muted" }, "Canceled."));
    }
  }

  clear(root, el("p", {}, el("a", { href: "#trainings" }, "← all trainings")),
    el("section", { class: "card", id: "job" }, head, bar, facts,
      el("h3", {}, "Loss ", streamNote), canvas,
      el("p", { class: "muted small" }, "Smoothed training loss as reported live; the curve starts when this tab first follows the job."),
      ending, el("h3", {}, "Previews"), grid));

  const stop = follow(`/v1/trainings/${id}/events`, (event, data) => {
    streamNote.textContent = "live";
    if (event === "snapshot") {
      job = data;
      if (job.progress.step) record(job.progress.step, job.progress.loss);
      show();
      if (!ACTIVE.has(job.status)) { streamNote.textContent = "finished"; showEnd(); }
    } else if (!job) {
      return;
    } else if (event === "progress") {
      job.progress = { ...job.progress, ...data };
      if (job.status === "queued") job.status = "running";
      record(data.step, data.loss);
      show();
    } else if (event === "preview") {
      if (!job.previews.some((p) => p.step === data.step && p.index === data.index)) {
        job.previews.push({ ...data, prompt: data.prompt || job.params.sample_prompts[data.index] || "" });
      }
      previewGrid(job, grid);
    } else if (event === "status") {
      job.status = data.status;
      show();
    }
  }, (err) => {
    if (err.status >= 400 && err.status < 500) clear(root, el("p", {}, el("a", { href: "#trainings" }, "← all trainings")), errorBox(err));
    else streamNote.textContent = `reconnecting (${err.message})`;
  });
  const redraw = () => chart.draw();
  window.addEventListener("resize", redraw);
  return () => { stop(); window.removeEventListener("resize", redraw); };
}

async function list(root, params) {
  const table = el("div", { class: "list" });
  let timer = null, left = false;
  async function refresh() {
    if (left) return;
    try {
      const page = await api("/v1/trainings?limit=50");
      clear(table, page.data.length ? el("table", { class: "table", id: "training-table" },
        el("thead", {}, el("tr", {}, ["Name", "Status", "Progress", "Loss", "ETA", "Created"].map((h) => el("th", {}, h)))),
        el("tbody", {}, page.data.map((j) => el("tr", { class: "clickable", dataset: { id: j.id },
            onclick: () => { location.hash = `#trainings/${j.id}`; } },
          el("td", {}, el("a", { href: `#trainings/${j.id}` }, j.name)), el("td", {}, badge(j.status)),
          el("td", {}, progressBar(j.progress.total_steps ? j.progress.step / j.progress.total_steps : 0,
            j.progress.phase && !j.progress.step ? j.progress.phase : `${j.progress.step} / ${j.progress.total_steps}`)),
          el("td", {}, j.progress.loss != null ? j.progress.loss.toFixed(4) : "–"),
          el("td", {}, j.status === "running" ? duration(j.progress.eta_seconds) : "–"), el("td", {}, when(j.created_at))))))
        : el("p", { class: "muted" }, "No trainings yet."));
      // poll only while something moves; a finished list does not change by itself
      timer = page.data.some((j) => ACTIVE.has(j.status)) ? setTimeout(refresh, 3000) : null;
    } catch (err) { clear(table, errorBox(err)); }
  }
  const formSlot = el("div");
  clear(root, formSlot, el("section", { class: "card" }, el("h2", {}, "Trainings"), table));
  try {
    formSlot.append(await trainingForm(params.get("dataset"), (job) => { location.hash = `#trainings/${job.id}`; }));
  } catch (err) { formSlot.append(errorBox(err)); }
  refresh();
  return () => { left = true; clearTimeout(timer); };
}

export function render(root, rest, params) {
  return rest ? detail(root, rest) : list(root, params);
}
