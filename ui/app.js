// concord's web UI: one page per hash route, each kept live by blocking queries against the
// agent's HTTP API (the same endpoints Consul's UI reads). No build step: this file is served
// as written, embedded in the agent binary.

const settings = JSON.parse(document.getElementById("settings").textContent);
const main = document.getElementById("main");
const banner = document.getElementById("banner");
const TOKEN_KEY = "concord:token";
// How long one blocking read waits on the agent.
const WAIT = "30s";

let datacenter = new URLSearchParams(location.search).get("dc") || settings.LocalDatacenter;
// Each page runs under its own controller; navigating aborts the previous page's reads.
let page = new AbortController();

// ---- DOM helpers: every value becomes a text node, never markup. ----
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function show(...children) {
  main.replaceChildren(...children);
}

function message(kind, text) {
  return h("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// ---- The API. ----
class ApiError extends Error {
  constructor(status, text) {
    super(text || `HTTP ${status}`);
    this.status = status;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

function withDatacenter(path) {
  if (datacenter === settings.LocalDatacenter) return path;
  return path + (path.includes("?") ? "&" : "?") + "dc=" + encodeURIComponent(datacenter);
}

// One request; `index` makes it a blocking read. Network failures raise the banner until a
// request succeeds again.
async function api(path, { method = "GET", body, index, signal = page.signal, missing } = {}) {
  let url = withDatacenter(path);
  if (index !== undefined) url += (url.includes("?") ? "&" : "?") + `index=${index}&wait=${WAIT}`;
  const headers = {};
  if (token()) headers["X-Consul-Token"] = token();
  let response;
  try {
    response = await fetch(url, { method, body, headers, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    banner.textContent = "The agent is unreachable; retrying…";
    banner.hidden = false;
    throw new ApiError(0, "The agent is unreachable");
  }
  banner.hidden = true;
  const text = await response.text();
  // A read of what does not exist answers 404 with an index to block on.
  if (response.status === 404 && missing !== undefined) {
    return { index: Number(response.headers.get("x-consul-index") || 0), body: missing };
  }
  if (!response.ok) throw new ApiError(response.status, text.trim());
  const type = response.headers.get("content-type") || "";
  return {
    index: Number(response.headers.get("x-consul-index") || 0),
    body: type.includes("json") && text ? JSON.parse(text) : text,
  };
}

// Renders `path`'s answer with `draw` now and after every change, until the page changes.
async function live(path, draw, missing) {
  const signal = page.signal;
  let index = 0;
  // After a failure, the next try waits 2 s, doubling to 30 s: a page left open on a stopped
  // agent never asks faster than that.
  let pause = 2000;
  while (!signal.aborted) {
    try {
      const answer = await api(path, { index: index || undefined, signal, missing });
      if (signal.aborted) return;
      // An index that went back (a restore, another server) starts over.
      index = answer.index < index ? 0 : answer.index;
      const arrived = performance.now();
      draw(answer.body);
      pause = 2000;
      // How long from the data's arrival to the next frame drawn with it (the UI bench reads
      // these entries).
      requestAnimationFrame(() => setTimeout(() =>
        performance.measure(`render ${path}`, { start: arrived, end: performance.now() })));
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return;
      if (error.status && error.status !== 0) {
        show(message("error", describe(error)));
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 30000);
    }
  }
}

function describe(error) {
  if (error.status === 403) return `Permission denied: ${error.message}. Log in with a token that has the rights.`;
  return error.message;
}

// ---- Health. ----
const RANK = { passing: 0, warning: 1, critical: 2, maintenance: 2 };

function worst(checks) {
  return checks.reduce((status, check) =>
    RANK[check.Status] > RANK[status] ? check.Status : status, "passing");
}

function status(text) {
  return h("span", { class: `status ${text}` }, text);
}

// ---- Pages. ----
function servicesPage() {
  const search = h("input", { class: "search", type: "search", placeholder: "Filter by name or tag",
    "aria-label": "Filter services" });
  // A grid of rows rather than a table: rows off screen then skip rendering (CSS containment
  // does not apply to table rows), which keeps 1,000 services quick to draw.
  const rows = h("div", { role: "rowgroup" });
  let all = [];
  const cell = (...children) => h("div", { role: "cell" }, ...children);
  const draw = () => {
    const wanted = search.value.trim().toLowerCase();
    const shown = all.filter((service) => !wanted || service.Name.toLowerCase().includes(wanted)
      || (service.Tags || []).some((tag) => tag.toLowerCase().includes(wanted)));
    rows.replaceChildren(...shown.map((service) => {
      const health = service.ChecksCritical ? "critical" : service.ChecksWarning ? "warning" : "passing";
      return h("div", { role: "row", class: "row", "data-service": service.Name },
        cell(h("a", { href: `#/services/${encodeURIComponent(service.Name)}` }, service.Name),
          service.Kind ? h("span", { class: "tag" }, service.Kind) : null),
        cell(status(health), " ",
          h("span", { class: "muted" },
            `${service.ChecksPassing} passing, ${service.ChecksWarning} warning, ${service.ChecksCritical} critical`)),
        cell(`${service.InstanceCount} instance${service.InstanceCount === 1 ? "" : "s"}`),
        h("div", { role: "cell", class: "optional" },
          (service.Tags || []).map((tag) => h("span", { class: "tag" }, tag))));
    }));
  };
  search.addEventListener("input", draw);
  const header = (text, optional) => h("div", { role: "columnheader", class: optional ? "optional" : null }, text);
  show(h("h1", {}, "Services"), search,
    h("div", { role: "table", class: "listing", "aria-label": "Services" },
      h("div", { role: "rowgroup" }, h("div", { role: "row", class: "row head" },
        header("Service"), header("Health"), header("Instances"), header("Tags", true))),
      rows));
  live("/v1/internal/ui/services", (services) => { all = services; draw(); });
}

function checkList(checks) {
  return h("ul", {}, checks.map((check) => h("li", { "data-check": check.CheckID },
    status(check.Status), " ", check.Name,
    check.Output ? h("pre", {}, check.Output) : null)));
}

function servicePage(name) {
  const body = h("tbody");
  const topology = h("div");
  show(h("h1", {}, name), h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Node"),
    h("th", {}, "Address"), h("th", {}, "Health checks"))), body),
  h("h2", {}, "Topology"), topology);
  const neighbours = (title, list, direction) => h("section", { "data-topology": direction },
    h("h3", {}, title),
    list.length ? h("ul", {}, list.map((other) => h("li", { "data-neighbour": other.Name },
      h("a", { href: `#/services/${encodeURIComponent(other.Name)}` }, other.Name), " ",
      status2(other.Intention.Allowed ? "allow" : "deny"),
      h("span", { class: "muted" }, ` (${other.Source}${other.Intention.HasPermissions ? ", L7 permissions" : ""})`))))
      : h("p", { class: "muted" }, "None."));
  live(`/v1/internal/ui/service-topology/${encodeURIComponent(name)}?kind=`, (found) => {
    topology.replaceChildren(
      h("p", { class: "muted" }, `Protocol ${found.Protocol}`),
      neighbours("Downstreams (call this service)", found.Downstreams, "downstreams"),
      neighbours("Upstreams (called by this service)", found.Upstreams, "upstreams"));
  });
  live(`/v1/health/service/${encodeURIComponent(name)}`, (instances) => {
    if (!instances.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: 3 }, "No instances.")));
      return;
    }
    body.replaceChildren(...instances.map((entry) => {
      const address = entry.Service.Address || entry.Node.Address;
      return h("tr", { "data-instance": entry.Service.ID },
        h("td", {}, h("a", { href: `#/nodes/${encodeURIComponent(entry.Node.Node)}` }, entry.Node.Node),
          h("div", { class: "muted" }, entry.Service.ID)),
        h("td", {}, `${address}:${entry.Service.Port}`),
        h("td", {}, status(worst(entry.Checks)), checkList(entry.Checks)));
    }));
  });
}

function nodesPage() {
  const body = h("tbody");
  show(h("h1", {}, "Nodes"), h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Node"),
    h("th", {}, "Address"), h("th", {}, "Health"), h("th", {}, "Services"))), body));
  live("/v1/internal/ui/nodes", (nodes) => {
    body.replaceChildren(...nodes.map((node) => h("tr", { "data-node": node.Node },
      h("td", {}, h("a", { href: `#/nodes/${encodeURIComponent(node.Node)}` }, node.Node)),
      h("td", {}, node.Address),
      h("td", {}, status(worst(node.Checks))),
      h("td", {}, node.Services.length))));
  });
}

function nodePage(name) {
  const content = h("div");
  show(h("h1", {}, name), content);
  live(`/v1/internal/ui/node/${encodeURIComponent(name)}`, (node) => {
    content.replaceChildren(
      h("p", {}, `Address ${node.Address}`),
      h("h2", {}, "Health checks"), checkList(node.Checks),
      h("h2", {}, "Services"),
      h("ul", {}, node.Services.map((service) => h("li", {},
        h("a", { href: `#/services/${encodeURIComponent(service.Service)}` }, service.Service),
        ` (${service.ID}, port ${service.Port})`))));
  });
}

// KV paths keep their slashes; every other character is encoded.
function kvPath(key) {
  return key.split("/").map(encodeURIComponent).join("/");
}

function kvPage(prefix) {
  const list = h("tbody");
  const key = h("input", { name: "key", required: true, "aria-label": "New key" });
  const value = h("textarea", { name: "value", "aria-label": "New value" });
  const status = h("div");
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      const full = prefix + key.value;
      try {
        // cas=0 creates only: an existing key is never overwritten from here.
        const answer = await api(`/v1/kv/${kvPath(full)}?cas=0`, { method: "PUT", body: value.value });
        if (answer.body === true) {
          status.replaceChildren(message("ok", `Created ${full}`));
          key.value = "";
          value.value = "";
        } else {
          status.replaceChildren(message("error", `${full} already exists; open it to edit it.`));
        }
      } catch (error) {
        status.replaceChildren(message("error", describe(error)));
      }
    },
  }, h("label", {}, `Key (under ${prefix || "/"})`, key), h("label", { style: "flex: 1" }, "Value", value),
  h("button", { type: "submit" }, "Create"));
  const crumbs = [h("a", { href: "#/kv/" }, "Key/Value")];
  let walked = "";
  for (const part of prefix.split("/").filter(Boolean)) {
    walked += part + "/";
    crumbs.push(" / ", h("a", { href: `#/kv/${kvPath(walked)}` }, part));
  }
  show(h("h1", {}, crumbs), form, status, h("table", {}, list));
  live(`/v1/kv/${kvPath(prefix)}?keys&separator=/`, (keys) => {
    const entries = keys.filter((entry) => entry !== prefix);
    list.replaceChildren(...entries.map((entry) => {
      const folder = entry.endsWith("/");
      const href = folder ? `#/kv/${kvPath(entry)}` : `#/kv-edit/${kvPath(entry)}`;
      return h("tr", { "data-key": entry }, h("td", {},
        h("a", { href }, entry.slice(prefix.length) || entry), folder ? " (folder)" : ""));
    }));
    if (!entries.length) list.replaceChildren(h("tr", {}, h("td", {}, "No keys.")));
  }, []);
}

function decodeValue(base64) {
  if (!base64) return { text: "" };
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes) };
  } catch {
    return { binary: bytes.length };
  }
}

async function kvEditPage(key) {
  const status = h("div");
  const parent = key.includes("/") ? key.slice(0, key.lastIndexOf("/") + 1) : "";
  show(h("h1", {}, h("a", { href: `#/kv/${kvPath(parent)}` }, "Key/Value"), " / ", key), status);
  let entry;
  try {
    entry = (await api(`/v1/kv/${kvPath(key)}`)).body[0];
  } catch (error) {
    status.replaceChildren(message("error", error.status === 404 ? `${key} does not exist.` : describe(error)));
    return;
  }
  const decoded = decodeValue(entry.Value);
  if (decoded.binary !== undefined) {
    main.append(message("error", `${key} holds ${decoded.binary} bytes of binary data; it cannot be edited as text here.`));
    return;
  }
  // The index this editor read: saving only succeeds if nobody wrote the key since.
  let modifyIndex = entry.ModifyIndex;
  const value = h("textarea", { "aria-label": "Value" });
  value.value = decoded.text;
  const save = h("button", { type: "submit" }, "Save");
  const remove = h("button", { type: "button", class: "danger", onclick: async () => {
    try {
      const answer = await api(`/v1/kv/${kvPath(key)}?cas=${modifyIndex}`, { method: "DELETE" });
      if (answer.body === true) location.hash = `#/kv/${kvPath(parent)}`;
      else status.replaceChildren(message("error", "Not deleted: the key changed since you opened it. Reload to see the new value."));
    } catch (error) {
      status.replaceChildren(message("error", describe(error)));
    }
  } }, "Delete");
  main.append(h("form", { onsubmit: async (event) => {
    event.preventDefault();
    try {
      const answer = await api(`/v1/kv/${kvPath(key)}?cas=${modifyIndex}`, { method: "PUT", body: value.value });
      if (answer.body === true) {
        const fresh = (await api(`/v1/kv/${kvPath(key)}`)).body[0];
        modifyIndex = fresh.ModifyIndex;
        status.replaceChildren(message("ok", "Saved."));
      } else {
        // The edit stays in the text area: nothing typed is lost.
        status.replaceChildren(message("error", "Not saved: someone else changed this key since you opened it (CAS conflict). Your text is kept; reload to see theirs."));
      }
    } catch (error) {
      status.replaceChildren(message("error", `Not saved: ${describe(error)}. Your text is kept.`));
    }
  } }, h("label", { style: "flex: 1 1 100%" }, "Value", value), save, remove));
}

function intentionsPage() {
  const body = h("tbody");
  const source = h("input", { name: "source", required: true, "aria-label": "Source service" });
  const destination = h("input", { name: "destination", required: true, "aria-label": "Destination service" });
  const action = h("select", { name: "action", "aria-label": "Action" },
    h("option", { value: "allow" }, "allow"), h("option", { value: "deny" }, "deny"));
  const status = h("div");
  const exact = (src, dst) => `/v1/connect/intentions/exact?source=${encodeURIComponent(src)}&destination=${encodeURIComponent(dst)}`;
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api(exact(source.value, destination.value), { method: "PUT",
        body: JSON.stringify({ Action: action.value }) });
      status.replaceChildren(message("ok", `Saved ${source.value} → ${destination.value}`));
    } catch (error) {
      status.replaceChildren(message("error", describe(error)));
    }
  } }, h("label", {}, "Source", source), h("label", {}, "Destination", destination),
  h("label", {}, "Action", action), h("button", { type: "submit" }, "Create"));
  show(h("h1", {}, "Intentions"), form, status, h("table", {}, h("thead", {}, h("tr", {},
    h("th", {}, "Source"), h("th", {}, "Destination"), h("th", {}, "Action"),
    h("th", { class: "optional" }, "Precedence"), h("th", {}, ""))), body));
  live("/v1/connect/intentions", (intentions) => {
    body.replaceChildren(...intentions.map((intention) => h("tr", {
      "data-intention": `${intention.SourceName}->${intention.DestinationName}` },
    h("td", {}, intention.SourceName), h("td", {}, intention.DestinationName),
    h("td", {}, intention.Action ? status2(intention.Action) : "L7 permissions (read-only)"),
    h("td", { class: "optional" }, intention.Precedence),
    h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
      try {
        await api(exact(intention.SourceName, intention.DestinationName), { method: "DELETE" });
      } catch (error) {
        status.replaceChildren(message("error", describe(error)));
      }
    } }, "Delete")))));
  });
}

function status2(action) {
  return h("span", { class: `status ${action === "allow" ? "passing" : "critical"}` }, action);
}

function aclsPage() {
  const tokens = h("tbody");
  const policies = h("tbody");
  show(h("h1", {}, "ACL tokens"), h("table", { "aria-label": "Tokens" }, h("thead", {}, h("tr", {},
    h("th", {}, "AccessorID"), h("th", {}, "Description"), h("th", {}, "Policies"),
    h("th", {}, "Scope"))), tokens),
  h("h2", {}, "Policies"), h("table", { "aria-label": "Policies" }, h("thead", {}, h("tr", {},
    h("th", {}, "Name"), h("th", {}, "Description"), h("th", { class: "optional" }, "Datacenters"))), policies));
  live("/v1/acl/tokens", (listed) => {
    tokens.replaceChildren(...listed.map((entry) => h("tr", { "data-token": entry.AccessorID },
      h("td", {}, entry.AccessorID), h("td", {}, entry.Description),
      h("td", {}, (entry.Policies || []).map((policy) => h("span", { class: "tag" }, policy.Name))),
      h("td", {}, entry.Local ? "local" : "global"))));
  });
  live("/v1/acl/policies", (listed) => {
    policies.replaceChildren(...listed.map((policy) => h("tr", { "data-policy": policy.Name },
      h("td", {}, policy.Name), h("td", {}, policy.Description),
      h("td", { class: "optional" }, (policy.Datacenters || []).join(", ") || "all"))));
  });
}

function loginPage() {
  const secret = h("input", { type: "password", name: "token", "aria-label": "Token SecretID",
    autocomplete: "off", required: true });
  const status = h("div");
  show(h("h1", {}, "Log in"), h("p", { class: "muted" },
    "Paste a token's SecretID. It is kept in this browser and sent with every request."),
  h("form", { onsubmit: async (event) => {
    event.preventDefault();
    const previous = token();
    localStorage.setItem(TOKEN_KEY, secret.value.trim());
    try {
      const self = (await api("/v1/acl/token/self")).body;
      status.replaceChildren(message("ok", `Logged in as ${self.Description || self.AccessorID}.`));
      updateLogin();
    } catch (error) {
      if (previous) localStorage.setItem(TOKEN_KEY, previous);
      else localStorage.removeItem(TOKEN_KEY);
      status.replaceChildren(message("error", `That token was refused: ${error.message}`));
    }
  } }, h("label", {}, "Token", secret), h("button", { type: "submit" }, "Log in"),
  h("button", { type: "button", onclick: () => {
    localStorage.removeItem(TOKEN_KEY);
    updateLogin();
    status.replaceChildren(message("ok", "Logged out."));
  } }, "Log out")), status);
}

function updateLogin() {
  document.getElementById("login").textContent = token() ? "Logged in" : "Log in";
}

// ---- Routing. ----
function route() {
  page.abort();
  page = new AbortController();
  const hash = decodeURIComponent(location.hash.slice(1) || "/services");
  const [, section, ...rest] = hash.split("/");
  const tail = rest.join("/");
  switch (section) {
    case "services": return tail ? servicePage(tail) : servicesPage();
    case "nodes": return tail ? nodePage(tail) : nodesPage();
    case "kv": return kvPage(tail);
    case "kv-edit": return kvEditPage(tail);
    case "intentions": return intentionsPage();
    case "acls": return aclsPage();
    case "login": return loginPage();
    default: show(message("error", `No page at ${hash}.`));
  }
}

async function datacenters() {
  const select = document.getElementById("dc");
  try {
    const listed = (await api("/v1/catalog/datacenters", { signal: undefined })).body;
    select.replaceChildren(...listed.map((dc) => h("option", { value: dc, selected: dc === datacenter }, dc)));
  } catch {
    select.replaceChildren(h("option", {}, datacenter));
  }
  select.addEventListener("change", () => {
    datacenter = select.value;
    route();
  });
}

document.getElementById("nav-acls").hidden = !settings.ACLsEnabled;
updateLogin();
window.addEventListener("hashchange", route);
datacenters();
route();
