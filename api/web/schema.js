// Field rules and help text come from the service's own OpenAPI document at run time, so the page says what
// the API says (and stays right when a field's limits or wording change).
import { el } from "./ui.js";

let documentPromise = null;
function openapi() {
  documentPromise ||= fetch("/openapi.json").then((r) => {
    if (!r.ok) throw new Error(`could not read /openapi.json (HTTP ${r.status})`);
    return r.json();
  });
  return documentPromise;
}

function resolve(doc, schema) {
  while (schema && schema.$ref) schema = schema.$ref.split("/").slice(1).reduce((o, k) => o[k], doc);
  return schema;
}

// The JSON request body schema of `POST path` (found through the path, not by a component's name).
export async function requestSchema(path) {
  const doc = await openapi();
  const body = doc.paths[path].post.requestBody.content["application/json"].schema;
  const schema = resolve(doc, body);
  const props = {};
  for (const [name, raw] of Object.entries(schema.properties)) {
    const p = resolve(doc, raw);
    // `x | None` is anyOf [x, null]: the field is optional, its rules are x's
    const inner = p.anyOf ? { ...resolve(doc, p.anyOf.find((a) => a.type !== "null")), nullable: true } : {};
    props[name] = { ...inner, ...p, type: inner.type || p.type, items: resolve(doc, inner.items || p.items) };
  }
  return { properties: props, required: new Set(schema.required || []) };
}

const LABELS = { lr_schedule: "LR schedule", sample_every: "Preview every", num_images: "Images",
                 sample_prompts: "Preview prompts", sample_steps: "Preview steps", sample_size: "Preview size",
                 caption_dropout: "Caption dropout", checkpoint_every: "Checkpoint every" };
export function label(name, prop) {
  const words = (prop && prop.title) || name.replace(/_/g, " ");
  return LABELS[name] || words.toLowerCase().replace(/^./, (c) => c.toUpperCase());   // "Batch Size" -> "Batch size"
}

// One labelled control for a schema property; its help text is the property's description.
export function control(name, prop, required) {
  const id = `f-${name}`;
  let input;
  if (prop.enum) {
    input = el("select", { id, name }, prop.enum.map((v) => el("option", { value: v }, v)));
  } else if (prop.type === "boolean") {
    input = el("input", { id, name, type: "checkbox" });
  } else if (prop.type === "string" && prop.maxLength >= 1000) {   // prompts: room for a paragraph
    input = el("textarea", { id, name, rows: 3, maxlength: prop.maxLength });
  } else if (prop.type === "array") {
    input = el("textarea", { id, name, rows: 3, placeholder: "one per line" });
  } else if (prop.type === "integer" || prop.type === "number") {
    const min = prop.minimum ?? prop.exclusiveMinimum;
    input = el("input", { id, name, type: "number", min: min ?? undefined, max: prop.maximum ?? undefined,
                          step: prop.multipleOf || (prop.type === "integer" ? 1 : "any") });
  } else {
    input = el("input", { id, name, type: "text", maxlength: prop.maxLength ?? undefined });
  }
  if (required) input.required = true;
  if (prop.nullable && prop.type !== "array") input.placeholder = "optional (see below)";
  setValue(input, prop.default);
  const help = prop.description ? el("small", { class: "help", id: `${id}-help` }, prop.description) : null;
  if (help) input.setAttribute("aria-describedby", help.id);
  const box = prop.type === "boolean"
    ? el("label", { class: "check" }, input, " ", label(name, prop))
    : el("label", { for: id }, label(name, prop));
  return el("div", { class: `field field-${name}` }, box, prop.type === "boolean" ? null : input, help);
}

export function setValue(input, v) {
  if (input.type === "checkbox") input.checked = !!v;
  else if (input.tagName === "TEXTAREA") input.value = Array.isArray(v) ? v.join("\n") : (v ?? "");
  else input.value = v ?? "";
}

// The form's values as the API wants them: numbers as numbers, empty optional fields left out.
export function readValues(form, props) {
  const out = {};
  for (const [name, prop] of Object.entries(props)) {
    const input = form.elements[name];
    if (!input) continue;
    if (prop.type === "boolean") { out[name] = input.checked; continue; }
    if (prop.type === "array") {
      const lines = input.value.split("\n").map((s) => s.trim()).filter(Boolean);
      if (lines.length) out[name] = lines;
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;             // the API's default applies
    out[name] = prop.type === "integer" ? parseInt(raw, 10) : prop.type === "number" ? Number(raw) : raw;
  }
  return out;
}
