#!/usr/bin/env python3
"""Checks for scripts/run.sh: is the local system up, and does its dashboard serve
live data? Standard library only.

  run_check.py healthz PORT     prints "ok" when http://127.0.0.1:PORT/healthz is 200
  run_check.py live             the dashboard lists the fleet, pages and assets load,
                                and a stored reading reaches /api/stream
  run_check.py fresh            readings stored after now reach the dashboard

`live` and `fresh` read HB_CHECK_PORT, HB_CHECK_TOKEN and HB_CHECK_DEVICES.
"""
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def get(port, path, token=None, timeout=10):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def api(path):
    status, body = get(PORT, path, TOKEN)
    if status != 200:
        raise SystemExit(f"run_check: {path} answered {status}: {body[:200]!r}")
    return json.loads(body)


def stream_event(timeout_s):
    """The first `readings` event on /api/stream, or None."""
    s = socket.create_connection(("127.0.0.1", PORT), timeout=timeout_s)
    s.sendall(
        f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    deadline = time.time() + timeout_s
    buffer = b""
    try:
        while time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")  # the last piece may be incomplete
            for line in lines:
                if line.startswith(b"data:"):
                    event = json.loads(line[5:])
                    if isinstance(event.get("readings"), dict):
                        return event
    except socket.timeout:
        return None
    finally:
        s.close()
    return None


def wait(what, timeout_s, check):
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise SystemExit(f"run_check: {what} not within {timeout_s} s (last: {last!r})")


def live():
    wanted = int(DEVICES * 0.95)

    def fleet():
        devices = api("/api/devices")["devices"]
        return len(devices) >= wanted and devices
    devices = wait(f"{wanted} devices on the dashboard", 120, fleet)
    for path in ["/", "/log", "/alerts", f"/devices/{devices[0]['id']}",
                 "/assets/vendor/uplot/uPlot.iife.min.js", "/api/stats", "/api/alerts?state=all"]:
        status, body = get(PORT, path, TOKEN)
        if status != 200:
            raise SystemExit(f"run_check: {path} answered {status}")
    status, _ = get(PORT, "/api/devices")
    if status != 401:
        raise SystemExit(f"run_check: /api/devices without a token answered {status}, not 401")
    event = stream_event(20)
    if not event:
        raise SystemExit("run_check: no readings on /api/stream within 20 s")
    stats = api("/api/stats")
    print(f"run_check: {len(devices)} devices, {stats['online']} online, "
          f"{stats['open_alerts']} open alerts, live stream delivering "
          f"({len(event['readings']['rows'])} readings in one event)", file=sys.stderr)


def fresh():
    since = time.time() * 1000 + 1000

    def newer():
        devices = api("/api/devices")["devices"]
        return sum(1 for d in devices if d["seen_ms"] > since)
    n = wait("readings stored after the restart", 120, newer)
    if not stream_event(20):
        raise SystemExit("run_check: no readings on /api/stream within 20 s")
    print(f"run_check: fresh readings from {n} devices", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1] == "healthz":
        try:
            print("ok" if get(int(sys.argv[2]), "/healthz", timeout=2)[0] == 200 else "no")
        except OSError:
            print("no")
        sys.exit(0)
    PORT = int(os.environ["HB_CHECK_PORT"])
    TOKEN = os.environ["HB_CHECK_TOKEN"]
    DEVICES = int(os.environ["HB_CHECK_DEVICES"])
    {"live": live, "fresh": fresh}[sys.argv[1]]()
