#!/usr/bin/env python3
"""A stand-in for nginx: loads the rendered upstream file at start and on SIGHUP (as
`nginx -s reload` would), and shows what it loaded, and how many reloads it took, on
http://127.0.0.1:9090/."""
import http.server
import signal
import sys

CONF = sys.argv[1]
state = {"conf": "", "reloads": 0}


def load(*_):
    try:
        with open(CONF) as f:
            state["conf"] = f.read()
    except FileNotFoundError:
        state["conf"] = "(not rendered yet)\n"
    state["reloads"] += 1


class Show(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"loaded {state['reloads']} time(s):\n{state['conf']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


signal.signal(signal.SIGHUP, load)
load()
http.server.HTTPServer(("127.0.0.1", 9090), Show).serve_forever()
