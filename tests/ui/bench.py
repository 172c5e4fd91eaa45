"""Times the web UI in Debian's Chromium for `cargo bench` (the `ui` section of benches/kv.rs):
first contentful paint of `/ui/` and, for the services page, the time from its data's arrival
to the next frame drawn with it, over several fresh page loads. Prints one JSON object.

    python tests/ui/bench.py <agent base URL> <loads> <services expected>
"""

import json
import statistics
import sys

from playwright.sync_api import sync_playwright

from browser import CHROMIUM, FLAGS


def main():
    base, loads, expected = sys.argv[1].rstrip("/"), int(sys.argv[2]), int(sys.argv[3])
    paints, renders = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for _ in range(loads):
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(base + "/ui/#/services")
            page.locator("[data-service]").nth(expected - 1).wait_for(state="attached")
            page.wait_for_function(
                "performance.getEntriesByName('render /v1/internal/ui/services').length > 0")
            paint = page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0].startTime")
            render = page.evaluate(
                "performance.getEntriesByName('render /v1/internal/ui/services')[0].duration")
            paints.append(paint)
            renders.append(render)
            page.close()
        browser.close()
    print(json.dumps({
        "first_paint_ms": statistics.median(paints),
        "first_paint_max_ms": max(paints),
        "render_ms": statistics.median(renders),
        "render_max_ms": max(renders),
        "loads": loads,
    }))


if __name__ == "__main__":
    main()
