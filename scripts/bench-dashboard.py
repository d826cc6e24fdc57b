#!/usr/bin/env python3
"""The dashboard under a realistic history: a benchmark that prints figures (no
pass or fail: the machine is shared and noisy).

1. History: --devices devices x --hours of readings at 1 Hz (default 1000 x 2.8 h,
   about 10 million rows) written straight into `readings` (and the registry, the
   per-minute counts and some alerts) in a private PostgreSQL, after hb-collector's
   migrations. Then the API's heaviest calls are timed over HTTP against the
   collector's dashboard: the fleet overview (/api/devices, /api/stats,
   /api/sparklines) and one device's trend over 1 h, 24 h and 7 d.
2. Live: hb-agent runs --live-devices simulated devices at 1 Hz through Mosquitto,
   hb-bridge and tansu into the same collector for --live-s seconds, while a
   client holds /api/stream open. For every reading the stream delivers:
   commit -> visible = arrival at the client - the COMMIT time of its row
   (PostgreSQL's track_commit_timestamp); p50, p99 and max. (The fleet page
   draws what arrived at most every 500 ms on top of this.)

  scripts/bench-dashboard.py [--devices 1000] [--hours 2.8] [--live-devices 1000] [--live-s 60]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Services  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-token-0123456789abcdef"


def psql(port, sql, db="postgres"):
    r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db,
                        "-v", "ON_ERROR_STOP=1", "-qtAX", "-c", sql], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"psql failed: {r.stderr}")
    return r.stdout.strip()


def timed_get(port, path, n):
    times = []
    for _ in range(n):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        t = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as r:
            body = r.read()
        times.append((time.perf_counter() - t) * 1000)
    return times, len(body)


def load_history(pg_port, devices, hours):
    seconds = int(hours * 3600)
    end = int(time.time()) - 120
    start = end - seconds
    print(f"writing {devices} x {seconds} = {devices * seconds:,} readings ...", file=sys.stderr)
    t = time.time()
    psql(pg_port, f"SELECT hb_ensure_reading_partitions(ARRAY(SELECT to_timestamp(s) FROM "
                  f"generate_series({start}, {end}, 3600) s) || to_timestamp({end}))", "heartbeat")
    # In slices of devices, so that no single statement runs for minutes.
    step = max(1, devices // 10)
    for first in range(0, devices, step):
        psql(pg_port, f"""
            INSERT INTO readings (device_id, epoch, seq, ts, ts_corrected, mono_ms, clock_synced, received_at,
                bpm, contact, rr_1024, rr_consistent, status, backfill, kafka_partition, kafka_offset)
            SELECT 'sim-' || d, 1, s, to_timestamp({start} + s), to_timestamp({start} + s), s * 1000, true,
                to_timestamp({start} + s + 0.2), b, 'detected', ARRAY[(61440 / greatest(b, 30))::int], true,
                CASE WHEN b < 50 THEN 'bradycardia' WHEN b > 110 THEN 'tachycardia' ELSE 'normal' END,
                false, d % 16, s
            FROM generate_series({first}, {min(devices, first + step) - 1}) d,
                 generate_series(0, {seconds - 1}) s,
                 LATERAL (SELECT (70 + 15 * sin(s / 300.0 + d) + (d % 7) * 3 +
                                  CASE WHEN (s / 1800 + d) % 17 = 0 THEN 50 ELSE 0 END)::int AS b) x
            """, "heartbeat")
        print(f"  {min(devices, first + step)} devices written ({time.time() - t:.0f} s)", file=sys.stderr)
    psql(pg_port, f"""
        INSERT INTO devices (device_id, first_seen, last_seen, last_ts, last_epoch, last_seq, last_bpm,
                             last_status, kafka_partition)
        SELECT 'sim-' || d, to_timestamp({start}), to_timestamp({end}), to_timestamp({end}), 1, {seconds - 1},
               72, 'normal', d % 16 FROM generate_series(0, {devices - 1}) d;
        INSERT INTO reading_counts SELECT date_trunc('minute', to_timestamp({start} + m * 60)), p, 'normal', 60 * {devices} / 16
        FROM generate_series(0, {seconds // 60}) m, generate_series(0, 15) p;
        INSERT INTO alerts (alert_key, device_id, kind, severity, retrospective, origin_epoch, origin_seq,
                            onset_at, opened_at, closed_at, peak_bpm, last_bpm, readings, signal_lost)
        SELECT 'sim-' || d || '/tachycardia/1/' || k, 'sim-' || d, 'tachycardia', 'medium', false, 1, k,
               to_timestamp({start} + k), to_timestamp({start} + k + 10),
               CASE WHEN d % 50 = 0 AND k = {seconds - 600} THEN NULL ELSE to_timestamp({start} + k + 300) END,
               140, 140, 10, false
        FROM generate_series(0, {devices - 1}) d, generate_series(0, {seconds - 600}, 1800) k;
        ANALYZE;
        """, "heartbeat")
    print(f"history written in {time.time() - t:.0f} s", file=sys.stderr)


def stream_client(port, arrivals, stop):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /api/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    s.settimeout(1)
    buffer = b""
    while not stop.is_set():
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            break
        now = time.time() * 1000
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                readings = json.loads(line[5:]).get("readings")  # or a transition, ack, resync
                for row in readings["rows"] if readings else []:
                    arrivals[(row[0], row[5], row[6])] = now
    s.close()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=2.8)
    ap.add_argument("--live-devices", type=int, default=1000)
    ap.add_argument("--live-s", type=int, default=60)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    release = os.path.join(ROOT, "target", "release")
    work = tempfile.mkdtemp(prefix="hb-bench-dashboard-")
    os.chmod(work, 0o755)
    services = Services(work)
    try:
        pg_port, _ = services.start_postgres([("max_connections", "50"), ("track_commit_timestamp", "on"),
                                              ("shared_buffers", "1GB")])
        psql(pg_port, "CREATE DATABASE heartbeat")
        pg_url = f"postgres://postgres@127.0.0.1:{pg_port}/heartbeat"
        kafka, _ = services.start_tansu()
        mqtt_url, _ = services.start_mosquitto(["max_queued_messages 100000"])
        services.start_bridge(release, mqtt_url, kafka, "hb", "bench")
        subprocess.run([os.path.join(release, "hb-collector"), "--database-url", pg_url, "migrate"],
                       check=True, capture_output=True)
        load_history(pg_port, args.devices, args.hours)
        http, _ = services.start_collector(release, pg_url, kafka,
                                           ["--dashboard-token", f"bench={TOKEN}", "--offline-after-s", "86400"])
        rows = int(psql(pg_port, "SELECT count(*) FROM readings", "heartbeat"))
        now = int(time.time() * 1000)
        device = f"sim-{args.devices // 2}"
        print(f"\n## API at {rows:,} readings, {args.devices} devices (ms per call)\n")
        print("| call | p50 | p95 | max | bytes |\n|---|---|---|---|---|")
        for name, path, n in [
            ("fleet: /api/devices", "/api/devices", 30),
            ("fleet: /api/stats", "/api/stats", 30),
            ("fleet: /api/sparklines", "/api/sparklines", 10),
            ("device: 1 h trend", f"/api/devices/{device}/readings?from={now - 3600000}&to={now}", 30),
            ("device: 24 h trend", f"/api/devices/{device}/readings?from={now - 86400000}&to={now}", 30),
            ("device: 7 d trend", f"/api/devices/{device}/readings?from={now - 7 * 86400000}&to={now}", 10),
            ("device: details", f"/api/devices/{device}", 30),
            ("alerts: open", "/api/alerts?state=open", 30),
        ]:
            timed_get(http, path, 2)  # warm
            times, size = timed_get(http, path, n)
            print(f"| {name} | {statistics.median(times):.1f} | {pct(times, 0.95):.1f} | {max(times):.1f} | {size:,} |")

        print(f"\n## Commit -> visible on /api/stream, {args.live_devices} devices at 1 Hz for {args.live_s} s\n")
        arrivals, stop = {}, threading.Event()
        client = threading.Thread(target=stream_client, args=(http, arrivals, stop))
        client.start()
        time.sleep(1)
        state = os.path.join(work, "agent")
        agent = services.start("hb-agent", [os.path.join(release, "hb-agent"), "--devices", str(args.live_devices),
                                            "--mqtt-url", mqtt_url, "--state-dir", state,
                                            "--device-id-template", "live-{index}"])
        time.sleep(args.live_s)
        agent.terminate()
        agent.wait(timeout=60)
        time.sleep(3)
        stop.set()
        client.join()
        commits = psql(pg_port, """
            SELECT device_id || ',' || epoch || ',' || seq || ',' ||
                   (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000)::int8
            FROM readings WHERE device_id LIKE 'live-%'""", "heartbeat").splitlines()
        latencies, missing = [], 0
        for line in commits:
            d, e, s, c = line.split(",")
            a = arrivals.get((d, int(e), int(s)))
            if a is None:
                missing += 1
            else:
                latencies.append(a - int(c))
        if latencies:
            print(f"readings stored: {len(commits):,}; seen on the stream: {len(latencies):,} "
                  f"(not seen: {missing})")
            print(f"commit -> visible: p50 {statistics.median(latencies):.0f} ms, "
                  f"p99 {pct(latencies, 0.99):.0f} ms, max {max(latencies):.0f} ms")
        else:
            print("no live readings were seen on the stream")
    finally:
        services.stop_all()


if __name__ == "__main__":
    main()
