#!/usr/bin/env python3
# Usage: python3 scripts/replay-memory.py PATH/TO/ssechat [ANOTHER/ssechat ...]
# Before/after figures for the hostile-clients note: server RSS with N
# non-reading streams replaying a 1,000-message room of 4 kB messages.
import json, re, socket, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

def start(binary):
    p = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", "0", "--db", ":memory:",
                          "--post-rate", "0", "--max-streams-per-ip", "0", "--history", "1000"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if m:
            import threading
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(2))

def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])

def post(port, text):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/chat/messages",
        data=json.dumps({"room": "big", "text": text}).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()

def metric(port, name):
    t = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for l in t.splitlines():
        if l.startswith(name + " "):
            return float(l.split()[1])

def run(binary, n):
    p, port = start(binary)
    text = "é" * 2000
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda _: post(port, text), range(1000)))
    base = rss(p.pid)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /chat/events?room=big HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n")
        socks.append(s)
    while metric(port, "ssechat_sse_streams") < n:
        time.sleep(0.05)
    time.sleep(2)
    peak = rss(p.pid)
    for s in socks: s.close()
    while metric(port, "ssechat_sse_streams") > 0:
        time.sleep(0.05)
    time.sleep(1)
    after = rss(p.pid)
    p.terminate(); p.wait()
    print(f"{binary.split('/')[-1]} N={n}: base {base/1024:.1f} MB, with streams {peak/1024:.1f} MB "
          f"(+{(peak-base)/1024/n:.2f} MB/stream), after close {after/1024:.1f} MB", flush=True)

for b in sys.argv[1:]:
    for n in (20, 50):
        run(b, n)
