// The live loss curve, drawn on a <canvas> (no chart library: nothing may come from outside the service).
const PAD = { left: 56, right: 16, top: 14, bottom: 34 };

function niceTicks(lo, hi, count) {
  if (hi <= lo) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

export class LossChart {
  constructor(canvas, totalSteps) {
    this.canvas = canvas;
    this.totalSteps = totalSteps || 0;
    this.points = [];             // [step, loss], step ascending
  }

  add(step, loss) {
    if (loss == null || !isFinite(loss)) return;
    const last = this.points[this.points.length - 1];
    if (last && step <= last[0]) {
      // a resumed job reports steps again from its checkpoint: the newer values replace the old tail
      this.points = this.points.filter(([s]) => s < step);
    }
    this.points.push([step, loss]);
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth || 600, h = c.clientHeight || 240;
    if (c.width !== Math.round(w * ratio)) { c.width = Math.round(w * ratio); c.height = Math.round(h * ratio); }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(c);
    const ink = css.getPropertyValue("--ink") || "#222", faint = css.getPropertyValue("--line") || "#ddd";
    const accent = css.getPropertyValue("--accent") || "#4b5bdc";
    g.font = "12px system-ui, sans-serif";
    g.fillStyle = ink;
    // what the picture shows, for screen readers (and for tests, which cannot read pixels meaningfully)
    const lastPoint = this.points[this.points.length - 1];
    c.setAttribute("role", "img");
    c.setAttribute("aria-label", lastPoint
      ? `loss curve: ${this.points.length} reports, latest ${lastPoint[1].toFixed(4)} at step ${lastPoint[0]}`
      : "loss curve: no reports yet");
    c.dataset.points = String(this.points.length);
    const pw = w - PAD.left - PAD.right, ph = h - PAD.top - PAD.bottom;
    if (!this.points.length) {
      g.textAlign = "center";
      g.fillText("the curve appears with the first progress report", w / 2, h / 2);
      return;
    }
    // The step axis grows with the run (half again past the newest step, up to the total): a curve of the first
    // 20 steps of 5000 would otherwise be a vertical line at the left edge.
    const lastStep = this.points[this.points.length - 1][0];
    const xmax = Math.max(lastStep, Math.min(this.totalSteps || lastStep, Math.max(Math.ceil(lastStep * 1.5), 10)), 1);
    const losses = this.points.map((p) => p[1]);
    let lo = Math.min(...losses), hi = Math.max(...losses);
    const margin = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 0.1;
    lo -= margin; hi += margin;
    const x = (s) => PAD.left + (s / xmax) * pw;
    const y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * ph;

    g.strokeStyle = faint; g.lineWidth = 1;
    g.textAlign = "right"; g.textBaseline = "middle";
    for (const t of niceTicks(lo, hi, 4)) {
      if (t < lo || t > hi) continue;
      g.beginPath(); g.moveTo(PAD.left, y(t)); g.lineTo(w - PAD.right, y(t)); g.stroke();
      g.fillText(t.toPrecision(3), PAD.left - 6, y(t));
    }
    g.textAlign = "center"; g.textBaseline = "top";
    for (const t of niceTicks(0, xmax, 6)) {
      if (t > xmax) continue;
      g.fillText(String(t), x(t), h - PAD.bottom + 6);
    }
    g.fillText("step", PAD.left + pw / 2, h - 14);

    g.strokeStyle = accent; g.lineWidth = 2; g.lineJoin = "round";
    g.beginPath();
    this.points.forEach(([s, v], i) => (i ? g.lineTo(x(s), y(v)) : g.moveTo(x(s), y(v))));
    g.stroke();
    const [ls, lv] = this.points[this.points.length - 1];
    g.fillStyle = accent;
    g.beginPath(); g.arc(x(ls), y(lv), 3.5, 0, 2 * Math.PI); g.fill();
  }
}
