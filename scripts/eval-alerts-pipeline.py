#!/usr/bin/env python3
"""The collector's alerts against the offline evaluation, for the same simulated
fleet. Runs the whole pipeline on private services (PostgreSQL, tansu in memory,
Mosquitto, hb-bridge, hb-collector) with an hb-agent simulating --devices straps
for --count readings each at --rate-hz, waits until PostgreSQL holds every reading,
then runs `agent/examples/eval_alerts.rs` on the same simulation (same seed, device
indexes, period and count) and compares the live alert transitions one by one:
(device, kind, transition, ordinal, the seq the episode began with). Prints what
matched and what did not; the exit status is 0 only if they are the same.

Usage: scripts/eval-alerts-pipeline.py [--devices 50] [--rate-hz 5] [--count 1500]
           [--episodes-per-hour 24] [--episode-duration-s 30]
           [--dropouts-per-hour 12] [--dropout-duration-s 15] [--seed 3]
Needs mosquitto, tansu and PostgreSQL (scripts/test.sh installs them). Builds the
release binaries and the example first (honours CARGO_TARGET_DIR).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Services, ensure_venv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ensure_venv({"psycopg2-binary": "psycopg2"})
    import psycopg2

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate-hz", type=float, default=5.0)
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--episodes-per-hour", type=float, default=24.0)
    ap.add_argument("--episode-duration-s", type=int, default=30)
    ap.add_argument("--dropouts-per-hour", type=float, default=12.0)
    ap.add_argument("--dropout-duration-s", type=int, default=15)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-p", "hb-agent", "-p", "hb-bridge", "-p", "hb-collector",
                    "--bins", "--example", "eval_alerts"], cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    release = os.path.join(json.loads(meta.stdout)["target_directory"], "release")
    sim = ["--episodes-per-hour", str(args.episodes_per_hour), "--episode-duration-s", str(args.episode_duration_s),
           "--dropouts-per-hour", str(args.dropouts_per_hour), "--dropout-duration-s", str(args.dropout_duration_s),
           "--seed", str(args.seed)]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="hb-eval-alerts-")
    os.chmod(work, 0o755)
    services = Services(work)
    try:
        pg_port, _ = services.start_postgres([("max_connections", "50")])
        pg_url = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
        kafka, _ = services.start_tansu()
        mqtt_url, _ = services.start_mosquitto(["max_queued_messages 1000000"])
        services.start_bridge(release, mqtt_url, kafka, "eval", "eval")
        # Nobody goes offline during the run: the comparison is about readings.
        services.start_collector(release, pg_url, kafka, ["--offline-after-s", "86400"])
        agent = services.start("agent", [os.path.join(release, "hb-agent"), "--devices", str(args.devices),
                                         "--rate-hz", str(args.rate_hz), "--count", str(args.count),
                                         "--mqtt-url", mqtt_url, "--mqtt-topic-root", "eval",
                                         "--device-id-template", "e-{index}", "--state-dir",
                                         os.path.join(work, "state"), *sim], cwd=work)
        expected = args.devices * args.count
        print(f"Pipeline: {args.devices} devices × {args.count} readings at {args.rate_hz} Hz "
              f"({args.count / args.rate_hz:.0f} s each)...", flush=True)
        pg = psycopg2.connect(pg_url)
        pg.autocommit = True
        cur = pg.cursor()
        deadline = time.time() + args.count / args.rate_hz + 300
        stored = 0
        while time.time() < deadline:
            cur.execute("SELECT count(*) FROM readings")
            stored = cur.fetchone()[0]
            if stored >= expected:
                break
            time.sleep(2)
        if stored < expected:
            raise SystemExit(f"only {stored} of {expected} readings stored in time")
        time.sleep(2)  # the outbox and any last batch
        cur.execute("SELECT count(*) FROM readings WHERE backfill")
        backfilled = cur.fetchone()[0]
        cur.execute("""SELECT a.device_id, a.kind, t.transition, t.ordinal, a.origin_seq, a.retrospective
                       FROM alert_transitions t JOIN alerts a ON a.id = t.alert_id""")
        online, retro = set(), 0
        for device, kind, transition, ordinal, origin_seq, retrospective in cur.fetchall():
            if retrospective:
                retro += 1
                continue
            if kind == "device_offline":
                continue
            online.add((int(device.split("-")[1]), kind, transition, ordinal, origin_seq))
        agent.wait(timeout=120)
    finally:
        services.stop_all()

    out = os.path.join(work, "offline.jsonl")
    subprocess.run([os.path.join(release, "examples", "eval_alerts"), "--devices", str(args.devices),
                    "--rate-hz", str(args.rate_hz), "--readings", str(args.count), "--transitions-out", out, *sim],
                   check=True, capture_output=True)
    offline = set()
    with open(out) as f:
        for line in f:
            t = json.loads(line)
            offline.add((t["device"], t["kind"], t["transition"], t["ordinal"], t["origin_seq"]))
    both = online & offline
    print(f"Readings stored: {expected} ({backfilled} as backfill; their {retro} retrospective transitions are not compared)")
    print(f"Live transitions: pipeline {len(online)}, offline {len(offline)}, the same {len(both)}")
    for name, only in (("only in the pipeline", online - offline), ("only offline", offline - online)):
        for t in sorted(only)[:20]:
            print(f"  {name}: device {t[0]} {t[1]} {t[2]} #{t[3]} (episode began at seq {t[4]})")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if online == offline else 1)


if __name__ == "__main__":
    main()
