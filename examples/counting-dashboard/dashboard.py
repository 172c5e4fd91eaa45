#!/usr/bin/env python3
"""dashboard: GET / asks its upstream `counting` through the local Envoy upstream listener
(http://127.0.0.1:9191/) and relays the JSON it got, or answers 502 with the error text when
the upstream cannot be reached. GET /health answers "ok" (used by the agent's health check)."""
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "9002"))
COUNTING_URL = os.environ.get("COUNTING_SERVICE_URL", "http://127.0.0.1:9191/")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, b"ok\n", "text/plain")
        try:
            with urllib.request.urlopen(COUNTING_URL, timeout=5) as resp:
                body = resp.read()
        except Exception as err:  # connection reset/closed by a sidecar, HTTP error, timeout...
            msg = f"dashboard: counting unreachable via {COUNTING_URL}: {err!r}\n"
            return self.reply(502, msg.encode(), "text/plain")
        self.reply(200, body, "application/json")

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("dashboard: " + fmt % args, flush=True)


if __name__ == "__main__":
    print(f"dashboard listening on 127.0.0.1:{PORT}, upstream {COUNTING_URL}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
