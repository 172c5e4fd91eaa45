"""The web UI in a real browser (Debian's Chromium, driven by Playwright).

Run by tests/it/ui.rs against agents it started:

    python tests/ui/browser.py <scenario> <agent base URL> <screenshot dir> <token or pid>

`plain`: services go from passing to critical without a reload, a KV key is created, edited
(a CAS conflict is reported and the edit kept), and deleted, a binary value is shown as such,
a deny intention is listed; last, the agent (its pid given) is killed mid-edit and saving
reports it with the text kept. `acl`: with ACLs on and a deny default, a page the anonymous
token may not read says so, the services page shows nothing until a token is entered on the
login page. Each step waits for what the page shows, never for a fixed time;
a failure exits non-zero with the reason.
"""

import json
import os
import signal
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps reaching for Google's hosts, which
# this machine's closed network refuses.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# How long the page may take to show a change (a blocking read returns at once on a write).
SHOWN = 10_000


def api(base, method, path, body=None, token=None):
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    with urllib.request.urlopen(request) as response:
        text = response.read().decode()
        return json.loads(text) if text else None


def web(status):
    return {
        "Node": "web-host",
        "Address": "10.9.9.1",
        "Service": {"ID": "web-1", "Service": "web", "Port": 80, "Tags": ["v1"]},
        "Check": {"CheckID": "web-alive", "Name": "alive", "Status": status,
                  "ServiceID": "web-1", "Output": f"HTTP GET: {status}"},
    }


def plain(page, base, shots, agent_pid):
    api(base, "PUT", "/v1/catalog/register", web("passing"))
    page.goto(base + "/")
    # `/` redirects to the UI, which opens on the services page.
    expect(page).to_have_url(base + "/ui/")
    row = page.locator('[data-service="web"]')
    expect(row.locator(".status")).to_have_text("passing", timeout=SHOWN)
    page.screenshot(path=os.path.join(shots, "services.png"))
    # The search keeps what matches a name or a tag.
    page.get_by_label("Filter services").fill("v1")
    expect(page.locator('[data-service="consul"]')).to_have_count(0)
    expect(row).to_have_count(1)
    page.get_by_label("Filter services").fill("")
    # On a phone the page still fits its width.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator('[data-service="consul"]')).to_have_count(1)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the services page is {overflow}px wider than a phone"
    page.screenshot(path=os.path.join(shots, "services-phone.png"))
    page.set_viewport_size({"width": 1280, "height": 800})
    api(base, "PUT", "/v1/catalog/register", web("critical"))
    expect(row.locator(".status")).to_have_text("critical", timeout=SHOWN)

    # The service's instances with each check's output.
    row.locator("a").first.click()
    instance = page.locator('tr[data-instance="web-1"]')
    expect(instance.locator('[data-check="web-alive"] pre')).to_have_text("HTTP GET: critical")
    # A sidecar declaring an upstream shows in the topology without a reload.
    api(base, "PUT", "/v1/agent/service/register", {
        "ID": "web-1-sidecar", "Name": "web-sidecar-proxy", "Kind": "connect-proxy",
        "Port": 21000, "Proxy": {"DestinationServiceName": "web",
                                 "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}})
    expect(page.locator('[data-topology="upstreams"] [data-neighbour="db"]')).to_be_visible(
        timeout=SHOWN)
    page.screenshot(path=os.path.join(shots, "service.png"))
    page.goto(base + "/ui/#/nodes")
    expect(page.locator('tr[data-node="web-host"] .status')).to_have_text("critical")
    page.screenshot(path=os.path.join(shots, "nodes.png"))

    # KV: create under a folder, with spaces and unicode in the key.
    key = "app/config ü"
    page.goto(base + "/ui/#/kv/")
    page.get_by_label("New key").fill(key)
    page.get_by_label("New value").fill("first")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_contain_text(f"Created {key}")
    # Creating it again is refused rather than overwriting it.
    page.get_by_label("New key").fill(key)
    page.get_by_label("New value").fill("clobber")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("alert")).to_contain_text("already exists")
    page.locator('tr[data-key="app/"] a').click()
    page.locator(f'tr[data-key="{key}"] a').click()
    value = page.get_by_label("Value")
    expect(value).to_have_value("first")
    # Someone else writes the key while it is open here: saving reports the conflict and keeps
    # the text typed.
    api(base, "PUT", "/v1/kv/app/config%20%C3%BC", b"theirs")
    value.fill("mine")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert")).to_contain_text("CAS conflict")
    expect(value).to_have_value("mine")
    page.screenshot(path=os.path.join(shots, "kv-conflict.png"))
    page.reload()
    expect(value).to_have_value("theirs")
    value.fill("mine")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    stored = api(base, "GET", "/v1/kv/app/config%20%C3%BC")
    assert stored[0]["Value"] == "bWluZQ==", stored
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("main h1")).to_contain_text("Key/Value")
    expect(page.locator(f'tr[data-key="{key}"]')).to_have_count(0)

    # A deny intention, listed once created.
    page.goto(base + "/ui/#/intentions")
    page.get_by_label("Source service").fill("web")
    page.get_by_label("Destination service").fill("db")
    page.get_by_label("Action").select_option("deny")
    page.get_by_role("button", name="Create").click()
    listed = page.locator('tr[data-intention="web->db"]')
    expect(listed).to_contain_text("deny", timeout=SHOWN)
    page.screenshot(path=os.path.join(shots, "intentions.png"))

    # 512 KiB of binary data is shown as such, not as text to edit.
    api(base, "PUT", "/v1/kv/blob", bytes(range(256)) * 2048)
    page.goto(base + "/ui/#/kv-edit/blob")
    expect(page.get_by_role("alert")).to_contain_text("524288 bytes of binary data")

    # The agent goes away while a key is open: saving says so, and the text stays.
    api(base, "PUT", "/v1/kv/last", b"before")
    page.goto(base + "/ui/#/kv-edit/last")
    value = page.get_by_label("Value")
    expect(value).to_have_value("before")
    os.kill(agent_pid, signal.SIGKILL)
    value.fill("typed after the agent died")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("main").get_by_role("alert")).to_contain_text("unreachable")
    expect(page.locator("#banner")).to_be_visible()
    expect(value).to_have_value("typed after the agent died")
    page.screenshot(path=os.path.join(shots, "unreachable.png"))


def acl(page, base, shots, token):
    # A page the anonymous token may not read says why.
    page.goto(base + "/ui/#/acls")
    expect(page.get_by_role("alert")).to_contain_text("Permission denied")
    page.goto(base + "/ui/#/services")
    # The anonymous token sees no services; the ACL page is offered.
    expect(page.locator("#nav-acls")).to_be_visible()
    expect(page.locator('[data-service="consul"]')).to_have_count(0)
    page.goto(base + "/ui/#/login")
    page.get_by_label("Token SecretID").fill("not-a-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("refused")
    page.get_by_label("Token SecretID").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("status")).to_contain_text("Logged in")
    page.goto(base + "/ui/#/services")
    expect(page.locator('[data-service="consul"]')).to_have_count(1, timeout=SHOWN)
    page.goto(base + "/ui/#/acls")
    expect(page.locator('[data-policy="global-management"]')).to_be_visible(timeout=SHOWN)
    expect(page.locator("[data-token]").first).to_be_visible()
    page.screenshot(path=os.path.join(shots, "acl-tokens.png"))


def main():
    scenario, base, shots = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    os.makedirs(shots, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            if scenario == "plain":
                plain(page, base, shots, int(sys.argv[4]))
            else:
                acl(page, base, shots, sys.argv[4])
        except Exception:
            page.screenshot(path=os.path.join(shots, f"{scenario}-failure.png"))
            raise
        finally:
            browser.close()
        if errors:
            raise SystemExit(f"script errors on the page: {errors}")


if __name__ == "__main__":
    main()
