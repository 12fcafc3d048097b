#!/usr/bin/env python3
"""Idle keep-alive connections for benches/conns/run.sh.

Opens CONNS connections to 127.0.0.1:PORT, sends one `GET /` on each and reads the whole
response (so the server has served a request on every one), keeps them all open and idle,
and prints the server process's VmRSS before and after as one tab-separated line:

    conns  rss_before_kb  rss_after_kb  bytes_per_conn

The server is a PID whose /proc/PID/status is read (for nginx: its worker). Connections
come from several source addresses (127.0.0.2, 127.0.0.3, ...) so that more than one
ephemeral port range's worth can reach one listening port.

    python3 client.py PORT CONNS PID
"""

import asyncio
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the source port at connect(), per 4-tuple
PER_SOURCE = 20000
CONCURRENCY = 256
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def read_response(loop, sock):
    """Reads one response with a Content-Length body."""
    buf = b""
    while True:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("closed before the response ended")
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            continue
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(body) >= length:
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head.split(b"\r\n")[0].decode())
            return


async def open_one(loop, port, i, held):
    source = f"127.0.0.{2 + i // PER_SOURCE}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setblocking(False)
    sock.bind((source, 0))
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, REQUEST)
    await read_response(loop, sock)
    held.append(sock)


async def main():
    port, conns, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    loop = asyncio.get_running_loop()
    before = rss_kb(pid)
    held = []
    sem = asyncio.Semaphore(CONCURRENCY)

    async def bounded(i):
        async with sem:
            # A server at its connection ceiling leaves the rest in the listen backlog.
            await asyncio.wait_for(open_one(loop, port, i, held), 30)

    started = time.monotonic()
    await asyncio.gather(*(bounded(i) for i in range(conns)))
    opened = time.monotonic() - started
    # Let the server settle (freed request buffers), then read its RSS.
    await asyncio.sleep(2)
    after = rss_kb(pid)
    per_conn = (after - before) * 1024 / conns
    print(f"{conns}\t{before}\t{after}\t{per_conn:.0f}", flush=True)
    print(f"opened {conns} connections in {opened:.1f} s", file=sys.stderr)
    for sock in held:
        sock.close()


if __name__ == "__main__":
    asyncio.run(main())
