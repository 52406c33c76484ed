// The study page's charts, drawn as SVG from the API's JSON: the best accuracy against
// trials finished, and each trial's accuracy per epoch (a small inline curve).

import { pct, svg } from "./session.js";

const W = 560;
const H = 240;
const M = { left: 48, right: 14, top: 12, bottom: 36 };

// An accuracy axis around the values, in round steps (1, 2, 5, 10 or 20 points), at most 6 ticks.
function accuracyAxis(values) {
  const low = Math.max(0, Math.min(...values) - 0.02);
  const high = Math.min(1, Math.max(...values) + 0.01);
  const step = [0.01, 0.02, 0.05, 0.1, 0.2].find((s) => (high - low) / s <= 5) || 0.25;
  const from = Math.floor(low / step) * step;
  const to = Math.min(1, Math.max(Math.ceil(high / step) * step, from + step));
  const ticks = [];
  for (let v = from; v <= to + 1e-9; v += step) ticks.push(v);
  return { low: from, high: to, ticks };
}

// steps: [{finished, trial, val_acc}], the points where the best rose; finished: trials over now.
export function bestChart(steps, finished, budget) {
  const xMax = Math.max(budget, finished, 1);
  const axis = accuracyAxis(steps.map((s) => s.val_acc));
  const [yLow, yHigh] = [axis.low, axis.high];
  const x = (n) => M.left + (n / xMax) * (W - M.left - M.right);
  const y = (v) => H - M.bottom - ((v - yLow) / (yHigh - yLow)) * (H - M.top - M.bottom);
  const last = steps[steps.length - 1];
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`, class: "best-chart", role: "img",
    "aria-label": `Best validation accuracy ${pct(last.val_acc)} (trial ${last.trial}) after ${finished} of ${budget} trials`,
  });
  // Axes and grid: round accuracy levels, three trial counts.
  for (const v of axis.ticks) {
    chart.append(svg("line", { x1: M.left, x2: W - M.right, y1: y(v), y2: y(v), class: "grid" }),
      svg("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick",
        text: `${(v * 100).toFixed(0)} %` }));
  }
  for (const n of [0, Math.round(xMax / 2), xMax]) {
    chart.append(svg("text", { x: x(n), y: H - M.bottom + 16, "text-anchor": "middle", class: "tick", text: n }));
  }
  chart.append(
    svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }),
    svg("text", { x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle", class: "label",
      text: "trials finished" }));
  if (finished < xMax) { // where the study is now
    chart.append(svg("line", { x1: x(finished), x2: x(finished), y1: M.top, y2: H - M.bottom, class: "now" }));
  }
  // A step line: the best holds until the next trial that beats it.
  let d = `M${x(steps[0].finished)},${y(steps[0].val_acc)}`;
  for (const s of steps.slice(1)) d += ` H${x(s.finished)} V${y(s.val_acc)}`;
  d += ` H${x(finished)}`;
  chart.append(svg("path", { d, class: "best-line" }));
  for (const s of steps) {
    chart.append(svg("circle", { cx: x(s.finished), cy: y(s.val_acc), r: 3.5, class: "best-point" },
      svg("title", { text: `trial ${s.trial}: ${pct(s.val_acc, 2)}, the best after ${s.finished} finished` })));
  }
  return chart;
}

const CW = 120;
const CH = 30;

// history: [{epoch, val_acc}]; epochs: the full budget, so curves of one study share their x axis.
export function curve(history, epochs) {
  const known = history.filter((h) => h.val_acc !== null);
  const x = (e) => 2 + ((e - 1) / Math.max(epochs - 1, 1)) * (CW - 4);
  const y = (v) => CH - 2 - v * (CH - 4); // 0..100 %, the same for every row
  const lastPoint = known[known.length - 1];
  const summary = lastPoint ? `${known.length} epoch(s), last ${pct(lastPoint.val_acc)}` : "no epoch reported";
  const chart = svg("svg", { viewBox: `0 0 ${CW} ${CH}`, width: CW, height: CH, class: "curve", role: "img",
    "aria-label": `Validation accuracy per epoch: ${summary}` });
  chart.append(svg("line", { x1: 2, x2: CW - 2, y1: y(0), y2: y(0), class: "axis" }));
  if (lastPoint) {
    if (known.length > 1) {
      chart.append(svg("polyline", { points: known.map((h) => `${x(h.epoch)},${y(h.val_acc)}`).join(" "),
        class: "curve-line" }));
    }
    chart.append(svg("circle", { cx: x(lastPoint.epoch), cy: y(lastPoint.val_acc), r: 2.2, class: "curve-end" }));
  }
  const shown = known.length > 12 ? [...known.slice(0, 3), null, ...known.slice(-6)] : known;
  chart.append(svg("title", { text: shown.map((h) => (h ? `epoch ${h.epoch}: ${pct(h.val_acc)}` : "…")).join("\n")
    || summary }));
  return chart;
}
