// Datasets: drop a zip, images or a whole folder; the upload answers with the trainer's validation report.
import { api, upload } from "./api.js";
import { bytes, clear, el, errorBox, progressBar, when } from "./ui.js";

// Everything under a dropped folder, with its relative path (the server pairs a.png with a.txt by name).
async function filesOf(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const out = [];
  async function walk(entry) {
    if (entry.isFile) {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      file.relPath = entry.fullPath.replace(/^\//, "");   // keeps sub-folders apart (a/1.png, b/1.png)
      out.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {       // readEntries answers in batches until an empty one
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const e of batch) await walk(e);
      }
    }
  }
  for (const e of entries) await walk(e);
  return out.filter((f) => !f.name.startsWith("."));
}

function issueList(title, issues) {
  if (!issues || !issues.length) return null;
  return el("div", { class: "issues" }, el("h4", {}, `${title} (${issues.length})`),
    el("ul", {}, issues.slice(0, 50).map((i) => el("li", {}, typeof i === "string" ? i : `${i.name}: ${i.reason}`))));
}

// The validator's report, readable: what will train, then warnings, then each file that will not.
export function reportView(report) {
  const sizes = report.sizes || {};
  const facts = [
    ["Images that train", report.usable], ["With a caption", report.captioned], ["Files looked at", report.files],
    ["Smallest", sizes.min && sizes.min.join("×")], ["Largest", sizes.max && sizes.max.join("×")],
    ["Aspect buckets", Object.entries(report.buckets || {}).map(([k, n]) => `${k} ×${n}`).join(", ")],
  ].filter(([, v]) => v !== undefined && v !== null && v !== "");
  return el("div", { class: "report" },
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    (report.warnings || []).length
      ? el("div", { class: "warnings" }, report.warnings.map((w) => el("p", { class: "warning" }, w))) : null,
    issueList("Unsafe", report.unsafe), issueList("Unreadable", report.unreadable),
    issueList("Too small", report.too_small), issueList("Too large", report.huge),
    issueList("Not an image or caption", report.unsupported), issueList("Caption problems", report.caption_issues));
}

export async function render(root) {
  let chosen = [];
  const status = el("div", { class: "upload-status" });
  const list = el("div", { class: "list" });
  const picked = el("p", { class: "muted", id: "picked" }, "Nothing chosen yet.");
  const fileInput = el("input", { type: "file", multiple: true, id: "dataset-files",
                                  accept: ".png,.jpg,.jpeg,.webp,.txt,.jsonl,.zip" });
  const folderInput = el("input", { type: "file", webkitdirectory: true, id: "dataset-folder", hidden: true });
  const setChosen = (files) => {
    chosen = [...files];
    const total = chosen.reduce((n, f) => n + f.size, 0);
    picked.textContent = chosen.length
      ? `${chosen.length} file(s), ${bytes(total)}: ${chosen.slice(0, 6).map((f) => f.name).join(", ")}${chosen.length > 6 ? " …" : ""}`
      : "Nothing chosen yet.";
  };
  fileInput.addEventListener("change", () => setChosen(fileInput.files));
  folderInput.addEventListener("change", () => setChosen(folderInput.files));

  const drop = el("div", { class: "dropzone", tabindex: 0 },
    el("strong", {}, "Drop a .zip, images with .txt captions, or a folder here"),
    el("span", { class: "muted" }, "PNG, JPEG or WebP; captions as same-name .txt files or a metadata.jsonl"),
    el("div", { class: "row" }, fileInput,
      el("button", { type: "button", class: "secondary", onclick: () => folderInput.click() }, "Choose a folder…"),
      folderInput));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setChosen(await filesOf(e.dataTransfer));
  });

  const form = el("form", { class: "card", id: "dataset-form" },
    el("h2", {}, "Upload a dataset"), drop, picked,
    el("div", { class: "grid2" },
      el("div", { class: "field" }, el("label", { for: "dataset-name" }, "Name"),
        el("input", { id: "dataset-name", name: "name", placeholder: "default: the first file's name" })),
      el("div", { class: "field" }, el("label", { for: "dataset-resolution" }, "Check at resolution"),
        el("input", { id: "dataset-resolution", name: "resolution", type: "number", min: 32, max: 4096, step: 32,
                      value: 1024 }),
        el("small", { class: "help" }, "images smaller than this are kept but named in the report's warnings"))),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Upload and validate")),
    status);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!chosen.length) { clear(status, errorBox({ message: "Choose or drop some files first." })); return; }
    const body = new FormData();
    for (const f of chosen) body.append("files", f, f.relPath || f.webkitRelativePath || f.name);
    if (form.elements.name.value.trim()) body.append("name", form.elements.name.value.trim());
    body.append("resolution", form.elements.resolution.value || "1024");
    const bar = progressBar(0, "uploading…");
    clear(status, bar);
    try {
      const ds = await upload("/v1/datasets", body, (f) => clear(status, progressBar(f, f < 1 ? `uploading ${Math.round(f * 100)}%` : "validating…")));
      clear(status, el("div", { class: "ok", id: "dataset-ok" },
        el("strong", {}, `“${ds.name}” is ready: ${ds.num_images} image(s), ${ds.num_captions} captioned`),
        el("a", { href: `#trainings?dataset=${ds.id}`, class: "button primary" }, "Train on it →")),
        reportView(ds.report));
      setChosen([]);
      fileInput.value = "";
      form.elements.name.value = "";
      refresh();
    } catch (err) {
      clear(status, errorBox(err), err.report ? reportView(err.report) : null);
    }
  });

  async function refresh() {
    try {
      const page = await api("/v1/datasets?limit=100");
      clear(list, page.data.length ? el("table", { class: "table" },
        el("thead", {}, el("tr", {}, ["Name", "Images", "Captioned", "Size", "Uploaded", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, page.data.map((d) => el("tr", {},
          el("td", {}, el("details", {}, el("summary", {}, d.name), reportView(d.report))),
          el("td", {}, String(d.num_images)), el("td", {}, String(d.num_captions)), el("td", {}, bytes(d.total_bytes)),
          el("td", {}, when(d.created_at)),
          el("td", {}, el("a", { href: `#trainings?dataset=${d.id}` }, "Train"))))))
        : el("p", { class: "muted" }, "No datasets yet."));
    } catch (err) { clear(list, errorBox(err)); }
  }

  clear(root, form, el("section", { class: "card" }, el("h2", {}, "Your datasets"), list));
  refresh();
}
