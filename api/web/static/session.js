// Signing in, and every call to the API: the token lives in this tab's sessionStorage
// only and goes with each call as the Authorization: Bearer header. Also the small
// DOM helpers both pages use. Data is always put in with textContent, never as HTML.

const TOKEN_KEY = "ktg.token";
export const API = document.body.dataset.api; // "/v1/studies"
export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `the service answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

class SignedOut extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// A call to the API with the tab's token; a 401 signs out (the token was revoked).
export async function call(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn("invalid token");
    throw new SignedOut();
  }
  return response;
}

// The JSON body of a call, or an ApiError carrying the status and the API's error body.
export async function json(path, options) {
  const response = await call(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// Errors a page shows as a line; a sign-out has already said what happened.
export function explain(error) {
  if (error instanceof SignedOut) return null;
  if (error instanceof ApiError) return error.message;
  return "the service did not answer";
}

function showSignIn(message) {
  document.getElementById("app").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("token").focus();
}

function showApp() {
  document.getElementById("sign-in").hidden = true;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("app").hidden = false;
}

// Show the page once a token is known (from this tab, or typed in and accepted by the API).
export function startSession(onReady) {
  const form = document.getElementById("sign-in-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    const candidate = input.value.trim();
    const error = document.getElementById("sign-in-error");
    if (!candidate) {
      error.textContent = "enter a token";
      return;
    }
    let response;
    try {
      response = await fetch(`${API}?limit=1`, { headers: { Authorization: `Bearer ${candidate}` }, cache: "no-store" });
    } catch {
      error.textContent = "the service did not answer";
      return;
    }
    if (response.status === 401) {
      error.textContent = "invalid token";
      input.select();
      return;
    }
    if (!response.ok) {
      error.textContent = `the service answered ${response.status}; try again`;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, candidate);
    input.value = "";
    showApp();
    onReady();
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload(); // nothing of this tenant stays on screen
  });
  if (token()) {
    showApp();
    onReady();
  } else {
    showSignIn();
  }
}

// -- DOM helpers ----------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  node.append(...children);
  return node;
}

export function pct(value, digits = 1) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(digits)} %`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}

export function stateBadge(state) {
  return el("span", { class: `state state-${state}`, text: state });
}

export function progressBar(finished, budget) {
  const label = `${finished} / ${budget}`;
  return el("span", { class: "progress-cell" },
    el("progress", { max: budget, value: Math.min(finished, budget), "aria-label": `${label} trials finished` }),
    el("span", { class: "num", text: label }));
}

// Replace a container's children, keeping the window where it was (refreshes must not jump).
export function replaceKeepingScroll(container, ...children) {
  const { scrollX, scrollY } = window;
  container.replaceChildren(...children);
  window.scrollTo(scrollX, scrollY);
}
