// Reference images of a generation (editing, personalisation): each picked file is uploaded at once through
// POST /v1/images (the service checks it as it checks dataset images), shown as a thumbnail that can be removed,
// and the ids go in the request's `reference_images`, in order. Nothing is deleted on the service by removing.
import { blobUrl, upload } from "./api.js";
import { authImage, clear, el, errorBox } from "./ui.js";

const ACCEPT = "image/png,image/jpeg,image/webp";

// prop: the OpenAPI rule of `reference_images` (its maxItems is the limit, its description the help text).
export function referencePicker(prop) {
  const max = prop.maxItems ?? 10;
  const chosen = [];  // the uploaded images: {id, name, width, height, ...} (ReferenceImagePublic)
  const input = el("input", { type: "file", id: "reference-files", accept: ACCEPT, multiple: true,
                              "aria-describedby": "reference-help" });
  const count = el("span", { class: "muted small", id: "reference-count" });
  const thumbs = el("div", { class: "ref-thumbs", id: "reference-thumbs" });
  const status = el("div", { id: "reference-status" });

  function show() {
    count.textContent = `${chosen.length} of at most ${max}`;
    input.disabled = chosen.length >= max;
    clear(thumbs, chosen.map((img, i) => el("figure", { class: "ref-thumb", dataset: { id: img.id, index: i } },
      authImage(`/v1/images/${img.id}/file`, img.name, blobUrl),
      // below the image, not over it: a corner button would hide what sits in that corner of the reference
      el("figcaption", { title: `${img.name} (${img.width}×${img.height})` }, el("span", {}, img.name),
        el("button", { type: "button", class: "remove", title: `remove ${img.name}`, "aria-label": `remove ${img.name}`,
                       onclick: () => { chosen.splice(i, 1); clear(status); show(); } }, "×")))));
  }

  input.addEventListener("change", async () => {
    const files = [...input.files];
    input.value = "";  // the same file can be picked again
    clear(status);
    const room = max - chosen.length;
    if (files.length > room) {
      status.append(errorBox({ message: `at most ${max} reference images: ${files.length - room} file(s) not added ` +
        `(${files.slice(room).map((f) => f.name).join(", ")})` }));
    }
    for (const file of files.slice(0, Math.max(room, 0))) {
      const pending = el("figure", { class: "ref-thumb pending" }, el("span", { class: "muted small" }, `uploading ${file.name}…`));
      thumbs.append(pending);
      const form = new FormData();
      form.append("file", file, file.name);
      try {
        chosen.push(await upload("/v1/images", form));
      } catch (err) {  // the API's message names the file (type, size, pixels, unreadable)
        status.append(errorBox({ message: err.message.includes(file.name) ? err.message : `${file.name}: ${err.message}` }));
      }
      pending.remove();
      show();
    }
  });
  show();

  const node = el("div", { class: "field field-reference_images" },
    el("label", { for: "reference-files" }, "Reference images ", count), input, thumbs, status,
    el("small", { class: "help", id: "reference-help" }, `Optional: images every result is conditioned on (editing: ` +
      `the image to change, with an instruction as the prompt; personalisation: the subject). PNG, JPEG or WebP, ` +
      `uploaded as you pick them, used in this order, at most ${max}. Each one lengthens the sequence, so it ` +
      `counts towards a request's cost bound.`));
  return {
    node,
    ids: () => chosen.map((c) => c.id),
    // a refused request that names one reference (`reference_images[i]`): mark its thumbnail
    mark(err) {
      thumbs.querySelectorAll(".ref-thumb").forEach((t) => t.classList.remove("invalid"));
      const m = /^reference_images\[(\d+)\]$/.exec(err.field || "");
      if (m) thumbs.querySelector(`.ref-thumb[data-index="${m[1]}"]`)?.classList.add("invalid");
    },
  };
}

// The references a generation was made with, small, for its card in the results.
export function referenceStrip(ids) {
  if (!ids || !ids.length) return null;
  return el("div", { class: "ref-strip", title: "reference images" }, el("span", { class: "muted small" }, "references"),
    ids.map((id) => authImage(`/v1/images/${id}/file`, `reference ${id}`, blobUrl)));
}
