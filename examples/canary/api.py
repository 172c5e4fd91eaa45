#!/usr/bin/env python3
"""api: answers every GET with its version, e.g. {"service": "api", "version": "v1"}.

    python3 api.py PORT VERSION
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
VERSION = sys.argv[2]
BODY = json.dumps({"service": "api", "version": VERSION}).encode() + b"\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy reuses its upstream connections

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, fmt, *args):
        pass  # 200 requests per traffic split: too chatty to log


if __name__ == "__main__":
    print(f"api {VERSION} listening on 127.0.0.1:{PORT}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
