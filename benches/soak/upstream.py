#!/usr/bin/env python3
"""Soak-test upstream for sessiongate (standard library only).

Every response body is JSON {"seen": <session data from the verified X-Session token, or
null>, ...}, so the client can check what the upstream saw on each request.

  /login   X-Session-Set: {"user": U, "n": 0}        (U from the query string ?u=)
  /update  X-Session-Update: {"n": seen.n + 1, "pad": ...}; body also has "n": the new n
  /logout  X-Session-Destroy: 1
  /        no directive

Usage: upstream.py PORT   (the HMAC key is SESSION_UPSTREAM_SECRET from the environment)
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KEY = os.environ["SESSION_UPSTREAM_SECRET"].encode()


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def session_of(token):
    """The `data` claim of a valid X-Session token, else None (and a complaint)."""
    if token is None:
        return None, None
    try:
        head, claims, sig = token.split(".")
        want = hmac.new(KEY, f"{head}.{claims}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, b64d(sig)):
            return None, "bad signature"
        c = json.loads(b64d(claims))
        if c.get("exp", 0) < time.time() - 5:
            return None, "expired token"
        return c["data"], None
    except Exception as e:  # noqa: BLE001 - report anything odd to the client
        return None, f"bad token: {e}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        data, problem = session_of(self.headers.get("X-Session"))
        body = {"seen": data}
        if problem:
            body["problem"] = problem
        headers = []
        if url.path == "/login":
            user = parse_qs(url.query).get("u", ["anon"])[0]
            headers.append(("X-Session-Set", json.dumps({"user": user, "n": 0})))
        elif url.path == "/update":
            n = (data or {}).get("n", 0) + 1
            # Some bulk so that the values are not all tiny.
            patch = {"n": n, "pad": "x" * (n % 64), "t": int(time.time())}
            headers.append(("X-Session-Update", json.dumps(patch)))
            body["n"] = n
        elif url.path == "/logout":
            headers.append(("X-Session-Destroy", "1"))
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
