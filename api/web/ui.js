// Small DOM helpers shared by the views: no framework, so the page needs no build step.

// el("button", {class: "primary", onclick}, "Save") -> <button class="primary">Save</button>
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

export function clear(node, ...children) { node.replaceChildren(...children.flat(Infinity).filter(Boolean)); return node; }

export function badge(status) { return el("span", { class: `badge ${status}`, "data-status": status }, status); }

export function bytes(n) {
  if (n == null) return "";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function duration(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// An error of the API, shown where it happened: the message, and each field at fault.
export function errorBox(err) {
  const items = (err.details || []).filter((d) => d.field && d.message !== err.message);
  return el("div", { class: "error", role: "alert" },
    el("strong", {}, err.message || String(err)),
    items.length ? el("ul", {}, items.map((d) => el("li", {}, `${d.field}: ${d.message}`))) : null);
}

export function progressBar(fraction, label) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const bar = el("div", { class: "bar" });
  bar.style.width = `${pct}%`;   // through CSSOM: the page's CSP refuses inline style attributes
  return el("div", { class: "progress", role: "progressbar", "aria-valuenow": pct.toFixed(0),
                     "aria-valuemin": "0", "aria-valuemax": "100" }, bar, el("span", {}, label || ""));
}

// An <img> filled from a path that needs the Bearer header (see api.blobUrl).
export function authImage(path, alt, loadUrl) {
  const img = el("img", { alt, loading: "lazy" });
  loadUrl(path).then((u) => { img.src = u; }).catch(() => { img.alt = `${alt} (could not load)`; });
  return img;
}
