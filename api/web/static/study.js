// One study: state and counts, the best accuracy against trials finished, the ASHA rungs,
// the top graphs drawn, and a page of trials; refreshed every few seconds while it runs.

import { bestChart, curve } from "./charts.js";
import { ApiError, FINISHED, call, el, explain, json, pct, replaceKeepingScroll, startSession, stateBadge, when }
  from "./session.js";

const root = document.getElementById("study");
const ID = root.dataset.study;
const TRAIN_DEFAULTS = JSON.parse(root.dataset.trainDefaults);
const REFRESH_MS = 3000;
const TOP_K = 3;
const TRIALS_PAGE = 25;
// The first click on a column sorts it this way: the trial number up, accuracies and epochs down.
const FIRST_DIRECTION = { number: "", val_acc: "-", epochs_done: "-" };

const view = { order: "number", state: "", offset: 0 };
let status = null;
let bestKey = null;
let timer = null;

const $ = (id) => document.getElementById(id);

// -- status -------------------------------------------------------------------------------------

function renderStatus(s) {
  document.title = `${s.name} · ktg`;
  $("study-name").textContent = s.name;
  $("study-state").replaceWith(Object.assign(stateBadge(s.state), { id: "study-state" }));
  $("study-times").textContent = `Submitted ${when(s.created_at)}` + (s.finished_at ? ` · ended ${when(s.finished_at)}` : "")
    + ` · ${s.spec.nodes} nodes · ${s.spec.dataset} · ${s.spec.epochs} epochs per trial`;
  $("study-message").hidden = !s.message;
  $("study-message").textContent = s.message || "";
  $("cancel").hidden = FINISHED.has(s.state);
  const bar = $("study-progress");
  bar.max = s.budget;
  bar.value = Math.min(s.finished, s.budget);
  $("progress-text").textContent = `${s.finished} / ${s.budget} trials finished (${Math.round(s.progress * 100)} %)`
    + ` · best val acc ${pct(s.best_val_acc)}`;
  const counts = Object.entries(s.trials).flatMap(([state, n]) => [
    el("dt", {}, stateBadge(state)), el("dd", { class: "num", text: n })]);
  $("counts").replaceChildren(...counts);
}

// Still worth polling: the study runs, or it was cancelled and Ray is still stopping its trials.
function live(s) {
  return !FINISHED.has(s.state) || (s.state === "cancelled" && ["PENDING", "RUNNING"].includes(s.ray.status));
}

// -- the best accuracy and the rungs ----------------------------------------------------------------

function renderProgress(p) {
  const chart = $("best-chart");
  if (p.best_so_far.length) replaceKeepingScroll(chart, bestChart(p.best_so_far, p.finished, status.budget));
  else chart.replaceChildren(el("p", { class: "muted", text: "No trial has finished with an accuracy yet." }));
  const rows = (p.rungs || []).map((r) => {
    const share = r.reached ? r.stopped / r.reached : 0;
    return el("tr", {},
      el("td", { class: "num", text: r.epoch }), el("td", { class: "num", text: r.reached }),
      el("td", { class: "num", text: r.stopped }),
      el("td", {}, el("span", { class: "share" },
        el("meter", { min: 0, max: 1, value: share, "aria-label": `${Math.round(share * 100)} % stopped` }),
        el("span", { class: "num", text: `${Math.round(share * 100)} %` }))));
  });
  replaceKeepingScroll(document.querySelector("#rungs tbody"), ...rows);
  $("rungs-note").textContent = p.rungs === null
    ? "The search has not recorded its rungs yet."
    : (p.rungs.length ? "" : "No rung below the full budget: every trial runs to the end. ")
      + `Full budget (${p.epochs} epochs): ${p.full_budget} trial(s) complete.`;
}

// -- the top graphs -------------------------------------------------------------------------------

function trainCommand(spec, file) {
  const parts = ["ktg train", `--graph ${file}`, `--dataset ${spec.dataset}`];
  if (spec.data_dir) parts.push(`--data-dir '${spec.data_dir.replaceAll("'", "'\\''")}'`);
  if (spec.classes) parts.push(`--classes ${spec.classes}`);
  if (spec.train_size) parts.push(`--train-size ${spec.train_size}`);
  parts.push(`--epochs ${spec.epochs}`);
  for (const [field, flag] of [["seed", "--seed"], ["batch_size", "--batch-size"], ["lr", "--lr"],
    ["warmup_steps", "--warmup-steps"]]) {
    if (field === "seed" || spec[field] !== TRAIN_DEFAULTS[field]) parts.push(`${flag} ${spec[field]}`);
  }
  return parts.join(" ");
}

// The API wants the token, so a plain link cannot fetch the file: fetch it, then save it.
async function download(event) {
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const response = await call(link.getAttribute("href").slice(document.body.dataset.api.length));
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const url = URL.createObjectURL(await response.blob());
    const save = el("a", { href: url, download: link.getAttribute("download") });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    const message = explain(error);
    if (message) link.after(el("span", { class: "error", text: ` ${message}` }));
  }
}

async function graphPicture(rank) {
  const response = await call(`/${ID}/best/${rank}.svg`);
  if (!response.ok) return el("p", { class: "muted", text: "picture not available" });
  const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
  const picture = document.importNode(doc.documentElement, true);
  picture.setAttribute("role", "img");
  picture.removeAttribute("width");
  picture.removeAttribute("height");
  return picture;
}

// A confirmed graph's mean over its seeds and its margin over training alone (search.study.confirmation):
// the verdict in words, which gives the interval where it excludes 0 and else claims no winner,
// so the interval is added to it only then.
function confirmationText(c) {
  const seeds = Object.keys(c.per_seed).length;
  const mean = `mean ${pct(c.val_acc_mean, 2)} over ${seeds} seed${seeds === 1 ? "" : "s"}`;
  const d = c.vs_independent;
  if (!d || d.excludes_zero) return `${mean} · ${c.verdict}`;
  const signed = (x) => (x === null ? "—" : `${x >= 0 ? "+" : ""}${(100 * x).toFixed(2)}`);
  return `${mean} · Δ ${signed(d.mean)} pp vs independent, ${Math.round(100 * d.confidence)}% CI `
    + `[${signed(d.ci[0])}, ${signed(d.ci[1])}] · ${c.verdict}`;
}

async function renderBest() {
  const best = await json(`/${ID}/best?k=${TOP_K}`);
  // Redrawn only when a card changes: its trial, or its confirmation (which lands after the search).
  const key = JSON.stringify(best.items.map((b) => [b.rank, b.trial, b.confirmation]));
  if (key === bestKey) return;
  const cards = await Promise.all(best.items.map(async (b) => {
    const file = `${status.name}-${b.rank}.json`;
    const picture = await graphPicture(b.rank);
    picture.setAttribute("aria-label", `Graph of trial ${b.trial}`);
    const link = el("a", { href: `${document.body.dataset.api}/${ID}/best/${b.rank}.json`, download: file,
      text: "ktg-graph/1 JSON" });
    link.addEventListener("click", download);
    const baseline = b.graph.meta && b.graph.meta.baseline;
    return el("article", { class: "card graph-card", "data-rank": b.rank },
      el("h3", {}, `#${b.rank} · trial ${b.trial}` + (baseline ? ` · ${baseline}` : ""),
        el("span", { class: "acc", text: pct(b.val_acc, 2) })),
      b.confirmation ? el("p", { class: "confirmation", text: confirmationText(b.confirmation) }) : null,
      el("figure", {}, picture),
      el("p", {}, link, " · re-train it:"),
      el("pre", {}, el("code", { text: trainCommand(status.spec, file) })));
  }));
  bestKey = key;
  const none = el("p", { class: "muted", text: "No trial has been trained to the full budget yet." });
  replaceKeepingScroll($("top-graphs"), ...(cards.length ? cards : [none]));
}

// -- trials -----------------------------------------------------------------------------------------

function models(graph) {
  if (!graph) return "—";
  return [...graph.nodes].sort((a, b) => a.id - b.id).map((n) => `${n.id}: ${n.model}`).join(" · ");
}

function trialState(t) {
  const badge = stateBadge(t.state);
  const why = t.skipped ? `skipped: ${t.skipped}` : t.error || (t.interrupted ? "re-queued after its driver died" : "");
  if (why) badge.title = why;
  return t.skipped || t.interrupted ? el("span", {}, badge, el("small", { text: t.skipped ? " skipped" : " re-queued" }))
    : badge;
}

function renderSortHeaders() {
  const key = view.order.replace("-", "");
  for (const th of document.querySelectorAll("#trials th[data-sort]")) {
    const sorted = th.dataset.sort === key;
    if (sorted) th.setAttribute("aria-sort", view.order.startsWith("-") ? "descending" : "ascending");
    else th.removeAttribute("aria-sort");
  }
}

async function loadTrials() {
  const query = new URLSearchParams({ limit: TRIALS_PAGE, offset: view.offset, order: view.order });
  if (view.state) query.set("state", view.state);
  const page = await json(`/${ID}/trials?${query}`);
  const epochs = status.spec.epochs;
  const rows = page.items.map((t) => el("tr", { "data-trial": t.number },
    el("td", { class: "num", text: t.number }),
    el("td", {}, trialState(t)),
    el("td", { class: "num", text: t.epochs_done ?? "—" }),
    el("td", { class: "num", text: pct(t.val_acc) }),
    el("td", {}, curve(t.history, epochs)),
    el("td", { class: "models", text: models(t.graph) }),
    el("td", { class: "num", text: t.retries }),
    el("td", { class: "num", text: t.continued_from ?? "—" })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No trials here yet." })));
  replaceKeepingScroll(document.querySelector("#trials tbody"), ...rows);
  renderSortHeaders();
  $("trials-range").textContent = page.total
    ? `${view.offset + 1}–${view.offset + page.items.length} of ${page.total}` : "";
  $("trials-prev").disabled = view.offset === 0;
  $("trials-next").disabled = view.offset + TRIALS_PAGE >= page.total;
}

// -- refreshing and cancelling ----------------------------------------------------------------------

async function refresh() {
  clearTimeout(timer);
  try {
    status = await json(`/${ID}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      $("study-missing").hidden = false;
      $("study-body").hidden = true;
      return;
    }
    const message = explain(error);
    if (message) {
      $("refresh-note").textContent = `${message}; trying again in a few seconds`;
      timer = setTimeout(refresh, REFRESH_MS);
    }
    return;
  }
  renderStatus(status);
  try {
    const [progress] = await Promise.all([json(`/${ID}/progress`), loadTrials(), renderBest()]);
    renderProgress(progress);
  } catch (error) {
    const message = explain(error);
    if (message === null) return;
    $("refresh-note").textContent = `${message}; trying again in a few seconds`;
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  const going = live(status);
  $("refresh-note").textContent = going ? `Refreshing every ${REFRESH_MS / 1000} s while the study runs.`
    : "The study has ended; the page no longer refreshes.";
  if (going) timer = setTimeout(refresh, REFRESH_MS);
}

function wireTrialControls() {
  $("trial-state").addEventListener("change", (event) => {
    view.state = event.target.value;
    view.offset = 0;
    loadTrials().catch(() => {});
  });
  for (const th of document.querySelectorAll("#trials th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.sort;
      const current = view.order.replace("-", "");
      view.order = current === key ? (view.order.startsWith("-") ? key : `-${key}`) : `${FIRST_DIRECTION[key]}${key}`;
      view.offset = 0;
      loadTrials().catch(() => {});
    });
  }
  $("trials-prev").addEventListener("click", () => {
    view.offset = Math.max(0, view.offset - TRIALS_PAGE);
    loadTrials().catch(() => {});
  });
  $("trials-next").addEventListener("click", () => {
    view.offset += TRIALS_PAGE;
    loadTrials().catch(() => {});
  });
}

function wireCancel() {
  const dialog = $("cancel-dialog");
  $("cancel").addEventListener("click", () => dialog.showModal());
  $("cancel-keep").addEventListener("click", () => dialog.close());
  $("cancel-confirm").addEventListener("click", async () => {
    dialog.close();
    try {
      status = await json(`/${ID}`, { method: "DELETE" });
      renderStatus(status);
    } catch (error) {
      const message = explain(error);
      if (message) {
        $("study-message").hidden = false;
        $("study-message").textContent = `Not cancelled: ${message}`;
      }
      return;
    }
    refresh();
  });
}

startSession(() => {
  wireTrialControls();
  wireCancel();
  refresh();
});
