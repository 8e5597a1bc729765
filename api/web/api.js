// The page's only way to the service: the public HTTP API with the pasted key as the Bearer header.
const KEY_NAME = "o1lora.apiKey";

export const auth = {
  // sessionStorage: the key lives as long as the tab, and is never written to disk by the page.
  get: () => sessionStorage.getItem(KEY_NAME),
  set: (key) => sessionStorage.setItem(KEY_NAME, key.trim()),
  clear: () => sessionStorage.removeItem(KEY_NAME),
};

export class ApiError extends Error {
  // body: the API's one error shape {error: {code, message, field?, details?, report?}}
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "http_" + status;
    this.field = e.field || null;
    this.details = e.details || [];
    this.report = e.report || null;
  }
}

// Called on every 401 so the app can show the sign-in form again (a revoked or mistyped key).
let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

function headers(extra = {}) {
  const key = auth.get();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function failure(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: a proxy's page; the status says enough */ }
  const err = new ApiError(res.status, body);
  if (res.status === 401) onUnauthorized(err);
  return err;
}

// JSON in (json) or multipart (form: a FormData), JSON out; null for 204.
export async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  return res.status === 204 ? null : res.json();
}

// Multipart upload with progress: fetch() cannot report upload progress, XMLHttpRequest can.
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* keep null */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const err = new ApiError(xhr.status, body);
      if (xhr.status === 401) onUnauthorized(err);
      reject(err);
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { message: "the service did not answer" } }));
    xhr.send(form);
  });
}

// Images and files need the Bearer header too, so <img src> cannot fetch them: fetch a blob, hand out an object
// URL. Cached per path: previews and results never change once written.
const blobs = new Map();
export async function blobUrl(path) {
  if (!blobs.has(path)) {
    blobs.set(path, (async () => {
      const res = await fetch(path, { headers: headers() });
      if (!res.ok) { blobs.delete(path); throw await failure(res); }
      return URL.createObjectURL(await res.blob());
    })());
  }
  return blobs.get(path);
}

// A download that carries the header: fetch, then click a temporary link with the server's file name.
export async function download(path) {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw await failure(res);
  const disposition = res.headers.get("Content-Disposition") || "";
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await res.blob());
  a.download = m ? decodeURIComponent(m[1]) : path.split("/").pop();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
}
