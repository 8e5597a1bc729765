// LoRAs: the list, import of a file from another tool, and downloads in each format the service converts to.
import { api, download, upload } from "./api.js";
import { bytes, clear, el, errorBox, when } from "./ui.js";

const FORMAT_HELP = {
  comfyui: "ComfyUI", musubi: "musubi-tuner", diffsynth: "DiffSynth-Studio", peft: "PEFT (.zip)",
  original: "as uploaded",
};

// One button per format the LoRA offers (its `downloads` map); comfyui / musubi / diffsynth files are bf16
// unless "fp32" is ticked.
export function downloadButtons(lora) {
  const status = el("span", { class: "muted" });
  const fp32 = el("input", { type: "checkbox", class: "fp32" });
  const buttons = Object.entries(lora.downloads || {}).map(([fmt, path]) =>
    el("button", { type: "button", class: "secondary small", dataset: { format: fmt },
                   title: `download for ${FORMAT_HELP[fmt] || fmt}`,
                   onclick: async () => {
                     const url = fp32.checked && !["peft", "original"].includes(fmt) ? `${path}${path.includes("?") ? "&" : "?"}dtype=fp32` : path;
                     status.textContent = "preparing…";
                     try { await download(url); status.textContent = ""; } catch (err) { status.textContent = err.message; }
                   } }, `⬇ ${FORMAT_HELP[fmt] || fmt}`));
  return el("div", { class: "downloads" }, buttons,
    el("label", { class: "check small", title: "full-precision weights instead of bf16" }, fp32, " fp32"), status);
}

function importForm(onDone) {
  const status = el("div");
  const form = el("form", { class: "card", id: "lora-import" },
    el("h2", {}, "Import a LoRA"),
    el("p", { class: "muted" }, "A .safetensors file from PEFT, ComfyUI, musubi-tuner or DiffSynth-Studio. It is checked "
      + "against the base model; files whose modules do not fit are refused, naming the first bad key."),
    el("div", { class: "grid3" },
      el("div", { class: "field" }, el("label", { for: "lora-file" }, "File"),
        el("input", { id: "lora-file", name: "file", type: "file", accept: ".safetensors", required: true })),
      el("div", { class: "field" }, el("label", { for: "lora-name" }, "Name"),
        el("input", { id: "lora-name", name: "name", placeholder: "default: the file name" })),
      el("div", { class: "field" }, el("label", { for: "lora-trigger" }, "Trigger phrase"),
        el("input", { id: "lora-trigger", name: "trigger", placeholder: "optional" }))),
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "allow_partial" }),
      " keep the modules that fit when some do not (they are listed in the LoRA's metadata)"),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Import")), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = new FormData();
    body.append("file", form.elements.file.files[0]);
    for (const k of ["name", "trigger"]) if (form.elements[k].value.trim()) body.append(k, form.elements[k].value.trim());
    body.append("allow_partial", form.elements.allow_partial.checked ? "true" : "false");
    clear(status, el("p", { class: "muted" }, "checking the file…"));
    try {
      const lora = await upload("/v1/loras", body);
      clear(status, el("p", { class: "ok" }, `Imported “${lora.name}” (${lora.format}, rank ${lora.rank ?? "?"}).`));
      form.reset();
      onDone();
    } catch (err) { clear(status, errorBox(err)); }
  });
  return form;
}

export async function render(root) {
  const list = el("div", { class: "list" });
  async function refresh() {
    try {
      const page = await api("/v1/loras?limit=100");
      clear(list, page.data.length ? el("table", { class: "table", id: "lora-table" },
        el("thead", {}, el("tr", {}, ["Name", "Source", "Rank", "Trigger", "Size", "Created", "Download"].map((h) => el("th", {}, h)))),
        el("tbody", {}, page.data.map((l) => el("tr", { dataset: { id: l.id } },
          el("td", {}, el("strong", {}, l.name), el("div", { class: "muted mono" }, l.id)),
          el("td", {}, l.source === "trained" && l.training_job_id
            ? el("a", { href: `#trainings/${l.training_job_id}` }, "trained") : `${l.source} (${l.format})`),
          el("td", {}, String(l.rank ?? "–")), el("td", {}, l.trigger || "–"), el("td", {}, bytes(l.size_bytes)),
          el("td", {}, when(l.created_at)), el("td", {}, downloadButtons(l))))))
        : el("p", { class: "muted" }, "No LoRAs yet: train one, or import a file."));
    } catch (err) { clear(list, errorBox(err)); }
  }
  clear(root, el("section", { class: "card" }, el("h2", {}, "Your LoRAs"), list), importForm(refresh));
  refresh();
}
