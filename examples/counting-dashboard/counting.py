#!/usr/bin/env python3
"""counting: GET / returns {"count": N, "hostname": ...}, N increasing with every request.
GET /health answers "ok" without counting (used by the agent's health check)."""
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "9003"))
_lock = threading.Lock()
_count = 0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        global _count
        if self.path == "/health":
            return self.reply(200, b"ok\n", "text/plain")
        with _lock:
            _count += 1
            n = _count
        body = json.dumps({"count": n, "hostname": socket.gethostname()}).encode() + b"\n"
        self.reply(200, body, "application/json")

    def reply(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("counting: " + fmt % args, flush=True)


if __name__ == "__main__":
    print(f"counting listening on 127.0.0.1:{PORT}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
