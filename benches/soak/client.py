#!/usr/bin/env python3
"""Soak-test client for sessiongate (standard library only).

Drives mixed traffic over many sessions for a bounded time and checks durability:
each session belongs to one thread and has at most one request in flight, so after a
200 on /update (the acknowledgement) the next request that reaches the upstream must see
exactly that counter in its X-Session token.

  lost          the next request saw no session, or a smaller counter, than acknowledged
  applied_unack a request that was not acknowledged (503, timeout) was applied anyway
                (allowed: the write landed but the answer did not; counted for information)
  resurrected   a session whose logout was acknowledged was seen again with the old cookie
  unexpected    anything else inconsistent (counter jumped by more than one, bad token)

With --port2, requests alternate between the two proxies (one after the other, so the
request after an acknowledgement goes to the other proxy): the checks then hold across
proxies sharing one Redis, e.g. with store.local_cache on.

Usage: client.py --port P [--port2 P2] --seconds S [--threads T] [--sessions-per-thread K] --out FILE
"""

import argparse
import http.client
import json
import random
import socket
import threading
import time
from collections import Counter

LOCK = threading.Lock()
TOTAL = Counter()  # status (or error kind) -> count
CHECKS = Counter()  # lost / applied_unack / resurrected / unexpected / verified
EXAMPLES = []  # a few details of failed checks


def note(kind, detail):
    with LOCK:
        CHECKS[kind] += 1
        if kind in ("lost", "resurrected", "unexpected") and len(EXAMPLES) < 20:
            EXAMPLES.append(f"{time.strftime('%H:%M:%S')} {kind}: {detail}")


class Session:
    def __init__(self, name):
        self.name = name
        self.cookie = None  # "session=ID.SIG"
        self.acked = None  # last acknowledged counter, None = no acknowledged session
        self.pending = False  # an unacknowledged update may have been applied


class Worker(threading.Thread):
    def __init__(self, ports, deadline, sessions, seed):
        super().__init__(daemon=True)
        self.ports = ports
        self.turn = 0
        self.conns = [None] * len(ports)
        self.deadline = deadline
        self.sessions = sessions
        self.rng = random.Random(seed)
        self.conn = None

    def request(self, path, cookie):
        """(status, body dict or None, new cookie value or '' when cleared, or None)."""
        # Alternate between the proxies: keep each one's keep-alive connection.
        i = self.turn % len(self.ports)
        self.turn += 1
        self.conn = self.conns[i]
        try:
            return self.request_on(self.ports[i], path, cookie)
        finally:
            self.conns[i] = self.conn

    def request_on(self, port, path, cookie):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Cookie": cookie} if cookie else {}
        try:
            self.conn.request("GET", path, headers=headers)
            res = self.conn.getresponse()
            raw = res.read()
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = None
            kind = "timeout" if isinstance(e, socket.timeout) else "conn_error"
            with LOCK:
                TOTAL[kind] += 1
            return None, None, None
        with LOCK:
            TOTAL[res.status] += 1
        new_cookie = None
        for k, v in res.getheaders():
            if k.lower() == "set-cookie" and v.startswith("session="):
                value = v.split(";", 1)[0][len("session="):]
                new_cookie = value
        body = None
        if res.status == 200:
            try:
                body = json.loads(raw)
            except ValueError:
                note("unexpected", f"non-JSON 200 body on {path}")
        if res.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        return res.status, body, new_cookie

    def check_seen(self, s, body, path):
        """Compare what the upstream saw with what was acknowledged."""
        if body.get("problem"):
            note("unexpected", f"{s.name} {path}: {body['problem']}")
        if s.acked is None:
            return
        seen = body.get("seen")
        if seen is None:
            note("lost", f"{s.name} {path}: session gone, acknowledged n={s.acked}")
            s.cookie, s.acked, s.pending = None, None, False
            return
        n = seen.get("n")
        if n == s.acked:
            CHECKS["verified"] += 1
        elif s.pending and n == s.acked + 1:
            note("applied_unack", f"{s.name}: n={n}")
            s.acked = n
        elif isinstance(n, int) and n < s.acked:
            note("lost", f"{s.name} {path}: saw n={n}, acknowledged n={s.acked}")
            s.acked = n
        else:
            note("unexpected", f"{s.name} {path}: saw n={n}, acknowledged n={s.acked}")
            s.acked = n if isinstance(n, int) else s.acked
        s.pending = False

    def step(self, s):
        if s.cookie is None:
            status, body, cookie = self.request(f"/login?u={s.name}", None)
            if status == 200 and cookie:
                s.cookie, s.acked, s.pending = f"session={cookie}", 0, False
            return
        r = self.rng.random()
        if r < 0.6:
            status, body, cookie = self.request("/update", s.cookie)
            if status == 200:
                self.check_seen(s, body, "/update")
                if s.acked is not None:
                    s.acked = body.get("n")
            elif status is None or status >= 500:
                s.pending = True
        elif r < 0.97:
            status, body, cookie = self.request("/", s.cookie)
            if status == 200:
                self.check_seen(s, body, "/")
        else:
            old = s.cookie
            status, body, cookie = self.request("/logout", s.cookie)
            if status == 200:
                self.check_seen(s, body, "/logout")
                s.cookie, s.acked, s.pending = None, None, False
                # The old cookie must be no session any more.
                for _ in range(20):
                    if time.monotonic() >= self.deadline:
                        break
                    st, b, _ = self.request("/", old)
                    if st == 200:
                        if b and b.get("seen") is not None:
                            note("resurrected", f"{s.name}: logged-out session seen again")
                        break
                    time.sleep(0.05)
            elif status is None or status >= 500:
                # Unknown whether it was destroyed: start afresh without judging.
                s.cookie, s.acked, s.pending = None, None, False
        if cookie and s.cookie is not None and cookie != "" and s.acked is not None:
            s.cookie = f"session={cookie}"

    def run(self):
        while time.monotonic() < self.deadline:
            for s in self.sessions:
                if time.monotonic() >= self.deadline:
                    break
                self.step(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--port2", type=int)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--sessions-per-thread", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    start = time.monotonic()
    deadline = start + a.seconds
    workers = [
        Worker(
            [a.port] + ([a.port2] if a.port2 else []),
            deadline,
            [Session(f"t{t}s{i}") for i in range(a.sessions_per_thread)],
            seed=t,
        )
        for t in range(a.threads)
    ]
    for w in workers:
        w.start()
    last = start
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=1)
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            with LOCK:
                print(
                    f"client: {int(last - start)}s requests={sum(TOTAL.values())} "
                    f"by_status={dict(TOTAL)} checks={dict(CHECKS)}",
                    flush=True,
                )
        if time.monotonic() > deadline + 30:
            break  # a stuck worker must not hold the script (threads are daemons)
    elapsed = time.monotonic() - start
    with LOCK:
        report = {
            "seconds": round(elapsed, 1),
            "sessions": a.threads * a.sessions_per_thread,
            "requests": sum(TOTAL.values()),
            "by_status": {str(k): v for k, v in sorted(TOTAL.items(), key=str)},
            "checks": dict(CHECKS),
            "examples": EXAMPLES,
        }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
