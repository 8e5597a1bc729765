// The page's shell: sign-in with a pasted API key, the tabs, and a hash router (#datasets, #trainings/<id>, ...).
import { api, auth, whenUnauthorized } from "./api.js";
import { clear, el, errorBox } from "./ui.js";
import * as datasets from "./datasets.js";
import * as trainings from "./trainings.js";
import * as loras from "./loras.js";
import * as generate from "./generate.js";

const VIEWS = { datasets, trainings, loras, generate };
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const account = document.getElementById("account");
let leave = null;        // the current view's cleanup (closes its event streams)
let checkingKey = false; // a 401 while a pasted key is tried is the sign-in form's to report

function signIn(message) {
  auth.clear();
  nav.hidden = true;
  clear(account);
  const input = el("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
                              placeholder: "paste your API key", "aria-label": "API key" });
  const status = el("div", {}, message ? errorBox({ message }) : null);
  const form = el("form", { class: "card signin", id: "signin" },
    el("h2", {}, "Sign in"),
    el("p", {}, "Paste the API key of your account. ", el("span", { class: "muted" },
      "It stays in this tab's session storage and is sent only to this service, as the Authorization header.")),
    el("p", { class: "muted small" }, "No key? `make serve` prints one; an operator creates more with ",
      el("code", {}, "python -m db.create_owner NAME"), "."),
    el("div", { class: "row" }, input, el("button", { type: "submit", class: "primary" }, "Sign in")), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    auth.set(input.value);
    checkingKey = true;
    try {
      await api("/v1/datasets?limit=1");          // any authorised read proves the key
      checkingKey = false;
      if (!location.hash || location.hash === "#signin") location.hash = "#datasets";
      route();
    } catch (err) {
      checkingKey = false;
      auth.clear();
      clear(status, errorBox(err.status === 401 ? { message: "That key was not accepted (unknown or revoked)." } : err));
    }
  });
  if (leave) { leave(); leave = null; }
  clear(main, form);
  input.focus();
}

whenUnauthorized(() => { if (!checkingKey) signIn("Your key is no longer accepted; paste it again."); });

async function route() {
  if (!auth.get()) return signIn();
  nav.hidden = false;
  clear(account, el("button", { class: "secondary small", id: "signout", onclick: () => { signIn(); } }, "Sign out"));
  const [path, query] = (location.hash.slice(1) || "datasets").split("?");
  const [name, ...rest] = path.split("/");
  const view = VIEWS[name] || datasets;
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", a.getAttribute("href") === `#${name}`);
  if (leave) { leave(); leave = null; }
  const root = el("div", { class: "view", id: `view-${name}` });
  clear(main, root);
  try {
    const cleanup = await view.render(root, rest.join("/"), new URLSearchParams(query || ""));
    if (typeof cleanup === "function") {
      if (main.contains(root)) leave = cleanup; else cleanup();   // the person already moved on
    }
  } catch (err) {
    clear(root, errorBox(err));
  }
}

window.addEventListener("hashchange", route);
route();
