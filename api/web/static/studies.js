// The studies page: the tenant's studies, newest first, a page at a time; and the submit form.

import { ApiError, FINISHED, el, explain, json, pct, progressBar, replaceKeepingScroll, startSession, stateBadge, when }
  from "./session.js";

const PAGE_SIZE = 20;
const REFRESH_MS = 5000;
let offset = 0;
let timer = null;

async function loadStudies() {
  clearTimeout(timer);
  const note = document.getElementById("studies-range");
  let page;
  let statuses;
  try {
    page = await json(`?limit=${PAGE_SIZE}&offset=${offset}`);
    // The list gives names and states; each study's figures come from its own status (cached server-side).
    statuses = await Promise.all(page.items.map((s) => json(`/${s.id}`).catch(() => null)));
  } catch (error) {
    const message = explain(error);
    if (message) note.textContent = message;
    timer = setTimeout(loadStudies, REFRESH_MS);
    return;
  }
  const rows = page.items.map((study, i) => {
    const status = statuses[i];
    return el("tr", {},
      el("td", {}, el("a", { href: `/studies/${study.id}`, text: study.name })),
      el("td", {}, stateBadge(status?.state || study.state)),
      el("td", {}, status ? progressBar(status.finished, status.budget) : "—"),
      el("td", { class: "num", text: pct(status?.best_val_acc) }),
      el("td", {}, el("time", { datetime: study.created_at, text: when(study.created_at) })));
  });
  replaceKeepingScroll(document.querySelector("#studies tbody"), ...rows);
  document.getElementById("studies-empty").hidden = page.total > 0;
  note.textContent = page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "";
  document.getElementById("studies-prev").disabled = offset === 0;
  document.getElementById("studies-next").disabled = offset + PAGE_SIZE >= page.total;
  const live = page.items.some((study, i) => !FINISHED.has(statuses[i]?.state || study.state));
  if (live) timer = setTimeout(loadStudies, REFRESH_MS);
}

// -- submitting ---------------------------------------------------------------------------------

// The spec as the form holds it; empty fields are left out, so the API's defaults apply.
function specFromForm(form) {
  const spec = {};
  for (const control of form.querySelectorAll("[data-field]")) {
    const name = control.dataset.field;
    const kind = control.dataset.kind;
    if (kind === "choices") {
      spec[name] = [...control.querySelectorAll("input:checked")].map((box) => box.value);
      continue;
    }
    const raw = control.value.trim();
    if (raw === "") continue;
    if (kind === "integer" || kind === "number") spec[name] = Number(raw);
    else if (kind === "list") spec[name] = raw.split(",").map((item) => item.trim()).filter(Boolean);
    else spec[name] = raw;
  }
  return spec;
}

function clearErrors(form) {
  for (const p of form.querySelectorAll(".field-error")) p.textContent = "";
  for (const c of form.querySelectorAll("[aria-invalid]")) c.removeAttribute("aria-invalid");
  document.getElementById("submit-error").textContent = "";
}

// Put each of the API's field errors ("models.1", "nodes") beside the control it names.
function showFieldErrors(form, errors) {
  const unplaced = [];
  let first = null;
  for (const { field, message } of errors) {
    const name = field.split(".")[0];
    const slot = document.getElementById(`err-${name}`);
    if (!slot) {
      unplaced.push(`${field}: ${message}`);
      continue;
    }
    const where = field === name ? "" : `${field}: `;
    slot.textContent = slot.textContent ? `${slot.textContent}; ${where}${message}` : `${where}${message}`;
    const control = form.querySelector(`[data-field="${name}"]`);
    control.setAttribute("aria-invalid", "true");
    if (control.closest("details")) control.closest("details").open = true;
    first ??= control.matches("fieldset") ? control.querySelector("input") : control;
  }
  document.getElementById("submit-error").textContent = unplaced.join("; ")
    || (errors.length ? "The study was not submitted: see the fields marked." : "");
  first?.focus();
}

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const button = document.getElementById("submit-button");
  clearErrors(form);
  button.disabled = true;
  try {
    const study = await json("", { method: "POST", body: specFromForm(form) });
    location.assign(`/studies/${study.id}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 422 && error.body?.errors) {
      showFieldErrors(form, error.body.errors);
    } else if (error instanceof ApiError && error.status === 409) {
      showFieldErrors(form, [{ field: "name", message: error.message }]);
    } else {
      const message = explain(error);
      if (message) document.getElementById("submit-error").textContent = message;
    }
  } finally {
    button.disabled = false;
  }
}

startSession(() => {
  document.getElementById("studies-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE_SIZE);
    loadStudies();
  });
  document.getElementById("studies-next").addEventListener("click", () => {
    offset += PAGE_SIZE;
    loadStudies();
  });
  document.getElementById("submit").addEventListener("submit", submit);
  loadStudies();
});
