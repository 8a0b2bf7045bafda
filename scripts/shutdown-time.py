#!/usr/bin/env python3
"""Measures how long ssechat takes to shut down with N open SSE streams.

usage: scripts/shutdown-time.py BINARY N [extra server flags...]

Starts the server on a free loopback port, opens N streams (each waits for
its hello), sends SIGTERM, and reports the time to exit, the exit code and
how many streams ended cleanly (got the final retry hint). Loopback only,
bounded in time.
"""
import asyncio, os, resource, signal, socket, subprocess, sys, time

async def open_stream(port, i, ready, results):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /chat/events?room=r{i % 100} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await w.drain()
    buf = b""
    while b"event: hello" not in buf:
        chunk = await r.read(4096)
        if not chunk:
            results.append(False); return
        buf += chunk
    ready.append(1)
    try:
        while True:
            chunk = await asyncio.wait_for(r.read(65536), 30)
            if not chunk:
                break
            buf += chunk
    except Exception:
        pass
    results.append(b"retry:" in buf.split(b"event: hello", 1)[1])
    w.close()

async def main():
    binary, n = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    srv = subprocess.Popen([binary, "--port", str(port), "--db", ":memory:", "--max-streams", "0",
                            "--max-streams-per-ip", "0", *sys.argv[3:]],
                           stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError:
            await asyncio.sleep(0.02)
    ready, results = [], []
    tasks = []
    for i in range(0, n, 64):
        batch = min(n, i + 64)
        tasks += [asyncio.create_task(open_stream(port, j, ready, results)) for j in range(i, batch)]
        t = time.time()
        while len(ready) < batch and time.time() - t < 10:
            await asyncio.sleep(0.002)
    deadline = time.time() + 120
    while len(ready) < n and time.time() < deadline:
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(None, srv.wait)
    took = time.monotonic() - t0
    await asyncio.wait(tasks, timeout=30)
    clean = sum(1 for r in results if r)
    print(f"streams={len(ready)} shutdown_s={took:.3f} exit={code} ended_with_retry={clean}")

asyncio.run(main())
