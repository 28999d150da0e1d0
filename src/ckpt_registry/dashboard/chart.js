// One metric's curve against step, drawn with uPlot: the best and the latest checkpoint marked,
// values shown on hover, a drag to zoom into a step range, a log scale on demand.

import uPlot from "./vendor/uplot-1.6.32/uPlot.esm.js";

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

// Insert the point (step, value) into sorted columns unless that step is there already.
function withPoint(steps, values, step, value) {
  if (step === null || step === undefined) return;
  let index = steps.findIndex((s) => s >= step);
  if (index === -1) index = steps.length;
  if (steps[index] === step) return;
  steps.splice(index, 0, step);
  values.splice(index, 0, value);
}

function marks(steps, step) {
  return steps.map((s) => (s === step.at ? step.value : null));
}

// `series` is the API's answer; `best` and `latest` are {at, value} or null.
export function drawChart(container, { metric, series, best, latest, log, onZoom, onPick }) {
  const steps = [...series.steps];
  const values = [...series.values];
  const inRange = (mark) =>
    mark && (steps.length === 0 || (mark.at >= steps[0] && mark.at <= steps[steps.length - 1]));
  if (inRange(best)) withPoint(steps, values, best.at, best.value);
  if (inRange(latest)) withPoint(steps, values, latest.at, latest.value);
  // A log scale cannot show zero or below: those points are left out of it.
  const shown = log ? values.map((v) => (v > 0 ? v : null)) : values;
  const empty = { at: null, value: null };
  const line = css("--accent") || "#2563eb";
  const bestColor = css("--good") || "#16a34a";
  const latestColor = css("--warn") || "#d97706";
  const axis = { stroke: css("--fg") || "#222", grid: { stroke: css("--grid") || "#ddd" }, ticks: { stroke: css("--grid") || "#ddd" } };
  const width = Math.max(260, container.clientWidth || 600);
  const options = {
    width,
    height: 260,
    title: metric,
    scales: { x: { time: false }, y: { distr: log ? 3 : 1 } },
    axes: [{ ...axis, label: "step" }, { ...axis, size: 60 }],
    cursor: { drag: { x: true, y: false, setScale: false }, points: { size: 7 } },
    legend: { live: true },
    series: [
      { label: "step" },
      { label: metric, stroke: line, width: 1.5, spanGaps: true, points: { show: false } },
      {
        label: "best", stroke: bestColor, fill: bestColor, width: 0, paths: () => null,
        points: { show: true, size: 11, stroke: bestColor, fill: bestColor },
      },
      {
        label: "latest", stroke: latestColor, fill: latestColor, width: 0, paths: () => null,
        points: { show: true, size: 11, stroke: latestColor, fill: latestColor },
      },
    ],
    hooks: {
      setSelect: [
        (u) => {
          if (u.select.width < 3) return;
          const from = Math.max(0, Math.ceil(u.posToVal(u.select.left, "x")));
          const to = Math.floor(u.posToVal(u.select.left + u.select.width, "x"));
          u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
          if (to >= from) onZoom(from, to);
        },
      ],
    },
  };
  const data = [steps, shown, marks(steps, best || empty), marks(steps, latest || empty)];
  container.replaceChildren();
  const plot = new uPlot(options, data, container);
  plot.over.addEventListener("click", () => {
    const index = plot.cursor.idx;
    if (index !== null && index !== undefined && plot.select.width < 3) onPick(steps[index]);
  });
  container.dataset.points = String(series.steps.length);
  container.dataset.count = String(series.count);
  container.dataset.bestStep = best ? String(best.at) : "";
  container.dataset.latestStep = latest ? String(latest.at) : "";
  const resize = new ResizeObserver(() => {
    const next = Math.max(260, container.clientWidth);
    if (Math.abs(next - plot.width) > 4) plot.setSize({ width: next, height: 260 });
  });
  resize.observe(container);
  return { destroy: () => { resize.disconnect(); plot.destroy(); } };
}
