// Server-Sent Events read with fetch(): EventSource cannot send the Authorization header, fetch can.
import { ApiError, auth } from "./api.js";

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const RETRY_MS = 2000;

// Split one SSE text block into {event, data}; comments (": keepalive") give null.
export function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try { return { event, data: JSON.parse(data.join("\n")) }; } catch { return { event, data: data.join("\n") }; }
}

// Follow a job's /events until it ends: onEvent(event, data) for each event. The stream starts and ends with
// a `snapshot` (the job as the database has it); a dropped connection is reopened while the job still runs,
// and the new stream's snapshot catches up whatever was missed. Returns stop().
export function follow(path, onEvent, onError = () => {}) {
  const controller = new AbortController();
  let ended = false;

  async function once() {
    const res = await fetch(path, {
      headers: { Authorization: `Bearer ${auth.get()}`, Accept: "text/event-stream" },
      signal: controller.signal,
    });
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch { /* no body */ }
      throw new ApiError(res.status, body);
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const ev = parseBlock(block);
        if (!ev) continue;
        const status = ev.data && ev.data.status;
        if ((ev.event === "snapshot" || ev.event === "status") && TERMINAL.has(status)) ended = true;
        onEvent(ev.event, ev.data);
      }
    }
  }

  (async () => {
    while (!ended && !controller.signal.aborted) {
      try {
        await once();
      } catch (err) {
        if (controller.signal.aborted) return;
        onError(err);
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) return;  // 401/404: retrying won't help
      }
      if (!ended) await new Promise((r) => setTimeout(r, RETRY_MS));
    }
  })();
  return () => controller.abort();
}
