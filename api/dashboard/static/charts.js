// Live metric charts on uPlot (vendored from npm, see scripts/vendor-dashboard.sh).
import uPlot from "./vendor/uplot/uPlot.esm.js";

/** At most this many points are drawn per series; longer runs are min/max bucketed. */
export const MAX_POINTS = 2000;

/**
 * Min/max bucketing: split the series into MAX_POINTS/2 buckets and keep each bucket's lowest and
 * highest point (in step order), so spikes survive while the point count stays bounded.
 */
export function downsample(xs, ys, max = MAX_POINTS) {
  const n = xs.length;
  if (n <= max) return [xs, ys];
  const buckets = Math.floor(max / 2);
  const size = n / buckets;
  const ox = [];
  const oy = [];
  for (let b = 0; b < buckets; b++) {
    const from = Math.floor(b * size);
    const to = Math.min(n, Math.floor((b + 1) * size));
    let lo = from;
    let hi = from;
    for (let i = from; i < to; i++) {
      if (ys[i] < ys[lo]) lo = i;
      if (ys[i] > ys[hi]) hi = i;
    }
    for (const i of lo === hi ? [lo] : lo < hi ? [lo, hi] : [hi, lo]) {
      ox.push(xs[i]);
      oy.push(ys[i]);
    }
  }
  return [ox, oy];
}

/** metric name -> {xs, ys} in step order; a step seen again (a resumed attempt) keeps the later value. */
export class MetricStore {
  constructor() {
    this.series = new Map();
  }
  add(step, values) {
    for (const [name, value] of Object.entries(values || {})) {
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      let s = this.series.get(name);
      if (!s) this.series.set(name, (s = { xs: [], ys: [] }));
      const last = s.xs.length - 1;
      if (last < 0 || step > s.xs[last]) {
        s.xs.push(step);
        s.ys.push(value);
        continue;
      }
      let lo = 0;
      let hi = s.xs.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (s.xs[mid] < step) lo = mid + 1;
        else hi = mid;
      }
      if (s.xs[lo] === step) s.ys[lo] = value;
      else {
        s.xs.splice(lo, 0, step);
        s.ys.splice(lo, 0, value);
      }
    }
  }
  names() {
    return [...this.series.keys()];
  }
}

const DPO_KEYS = /^(eval\/)?rewards\/(margins|accuracies|chosen|rejected)$/;

/** The charts of a job page: each takes the metrics that match it (eval/ twins drawn beside). */
export const CHARTS = [
  { id: "loss", title: "Loss", match: (n) => n === "loss" || n === "eval/loss" },
  { id: "lr", title: "Learning rate", match: (n) => n === "learning_rate" },
  { id: "grad", title: "Grad norm", match: (n) => n === "grad_norm" },
  { id: "tps", title: "Tokens / s", match: (n) => n === "tokens_per_second" },
  { id: "margins", title: "DPO reward margin", match: (n) => /^(eval\/)?rewards\/margins$/.test(n) },
  { id: "accuracies", title: "DPO reward accuracy", match: (n) => /^(eval\/)?rewards\/accuracies$/.test(n) },
  {
    id: "reward",
    title: "Reward (total and per component)",
    match: (n) => n === "reward" || (n.startsWith("rewards/") && !DPO_KEYS.test(n)),
  },
  { id: "kl", title: "KL", match: (n) => n === "kl" || n === "objective/kl" },
  { id: "clip", title: "Clip fraction", match: (n) => n === "clip_ratio" || n === "policy/clipfrac" },
  { id: "length", title: "Completion length", match: (n) => n === "completions/mean_length" },
];

/** Axis and legend numbers: 3 significant digits, exponents for tiny or huge values (learning rates). */
export function fmt(v) {
  if (v == null || !Number.isFinite(v)) return "--";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-3 || a >= 1e6) return v.toExponential(1).replace("e+", "e");
  return String(Number(v.toPrecision(3)));
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

/** One uPlot chart of several series against the step, redrawn from a MetricStore. */
export class Chart {
  constructor(container, title, names) {
    this.names = names;
    this.root = document.createElement("figure");
    this.root.className = "chart";
    this.root.dataset.chart = title;
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    this.points = document.createElement("span");
    this.points.className = "muted points";
    caption.append(" ", this.points);
    this.root.append(caption);
    container.append(this.root);
    this.plot = null;
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.root);
  }

  width() {
    return Math.max(200, this.root.clientWidth - 8);
  }

  fit() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: 200 });
  }

  update(store) {
    const tables = this.names.map((n) => {
      const s = store.series.get(n) || { xs: [], ys: [] };
      return downsample(s.xs, s.ys);
    });
    const drawn = tables.reduce((sum, t) => sum + t[0].length, 0);
    const total = this.names.reduce((sum, n) => sum + (store.series.get(n)?.xs.length || 0), 0);
    this.points.textContent = drawn < total ? `${drawn} of ${total} points` : `${total} points`;
    this.root.dataset.points = String(total);
    const data = tables.length === 1 ? [tables[0][0], tables[0][1]] : uPlot.join(tables);
    if (!this.plot) {
      const opts = {
        width: this.width(),
        height: 200,
        scales: { x: { time: false } },
        axes: [{ label: "step", size: 36 }, { size: 60, values: (u, splits) => splits.map(fmt) }],
        legend: { live: true },
        series: [
          { label: "step" },
          ...this.names.map((n, i) => ({
            label: n,
            value: (u, v) => fmt(v),
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            dash: n.startsWith("eval/") ? [6, 4] : undefined,
            spanGaps: true,
            points: { show: data[0].length < 60 },
          })),
        ],
      };
      this.plot = new uPlot(opts, data, this.root);
    } else {
      this.plot.setData(data);
    }
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
    this.root.remove();
  }
}
