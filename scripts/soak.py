#!/usr/bin/env python3
"""The soak's load and its sampler (started by scripts/soak.sh).

usage: soak.py PID PORT SECONDS CSV

Drives a running ssechat (process PID, listening on 127.0.0.1:PORT) with
moderate load and churn for SECONDS, and samples the process's RSS and open
files from /proc every 10 s into CSV:

- readers: streams that read for a while, hang up, and reconnect with
  Last-Event-ID (checking that ids only ever increase on each stream and
  across its reconnects: nothing is delivered twice or out of order);
- posters: JSON, form and text/plain POSTs, some repeating a client_msg_id;
- long-pollers: GET /chat/messages?since=..&wait=10 in a loop;
- non-readers: streams that replay from id 0 and never read, reopened
  every few minutes (the server must drop them and give everything back);
- browsers: the welcome page, the chat page, history, health, metrics.

Clients are spread over 127.0.0.2-127.0.0.9, as separate users would be.
Everything is bounded: each request has a timeout, the run ends by itself.
At the end it prints the counts, the errors, and the drift of RSS and open
files between the first and the last five minutes; exit 1 on any error
(5xx, unexpected status, an id out of order or missed, a failed sample).
"""
import asyncio
import csv
import json
import os
import random
import sys
import time
import urllib.parse

HOST = "127.0.0.1"
ROOMS = [f"soak-{i}" for i in range(4)]
READERS = 40
POSTERS = 4
POST_INTERVAL = 0.25  # per poster: 16 messages/s in all
LONG_POLLERS = 8
NON_READERS = 3
SAMPLE_EVERY = 10.0
REQUEST_TIMEOUT = 20.0

stats = {
    "posts": 0, "duplicates": 0, "streams_opened": 0, "reconnects": 0,
    "events": 0, "long_polls": 0, "long_poll_messages": 0,
    "non_reader_streams": 0, "pages": 0,
}
errors = []


def error(msg):
    if len(errors) < 50:
        print(f"soak: ERROR {msg}", file=sys.stderr, flush=True)
    errors.append(msg)


def local_addr(i):
    return (f"127.0.0.{2 + i % 8}", 0)


def token():
    return os.urandom(20).hex()


async def request(port, method, path, i, headers=None, body=b""):
    """One request on a fresh connection; returns (status, headers, body)."""
    r, w = await asyncio.open_connection(HOST, port, local_addr=local_addr(i))
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        w.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await w.drain()
        raw = await r.read()  # Connection: close, so until EOF
    finally:
        w.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding") == "chunked":
        rest = dechunk(rest)
    return status, hdrs, rest


def dechunk(data):
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


async def timed(coro):
    return await asyncio.wait_for(coro, REQUEST_TIMEOUT)


class Stream:
    """An SSE stream read over raw HTTP/1.1 (chunked), parsed per event."""

    def __init__(self, port, i, query, last_event_id=None):
        self.port, self.i, self.query, self.last_event_id = port, i, query, last_event_id
        self.buf = b""
        self.raw = b""

    async def open(self):
        self.r, self.w = await asyncio.open_connection(HOST, self.port, local_addr=local_addr(self.i))
        head = f"GET /chat/events?{self.query} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n"
        if self.last_event_id is not None:
            head += f"Last-Event-ID: {self.last_event_id}\r\n"
        self.w.write((head + "\r\n").encode())
        await self.w.drain()
        while b"\r\n\r\n" not in self.raw:
            chunk = await self.r.read(4096)
            if not chunk:
                raise ConnectionError("closed before the response head")
            self.raw += chunk
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        return status

    async def events(self):
        """Yields (event, id, data) until the server ends the stream."""
        while True:
            while b"\n\n" in self.buf:
                block, _, self.buf = self.buf.partition(b"\n\n")
                ev = {"event": "message", "id": None, "data": []}
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        continue
                    k, _, v = line.partition(":")
                    v = v[1:] if v.startswith(" ") else v
                    if k == "event":
                        ev["event"] = v
                    elif k == "id":
                        ev["id"] = v
                    elif k == "data":
                        ev["data"].append(v)
                if ev["data"]:
                    yield ev["event"], ev["id"], "\n".join(ev["data"])
            # Chunked framing: size line, data, CRLF. Take every complete
            # chunk; read more only when there is none.
            progressed = False
            while True:
                size_line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    return
                if len(rest) < size + 2:
                    break
                self.buf += rest[:size]
                self.raw = rest[size + 2:]
                progressed = True
            if not progressed:
                chunk = await self.r.read(65536)
                if not chunk:
                    return
                self.raw += chunk

    def close(self):
        try:
            self.w.close()
        except Exception:
            pass


async def reader(port, i, deadline):
    """Reads a while, hangs up, reconnects with Last-Event-ID: nothing twice, nothing missed."""
    room = ROOMS[i % len(ROOMS)]
    tok = token()
    last = None
    first = True
    while time.monotonic() < deadline:
        s = Stream(port, i, f"room={room}&client={tok}&name=reader{i}", last)
        hold = random.uniform(5, 60)
        stop_at = min(deadline, time.monotonic() + hold)
        try:
            status = await timed(s.open())
            if status != 200:
                error(f"reader {i}: stream answered {status}")
                await asyncio.sleep(2)
                continue
            stats["streams_opened"] += 1
            if not first:
                stats["reconnects"] += 1
            first = False
            async def consume():
                nonlocal last
                async for ev, eid, data in s.events():
                    if ev != "message":
                        continue
                    n = int(eid)
                    if last is not None and n <= int(last):
                        error(f"reader {i}: id {n} after {last} (duplicate or out of order)")
                    msg = json.loads(data)
                    if msg["room"] != room:
                        error(f"reader {i}: message for room {msg['room']} on {room}")
                    last = eid
                    stats["events"] += 1
            remaining = stop_at - time.monotonic()
            if remaining > 0:
                try:
                    await asyncio.wait_for(consume(), remaining)
                except asyncio.TimeoutError:
                    pass
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            error(f"reader {i}: {type(e).__name__}: {e}")
            await asyncio.sleep(1)
        finally:
            s.close()
        await asyncio.sleep(random.uniform(0.1, 2))


async def poster(port, i, deadline):
    tok = token()
    n = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(POST_INTERVAL * random.uniform(0.5, 1.5))
        room = random.choice(ROOMS)
        n += 1
        text = f"soak {i}-{n} " + "x" * random.randint(0, 300)
        kind = n % 3
        try:
            if kind == 0:
                key = f"p{i}-{n // 10}"  # ten posts share a key: nine duplicates
                body = json.dumps({"room": room, "text": text, "client_msg_id": key}).encode()
                st, _, resp = await timed(request(port, "POST", "/chat/messages", i,
                    {"Content-Type": "application/json", "X-Chat-Client": tok}, body))
            elif kind == 1:
                body = urllib.parse.urlencode({"room": room, "text": text, "name": f"poster{i}"}).encode()
                st, _, resp = await timed(request(port, "POST", "/chat/messages", i,
                    {"Content-Type": "application/x-www-form-urlencoded", "X-Chat-Client": tok}, body))
            else:
                st, _, resp = await timed(request(port, "POST", f"/chat/messages?room={room}", i,
                    {"Content-Type": "text/plain", "X-Chat-Client": tok}, text.encode()))
            if st == 201:
                stats["posts"] += 1
            elif st == 200:
                stats["duplicates"] += 1
            elif st == 429:
                pass  # over the rate limit is an answer, not a failure
            else:
                error(f"poster {i}: POST answered {st}: {resp[:200]!r}")
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            error(f"poster {i}: {type(e).__name__}: {e}")


async def long_poller(port, i, deadline):
    room = ROOMS[i % len(ROOMS)]
    since = None
    while time.monotonic() < deadline:
        q = f"room={room}&wait=10&limit=100" + (f"&since={since}" if since else "")
        try:
            st, _, body = await timed(request(port, "GET", f"/chat/messages?{q}", 100 + i))
            if st != 200:
                error(f"long-poll {i}: answered {st}: {body[:200]!r}")
                await asyncio.sleep(1)
                continue
            v = json.loads(body)
            ids = [int(m["id"]) for m in v["messages"]]
            if ids != sorted(ids) or (since and ids and ids[0] <= int(since)):
                error(f"long-poll {i}: ids out of order after {since}: {ids[:5]}")
            stats["long_polls"] += 1
            stats["long_poll_messages"] += len(ids)
            since = v["last_id"] or since
        except (OSError, ValueError, KeyError, asyncio.TimeoutError) as e:
            error(f"long-poll {i}: {type(e).__name__}: {e}")
            await asyncio.sleep(1)


async def non_reader(port, i, deadline):
    """Opens a replaying stream and never reads it; reopens every few minutes."""
    while time.monotonic() < deadline:
        room = ROOMS[i % len(ROOMS)]
        try:
            r, w = await asyncio.open_connection(HOST, port, local_addr=local_addr(200 + i))
            w.write(f"GET /chat/events?room={room}&since=0 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            await w.drain()
            stats["non_reader_streams"] += 1
            await asyncio.sleep(min(random.uniform(120, 240), max(0, deadline - time.monotonic())))
            w.close()
        except OSError as e:
            error(f"non-reader {i}: {e}")
            await asyncio.sleep(5)


async def browser(port, deadline):
    pages = ["/", "/chat?room=soak-0", "/chat/messages?room=soak-1&limit=500",
             "/healthz", "/metrics", "/chat/messages?room=soak-2&since=0&limit=50"]
    while time.monotonic() < deadline:
        await asyncio.sleep(random.uniform(0.5, 1.5))
        path = random.choice(pages)
        try:
            st, _, body = await timed(request(port, "GET", path, 300))
            if st != 200:
                error(f"browser: GET {path} answered {st}: {body[:200]!r}")
            stats["pages"] += 1
        except (OSError, asyncio.TimeoutError) as e:
            error(f"browser: GET {path}: {e}")


def proc_sample(pid):
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


async def metrics(port):
    st, _, body = await timed(request(port, "GET", "/metrics", 301))
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        out[k] = v
    return out


async def sampler(pid, port, deadline, path, rows):
    start = time.monotonic()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "rss_kib", "open_fds", "sse_streams", "long_polls",
                    "messages_total", "subscribers_dropped_total", "threads"])
        while True:
            try:
                rss, fds, threads = proc_sample(pid)
                m = await metrics(port)
                row = [round(time.monotonic() - start), rss, fds,
                       m.get("ssechat_sse_streams", ""), m.get("ssechat_long_polls", ""),
                       m.get("ssechat_messages_total", ""),
                       m.get("ssechat_subscribers_dropped_total", ""), threads]
                w.writerow(row)
                f.flush()
                rows.append(row)
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                error(f"sample failed: {e}")
            if time.monotonic() + SAMPLE_EVERY > deadline + 1:
                return
            await asyncio.sleep(SAMPLE_EVERY)


def checkpoints(rows, seconds):
    """RSS and open files at the start, every 10 minutes (every third of
    a shorter run), and at the end."""
    step = 600 if seconds >= 1200 else max(SAMPLE_EVERY, seconds / 3)
    marks, t = [], 0.0
    while t < rows[-1][0]:
        marks.append(t)
        t += step
    if rows[-1][0] - marks[-1] > SAMPLE_EVERY / 2:
        marks.append(rows[-1][0])
    parts = []
    for m in marks:
        r = min(rows, key=lambda r: abs(r[0] - m))
        parts.append(f"{r[0]} s: {r[1] / 1024:.1f} MiB, {r[2]} files")
    print("soak: RSS and open files at " + "; ".join(parts))


def drift(rows, seconds):
    window = min(300, seconds / 3)
    first = [r for r in rows if r[0] <= window]
    last = [r for r in rows if r[0] >= rows[-1][0] - window]
    def mean(rs, k):
        return sum(r[k] for r in rs) / max(1, len(rs))
    print(f"soak: first {window:.0f} s vs last {window:.0f} s "
          f"({len(first)} and {len(last)} samples):")
    for k, name in [(1, "RSS KiB"), (2, "open files")]:
        a, b = mean(first, k), mean(last, k)
        print(f"soak:   {name:10}  {a:10.0f} -> {b:10.0f}  ({b - a:+.0f}, {100 * (b - a) / max(a, 1):+.1f} %)"
              f"  min {min(r[k] for r in rows)}  max {max(r[k] for r in rows)}")


async def main():
    pid, port, seconds, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    deadline = time.monotonic() + seconds
    rows = []
    tasks = [asyncio.create_task(sampler(pid, port, deadline, path, rows))]
    tasks += [asyncio.create_task(reader(port, i, deadline)) for i in range(READERS)]
    tasks += [asyncio.create_task(poster(port, i, deadline)) for i in range(POSTERS)]
    tasks += [asyncio.create_task(long_poller(port, i, deadline)) for i in range(LONG_POLLERS)]
    tasks += [asyncio.create_task(non_reader(port, i, deadline)) for i in range(NON_READERS)]
    tasks += [asyncio.create_task(browser(port, deadline))]
    # Everything ends by the deadline; a straggler is cut a little after.
    done, pending = await asyncio.wait(tasks, timeout=seconds + REQUEST_TIMEOUT + 15)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception():
            error(f"task failed: {t.exception()!r}")
    print("soak: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    if rows:
        checkpoints(rows, seconds)
        drift(rows, seconds)
    print(f"soak: samples in {path}")
    print(f"soak: {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
