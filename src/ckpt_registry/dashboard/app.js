// The dashboard: models, a model's curves and checkpoints, a checkpoint's files, and the delete and
// retention actions, all through the registry's JSON API. Plain ES modules, no build step.

import { ApiError, checkpoints, download, key, keyInfo, models } from "./api.js";
import { drawChart } from "./chart.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
const who = document.getElementById("who");
const forget = document.getElementById("forget");
const PAGE = 20;

let access = null; // {entity, read_only} once the key was checked
let charts = []; // the model page's live charts, destroyed when the page changes
// Each navigation's number: a page whose data arrives after the user moved on is not shown.
let generation = 0;
const stale = (token) => token !== generation;
// The models page: the filter and sort chosen, the page shown, and the list read for them.
const modelsView = { project: "", sort: "created-desc", offset: 0, loaded: null, summaries: new Map() };

// Elements ----------------------------------------------------------------------------------------

// Build an element; children are nodes or text (never parsed as HTML: data cannot inject markup).
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

const formatNumber = (value) =>
  Number.isInteger(value) ? value.toLocaleString("en-US") : Number(value.toPrecision(6)).toString();

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

const formatTime = (text) => (text ? new Date(text).toLocaleString() : "—");

// Show a page. A part left out (null: a read-only key's actions, a note not needed) is skipped,
// not written as the text "null".
function show(...parts) {
  main.replaceChildren(...parts.filter((part) => part !== null && part !== undefined));
}

function say(message) {
  status.textContent = message;
}

function confirmDialog(title, body, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-body").replaceChildren(...body);
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  document.getElementById("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

function stepList(steps, limit = 50) {
  const shown = steps.slice(0, limit).join(", ");
  return steps.length > limit ? `${shown} and ${steps.length - limit} more` : shown;
}

// The key ----------------------------------------------------------------------------------------

function keyForm(message) {
  access = null;
  who.textContent = "";
  forget.hidden = true;
  const input = h("input", { id: "key-input", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h(
    "form",
    { id: "key-form", class: "card narrow" },
    h("h1", {}, "Open the dashboard"),
    message ? h("p", { class: "error", role: "alert" }, message) : null,
    h("label", { for: "key-input" }, "API key"),
    input,
    h("button", { type: "submit", class: "primary" }, "Continue"),
    h("p", { class: "muted" }, "The key stays in this tab's session storage and is sent only to this server, as a bearer header."),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    key.set(input.value.trim());
    await route();
  });
  main.replaceChildren(form);
  input.focus();
}

async function checkKey() {
  // A cheap authenticated read first: it tells a bad key (401) on every server version.
  await models.list({ limit: 1 });
  access = await keyInfo();
  who.textContent = access.entity ? `${access.entity}${access.read_only ? " (read-only)" : ""}` : "";
  forget.hidden = false;
}

forget.addEventListener("click", () => {
  key.clear();
  keyForm("The key was forgotten. Paste a key to continue.");
});

// Models -----------------------------------------------------------------------------------------

// The models API pages by creation only, so the dashboard reads every page of the entity's models
// (the project filter applied by the API) and sorts and pages them here: an entity holds tens to
// thousands of models. Past MODELS_MAX it keeps the newest and says so (docs/dashboard.md).
const MODELS_MAX = 10_000;
const MODELS_API_PAGE = 100; // the models API's largest page (contract.LIST_LIMIT_MAX)
const SUMMARY_CONCURRENCY = 6;
const collator = new Intl.Collator("en", { numeric: true });

async function loadModels(project) {
  const all = [];
  let after;
  for (;;) {
    const page = await models.list({ limit: MODELS_API_PAGE, order: "desc", project: project || undefined, after });
    all.push(...page.data);
    if (!page.has_more || !page.data.length) return { project, models: all, truncated: false };
    if (all.length >= MODELS_MAX) return { project, models: all.slice(0, MODELS_MAX), truncated: true };
    after = page.last_id;
  }
}

// Summaries of the given models not read yet, a few requests at a time. A model deleted since the
// list was read has none (null).
async function summarize(list, summaries, progress) {
  const missing = list.filter((model) => !summaries.has(model.id));
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < missing.length) {
      const model = missing[next];
      next += 1;
      try {
        summaries.set(model.id, await models.summary(model.id));
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 404)) throw error;
        summaries.set(model.id, null);
      }
      done += 1;
      progress?.(done, missing.length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(SUMMARY_CONCURRENCY, missing.length) }, worker));
}

function sortModels(list, sort, summaries) {
  const byName = (a, b) => collator.compare(a.name, b.name) || collator.compare(a.project, b.project) || a.id.localeCompare(b.id);
  if (sort === "created-asc") return [...list].reverse();
  if (sort === "name") return [...list].sort(byName);
  if (sort === "updated") {
    const updated = (model) => summaries.get(model.id)?.last_update || "";
    // Newest update first; models without checkpoints (no update) last, by name.
    return [...list].sort((a, b) => updated(b).localeCompare(updated(a)) || byName(a, b));
  }
  return list; // created-desc: the API's order
}

async function modelsPage(token) {
  const view = modelsView;
  if (view.loaded === null || view.loaded.project !== view.project) {
    view.loaded = await loadModels(view.project);
    view.summaries = new Map();
  }
  if (stale(token)) return;
  const { models: all, truncated } = view.loaded;
  if (view.sort === "updated") {
    await summarize(all, view.summaries, (done, total) => {
      if (!stale(token) && total > PAGE) say(`Reading the models' last updates: ${done} of ${total}…`);
    });
  }
  const sorted = sortModels(all, view.sort, view.summaries);
  view.offset = Math.max(0, Math.min(view.offset, Math.floor(Math.max(0, sorted.length - 1) / PAGE) * PAGE));
  const shown = sorted.slice(view.offset, view.offset + PAGE);
  await summarize(shown, view.summaries);
  if (stale(token)) return;
  const rows = shown.map((model) => ({ model, summary: view.summaries.get(model.id) }));

  const project = h("input", { id: "project-filter", type: "search", value: view.project, placeholder: "all projects" });
  const sort = h(
    "select", { id: "models-sort" },
    [["created-desc", "newest created"], ["created-asc", "oldest created"], ["name", "name"], ["updated", "last update"]].map(
      ([value, label]) => h("option", { value, selected: view.sort === value }, label),
    ),
  );
  const filters = h(
    "form", { class: "toolbar", id: "models-filter" },
    h("label", { for: "project-filter" }, "Project"), project,
    h("label", { for: "models-sort" }, "Sort by"), sort,
    h("button", { type: "submit" }, "Apply"),
  );
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const nextProject = project.value.trim();
    // Apply reads the list again: it may have changed since it was read.
    Object.assign(view, { project: nextProject, sort: sort.value, offset: 0, loaded: null });
    route();
  });

  const missing = "—";
  const table = h(
    "table", { id: "models-table" },
    h("caption", { class: "sr-only" }, "Models"),
    h("thead", {}, h("tr", {},
      ["Name", "Project", "Base model"].map((name) => h("th", { scope: "col" }, name)),
      h("th", { scope: "col", class: "num" }, "Checkpoints"),
      h("th", { scope: "col", class: "num" }, "Latest step"),
      h("th", { scope: "col" }, "Last update"),
      h("th", { scope: "col", class: "num" }, "Stored"),
    )),
    h(
      "tbody", {},
      rows.map(({ model, summary }) =>
        h(
          "tr", { dataset: { modelId: model.id } },
          h("td", {}, h("a", { href: `#/models/${model.id}` }, model.name)),
          h("td", {}, model.project),
          h("td", {}, model.base_model),
          h("td", { class: "num" }, summary ? formatNumber(summary.checkpoints) : missing),
          h("td", { class: "num" }, summary?.latest_step == null ? missing : formatNumber(summary.latest_step)),
          h("td", {}, summary ? formatTime(summary.last_update) : missing),
          summary
            ? h("td", { class: "num", title: `${summary.stored_bytes} bytes` }, summary.files ? formatBytes(summary.stored_bytes) : missing)
            : h("td", { class: "num" }, missing),
        ),
      ),
    ),
  );
  const previous = h("button", { type: "button", id: "models-prev", disabled: view.offset === 0 }, "← Previous");
  const next = h("button", { type: "button", id: "models-next", disabled: view.offset + PAGE >= sorted.length }, "Next →");
  previous.addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); route(); });
  next.addEventListener("click", () => { view.offset += PAGE; route(); });
  const range = sorted.length
    ? `${formatNumber(view.offset + 1)}–${formatNumber(view.offset + shown.length)} of ${formatNumber(sorted.length)}${truncated ? "+" : ""}`
    : "";
  if (view.sort === "updated") say("");
  show(
    h("h1", {}, "Models"),
    filters,
    truncated
      ? h("p", { class: "muted", id: "models-truncated", role: "note" },
        `There are more than ${formatNumber(MODELS_MAX)} models${view.project ? " in this project" : ""}: the ${formatNumber(MODELS_MAX)} newest created are listed, sorted and paged here. Filter by project to reach the others.`)
      : null,
    all.length ? h("div", { class: "scroll" }, table) : h("p", { class: "muted" }, "No models yet."),
    h("nav", { class: "pager", "aria-label": "Models pages" }, previous, next, h("span", { id: "models-range", class: "muted" }, range)),
  );
}

// A model ----------------------------------------------------------------------------------------

const defaultMode = (metric) => (/loss|error|perplexity|ppl|wer|cer/i.test(metric) ? "min" : "max");

// Metric names the picker offers at most: one request (the API's largest page), more than a person
// can pick from.
const METRIC_NAMES_MAX = 10_000;

async function modelPage(modelId, state, token = generation) {
  const [model, latestPage, summary, namesPage] = await Promise.all([
    models.get(modelId),
    checkpoints.list(modelId, { limit: PAGE, order: "desc" }),
    models.summary(modelId),
    checkpoints.metricNames(modelId, { limit: METRIC_NAMES_MAX }),
  ]);
  // Every name of the model, however old the checkpoints that have it; the first chart is of a
  // metric the latest checkpoints have (what the run logs now).
  const names = namesPage.data;
  const recent = latestPage.data.flatMap((row) => Object.keys(row.metrics));
  const first = recent[0] ?? names[0];
  const latest = latestPage.data[0] || null;
  if (!state.metrics) state.metrics = first === undefined ? [] : [first];
  if (!state.best && first !== undefined) state.best = { metric: first, mode: defaultMode(first) };
  state.table ??= { order: "desc", cursors: [] };

  const chartsBox = h("div", { class: "charts", id: "charts" });
  const controls = chartControls(modelId, names, state);
  const tableBox = h("section", { id: "checkpoints", "aria-labelledby": "checkpoints-title" });
  const actions = access?.read_only ? null : retentionPanel(modelId, names, state);
  if (stale(token)) return;
  show(
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Models"), " / ", model.project),
    h("h1", {}, model.name),
    h("p", { class: "muted", id: "model-facts" },
      `${model.project} · base ${model.base_model} · ${formatNumber(summary.checkpoints)} checkpoints · latest step ${latest ? formatNumber(latest.step) : "—"} · ${summary.files} files, ${formatBytes(summary.stored_bytes)} stored`),
    names.length ? controls : h("p", { class: "muted" }, "No metrics to chart yet."),
    namesPage.has_more
      ? h("p", { class: "muted", id: "metrics-truncated", role: "note" },
        `This model has more than ${formatNumber(METRIC_NAMES_MAX)} metric names: the first ${formatNumber(METRIC_NAMES_MAX)} in byte order are offered.`)
      : null,
    chartsBox,
    tableBox,
    actions,
  );
  await Promise.all([drawCharts(modelId, state, chartsBox, latest), checkpointTable(modelId, state, tableBox)]);
}

function chartControls(modelId, names, state) {
  const boxes = names.map((name, index) =>
    h("label", { class: "check" },
      h("input", { type: "checkbox", name: "metric", value: name, checked: state.metrics.includes(name), id: `metric-${index}` }),
      name),
  );
  const bestMetric = h("select", { id: "best-metric" }, names.map((name) => h("option", { value: name, selected: state.best?.metric === name }, name)));
  const bestMode = h(
    "select", { id: "best-mode" },
    h("option", { value: "max", selected: state.best?.mode === "max" }, "highest"),
    h("option", { value: "min", selected: state.best?.mode === "min" }, "lowest"),
  );
  const log = h("input", { type: "checkbox", id: "log-scale", checked: Boolean(state.log) });
  const from = h("input", { type: "number", id: "zoom-from", min: 0, step: 1, value: state.zoom?.from ?? "", placeholder: "first" });
  const to = h("input", { type: "number", id: "zoom-to", min: 0, step: 1, value: state.zoom?.to ?? "", placeholder: "last" });
  const form = h(
    "form", { class: "card controls", id: "chart-controls" },
    h("fieldset", {}, h("legend", {}, "Metrics"), boxes),
    h("div", { class: "toolbar" },
      h("label", { for: "best-metric" }, "Best by"), bestMetric,
      h("label", { for: "best-mode" }, "is"), bestMode,
      h("label", { class: "check" }, log, "Log scale"),
    ),
    h("div", { class: "toolbar" },
      h("label", { for: "zoom-from" }, "Steps from"), from,
      h("label", { for: "zoom-to" }, "to"), to,
      h("button", { type: "submit", id: "zoom-apply" }, "Show"),
      h("button", { type: "button", id: "zoom-reset" }, "All steps"),
    ),
  );
  const apply = () => {
    state.metrics = boxes.map((label) => label.firstChild).filter((box) => box.checked).map((box) => box.value);
    state.best = { metric: bestMetric.value, mode: bestMode.value };
    state.log = log.checked;
    const zoom = { from: from.value === "" ? null : Number(from.value), to: to.value === "" ? null : Number(to.value) };
    state.zoom = zoom.from === null && zoom.to === null ? null : zoom;
    modelPage(modelId, state).catch(failed);
  };
  form.addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  form.addEventListener("change", (event) => { if (event.target.type !== "number") apply(); });
  bestMetric.addEventListener("change", () => { bestMode.value = defaultMode(bestMetric.value); });
  form.querySelector("#zoom-reset").addEventListener("click", () => { from.value = ""; to.value = ""; apply(); });
  return form;
}

async function drawCharts(modelId, state, box, latest) {
  for (const chart of charts) chart.destroy();
  charts = [];
  const started = performance.now();
  const width = Math.max(320, box.clientWidth || 800);
  const range = { step_min: state.zoom?.from ?? undefined, step_max: state.zoom?.to ?? undefined };
  let best = null;
  if (state.best) {
    try {
      best = await checkpoints.best(modelId, state.best.metric, state.best.mode);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
    }
  }
  const figures = await Promise.all(
    state.metrics.map(async (metric) => {
      // About one point per pixel column: min and max of each keep the curve's envelope.
      const points = Math.min(10000, Math.max(4, 2 * Math.round(width / 2)));
      const series = await checkpoints.series(modelId, { metric, points, ...range });
      return { metric, series };
    }),
  );
  box.replaceChildren();
  for (const { metric, series } of figures) {
    const figure = h("figure", { class: "chart", dataset: { metric } });
    const plotBox = h("div", { class: "plot" });
    figure.append(plotBox, h("figcaption", { class: "muted" },
      series.count === 0 ? `No checkpoint has ${metric} in this range.` :
        `${formatNumber(series.count)} checkpoints${series.downsampled ? `, ${series.steps.length} points shown (lowest and highest of each run kept)` : ""}. Drag to zoom; click a point to open its checkpoint.`));
    box.append(figure);
    const bestMark = best && metric === state.best.metric ? { at: best.step, value: best.metrics[metric] } : null;
    const latestMark = latest && metric in latest.metrics ? { at: latest.step, value: latest.metrics[metric] } : null;
    charts.push(drawChart(plotBox, {
      metric,
      series,
      best: bestMark,
      latest: latestMark,
      log: state.log,
      onZoom: (from, to) => { state.zoom = { from, to }; modelPage(modelId, state).catch(failed); },
      onPick: (step) => { window.location.hash = `#/models/${modelId}/steps/${step}`; },
    }));
  }
  box.dataset.renderMs = String(Math.round(performance.now() - started));
  box.dataset.ready = "true";
}

async function checkpointTable(modelId, state, box) {
  const paging = state.table;
  const query = { limit: PAGE, order: paging.order };
  if (paging.cursors.length) query.after = paging.cursors.at(-1);
  const page = await checkpoints.list(modelId, query);
  const names = [...new Set(page.data.flatMap((row) => Object.keys(row.metrics)))];
  const writable = !access?.read_only;
  const order = h(
    "select", { id: "table-order" },
    h("option", { value: "desc", selected: paging.order === "desc" }, "newest first"),
    h("option", { value: "asc", selected: paging.order === "asc" }, "oldest first"),
  );
  order.addEventListener("change", () => {
    state.table = { order: order.value, cursors: [] };
    checkpointTable(modelId, state, box).catch(failed);
  });
  const table = h(
    "table", { id: "checkpoints-table" },
    h("caption", { class: "sr-only" }, "Checkpoints"),
    h("thead", {}, h("tr", {},
      writable ? h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Select")) : null,
      h("th", { scope: "col", class: "num" }, "Step"),
      names.map((name) => h("th", { scope: "col", class: "num" }, name)),
    )),
    h("tbody", {}, page.data.map((row) => h("tr", { dataset: { step: String(row.step) } },
      writable ? h("td", {}, h("input", { type: "checkbox", class: "select-step", value: String(row.step), "aria-label": `Select step ${row.step}` })) : null,
      h("td", { class: "num" }, h("a", { href: `#/models/${modelId}/checkpoints/${row.id}` }, String(row.step))),
      names.map((name) => h("td", { class: "num" }, name in row.metrics ? formatNumber(row.metrics[name]) : "")),
    ))),
  );
  const previous = h("button", { type: "button", id: "table-prev", disabled: paging.cursors.length === 0 }, "← Previous");
  const next = h("button", { type: "button", id: "table-next", disabled: !page.has_more }, "Next →");
  previous.addEventListener("click", () => { paging.cursors.pop(); checkpointTable(modelId, state, box).catch(failed); });
  next.addEventListener("click", () => { paging.cursors.push(page.last_id); checkpointTable(modelId, state, box).catch(failed); });
  const remove = writable ? h("button", { type: "button", id: "delete-selected", class: "danger" }, "Delete selected") : null;
  remove?.addEventListener("click", async () => {
    const steps = [...table.querySelectorAll(".select-step:checked")].map((box) => Number(box.value));
    if (!steps.length) { say("Select the checkpoints to delete first."); return; }
    const ok = await confirmDialog(
      `Delete ${steps.length} checkpoint${steps.length > 1 ? "s" : ""}?`,
      [h("p", {}, `Steps ${stepList(steps)} and their files will be deleted. This cannot be undone.`)],
      "Delete",
    );
    if (!ok) return;
    const result = await checkpoints.remove(modelId, steps);
    say(`Deleted ${result.deleted_count} checkpoint(s)${result.not_found_steps.length ? `; not found: ${result.not_found_steps.join(", ")}` : ""}.`);
    await modelPage(modelId, state);
  });
  box.replaceChildren(
    h("h2", { id: "checkpoints-title" }, "Checkpoints"),
    h("div", { class: "toolbar" }, h("label", { for: "table-order" }, "Order"), order, remove),
    page.data.length ? h("div", { class: "scroll" }, table) : h("p", { class: "muted" }, "No checkpoints."),
    h("nav", { class: "pager", "aria-label": "Checkpoint pages" }, previous, next),
  );
}

function retentionPanel(modelId, names, state) {
  const latest = h("input", { type: "number", id: "keep-latest", min: 0, step: 1, value: 3, required: true });
  const bestK = h("input", { type: "number", id: "keep-best", min: 0, step: 1, value: names.length ? 1 : 0, required: true });
  const metric = h("select", { id: "keep-metric" }, names.map((name) => h("option", { value: name, selected: state.best?.metric === name }, name)));
  const mode = h(
    "select", { id: "keep-mode" },
    h("option", { value: "max", selected: state.best?.mode !== "min" }, "highest"),
    h("option", { value: "min", selected: state.best?.mode === "min" }, "lowest"),
  );
  const result = h("div", { id: "retention-result", "aria-live": "polite" });
  const form = h(
    "form", { class: "card", id: "retention-form", "aria-labelledby": "retention-title" },
    h("h2", { id: "retention-title" }, "Retention"),
    h("div", { class: "toolbar" },
      h("label", { for: "keep-latest" }, "Keep the latest"), latest,
      h("label", { for: "keep-best" }, "and the best"), bestK,
      h("label", { for: "keep-metric" }, "by"), metric,
      h("label", { for: "keep-mode" }, "being"), mode,
      h("button", { type: "submit", id: "retention-preview" }, "Preview"),
    ),
    result,
  );
  const request = () => ({
    keep_latest: Number(latest.value),
    keep_best: names.length && Number(bestK.value) > 0 ? { metric: metric.value, mode: mode.value, k: Number(bestK.value) } : null,
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = request();
    try {
      const preview = await checkpoints.retention(modelId, { ...body, dry_run: true });
      const apply = h("button", { type: "button", id: "retention-apply", class: "danger", disabled: preview.deleted_steps.length === 0 }, "Apply…");
      result.replaceChildren(
        h("p", { id: "retention-summary", dataset: { freedBytes: String(preview.freed_bytes), steps: preview.deleted_steps.join(",") } },
          preview.deleted_steps.length
            ? `Would delete ${preview.deleted_steps.length} checkpoint(s): steps ${stepList(preview.deleted_steps)}; frees ${formatBytes(preview.freed_bytes)}. Keeps ${preview.kept_steps.length}.`
            : "Nothing would be deleted."),
        apply,
      );
      apply.addEventListener("click", async () => {
        const ok = await confirmDialog(
          `Delete ${preview.deleted_steps.length} checkpoint(s)?`,
          [h("p", {}, `Steps ${stepList(preview.deleted_steps)} will be deleted (${formatBytes(preview.freed_bytes)} freed). Checkpoints registered since the preview are kept.`)],
          "Apply retention",
        );
        if (!ok) return;
        const done = await checkpoints.retention(modelId, { ...body, dry_run: false });
        say(`Retention deleted ${done.deleted_steps.length} checkpoint(s), freed ${formatBytes(done.freed_bytes)}.`);
        state.table = { order: state.table.order, cursors: [] };
        await modelPage(modelId, state);
      });
    } catch (error) {
      failed(error);
    }
  });
  return form;
}

// A checkpoint -----------------------------------------------------------------------------------

async function checkpointPage(modelId, checkpoint, token) {
  const model = await models.get(modelId);
  const files = [];
  let after;
  for (let pages = 0; pages < 10; pages += 1) {
    const page = await checkpoints.files(modelId, checkpoint.id, { after });
    files.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data.at(-1).path;
  }
  const writable = !access?.read_only;
  const remove = writable ? h("button", { type: "button", id: "delete-checkpoint", class: "danger" }, "Delete this checkpoint") : null;
  if (stale(token)) return;
  remove?.addEventListener("click", async () => {
    const ok = await confirmDialog(`Delete step ${checkpoint.step}?`, [h("p", {}, `Step ${checkpoint.step} of ${model.name} and its files will be deleted.`)], "Delete");
    if (!ok) return;
    await checkpoints.remove(modelId, [checkpoint.step]);
    say(`Deleted step ${checkpoint.step}.`);
    window.location.hash = `#/models/${modelId}`;
  });
  show(
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Models"), " / ", h("a", { href: `#/models/${modelId}` }, model.name)),
    h("h1", { id: "checkpoint-title" }, `Step ${checkpoint.step}`),
    h("dl", { class: "facts" },
      h("dt", {}, "Id"), h("dd", { class: "mono" }, checkpoint.id),
      h("dt", {}, "Created"), h("dd", {}, formatTime(checkpoint.created_at)),
      h("dt", {}, "Updated"), h("dd", {}, formatTime(checkpoint.updated_at)),
      h("dt", {}, "Files"), h("dd", {}, `${checkpoint.files} (${formatBytes(checkpoint.size_bytes)})`),
    ),
    h("h2", {}, "Metrics"),
    Object.keys(checkpoint.metrics).length
      ? h("table", { id: "metrics-table" }, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Metric"), h("th", { scope: "col", class: "num" }, "Value"))),
        h("tbody", {}, Object.entries(checkpoint.metrics).map(([name, value]) => h("tr", {}, h("td", {}, name), h("td", { class: "num" }, String(value))))))
      : h("p", { class: "muted" }, "No metrics."),
    h("h2", {}, "Files"),
    files.length
      ? h("div", { class: "scroll" }, h("table", { id: "files-table" },
        h("thead", {}, h("tr", {}, ["Path", "Size", "sha256", ""].map((name) => h("th", { scope: "col", class: name === "Size" ? "num" : null }, name)))),
        h("tbody", {}, files.map((file) => {
          const button = h("button", { type: "button", class: "download", "aria-label": `Download ${file.path}` }, "Download");
          button.addEventListener("click", () =>
            download(checkpoints.filePath(modelId, checkpoint.id, file.path), file.path.split("/").at(-1)).catch(failed));
          return h("tr", { dataset: { path: file.path } },
            h("td", { class: "mono" }, file.path),
            h("td", { class: "num", title: `${file.size_bytes} bytes` }, formatBytes(file.size_bytes)),
            h("td", { class: "mono hash" }, file.sha256),
            h("td", {}, button));
        }))))
      : h("p", { class: "muted" }, "No files."),
    remove,
  );
}

// Routing ----------------------------------------------------------------------------------------

function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    key.clear();
    keyForm(`This key was not accepted: ${error.message}. Paste a valid key.`);
    return;
  }
  const text = error instanceof ApiError ? `${error.message} (HTTP ${error.status})` : String(error);
  say(text);
  main.prepend(h("p", { class: "error", role: "alert" }, text));
}

const modelStates = new Map();

async function route() {
  generation += 1;
  const token = generation;
  for (const chart of charts) chart.destroy();
  charts = [];
  if (!key.get()) {
    keyForm(null);
    return;
  }
  try {
    if (access === null) await checkKey();
    const parts = window.location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    if (parts[0] === "models" && parts[1]) {
      // Back on the models page, the list is read again: this page may have deleted checkpoints.
      modelsView.loaded = null;
      const modelId = parts[1];
      if (parts[2] === "checkpoints" && parts[3]) {
        await checkpointPage(modelId, await checkpoints.get(modelId, parts[3]), token);
      } else if (parts[2] === "steps" && parts[3]) {
        await checkpointPage(modelId, await checkpoints.atStep(modelId, parts[3]), token);
      } else {
        if (!modelStates.has(modelId)) modelStates.set(modelId, {});
        await modelPage(modelId, modelStates.get(modelId), token);
      }
    } else {
      await modelsPage(token);
    }
    if (stale(token)) return;
    main.dataset.page = parts[0] === "models" ? (parts[2] ? "checkpoint" : "model") : "models";
  } catch (error) {
    if (stale(token)) return;
    main.replaceChildren();
    failed(error);
  }
}

window.addEventListener("hashchange", () => { route(); main.focus({ preventScroll: true }); });
// Charts take their colours when drawn: draw again when the system turns light or dark.
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => route());
route();
