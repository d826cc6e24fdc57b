#!/usr/bin/env python3
"""Forwarding rate of hb-bridge next to a raw rdkafka producer with the same
settings, and the bridge's CPU per 1000 messages. A benchmark that prints figures
(no pass or fail: this machine is shared and noisy); the target is a bridge rate of
at least 0.5x the raw producer's.

How: a private Mosquitto and tansu (in memory) on free loopback ports. The bridge
starts once to create its persistent session and stops; `mqtt_load` queues N
readings for that offline session; the bridge starts again and drains them, timed
from its start until /metrics shows N forwarded, with its CPU (utime + stime) over
the same span. Then `raw_producer` sends N records of the same payloads, keys and
headers straight to Kafka through `hb_bridge::kafka::create_producer`, with the
same in-flight cap.

Usage: scripts/bench-bridge.py [--count 100000] [--devices 100]
Needs mosquitto and tansu (scripts/test.sh installs them). Builds the release
binary and examples of hb-bridge first (honours CARGO_TARGET_DIR).
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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")


def wait_log(path, text, proc, name, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        with open(path) as f:
            if text in f.read():
                return
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}; see {path}")
        time.sleep(0.05)
    raise SystemExit(f"{name} did not log {text!r} within {timeout} s")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def metrics(port):
    """The unlabelled samples of /metrics as {name: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def key_values(output, prefix):
    """Parses the `prefix: key=value ...` line an example prints."""
    for line in output.splitlines():
        if line.startswith(prefix + ":"):
            return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    raise SystemExit(f"no {prefix!r} line in:\n{output}")


class Processes:
    """Child processes, stopped in reverse order however the run ends."""

    def __init__(self, work):
        self.work = work
        self.running = []

    def start(self, name, cmd, **kw):
        log = open(os.path.join(self.work, f"{name}.log"), "a")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.work, **kw)
        self.running.append((name, p, log))
        return p, log.name

    def stop(self, p, timeout=30):
        for entry in list(self.running):
            if entry[1] is p:
                self.running.remove(entry)
                name, _, log = entry
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=timeout)
                    except subprocess.TimeoutExpired:
                        print(f"{name} did not stop in {timeout} s; killing it", file=sys.stderr)
                        p.kill()
                        p.wait()
                log.close()

    def stop_all(self):
        for _, p, _ in reversed(list(self.running)):
            self.stop(p, timeout=10)


def run_example(path, args, name, work):
    r = subprocess.run([path, *args], cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return key_values(r.stdout, name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=100)
    args = ap.parse_args()
    if args.count < 1 or args.devices < 1:
        ap.error("--count and --devices must be at least 1")
    n = args.count

    subprocess.run(["cargo", "build", "--release", "-p", "hb-bridge", "--bins", "--examples", "--quiet"],
                   cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    release = os.path.join(json.loads(meta.stdout)["target_directory"], "release")
    bridge_bin = os.path.join(release, "hb-bridge")
    mqtt_load = os.path.join(release, "examples", "mqtt_load")
    raw_producer = os.path.join(release, "examples", "raw_producer")

    # SIGTERM (as well as Ctrl-C and errors) goes through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="hb-bench-bridge-")
    os.chmod(work, 0o755)  # mosquitto, started as root, drops to its own user
    procs = Processes(work)
    try:
        mqtt_port, kafka_port, http_port = free_port(), free_port(), free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 1000\nmax_queued_messages 4000000\nmax_queued_bytes 0\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        broker, _ = procs.start("mosquitto", [mosquitto, "-c", conf])
        wait_port(mqtt_port, broker, "mosquitto")
        kafka_url = f"tcp://127.0.0.1:{kafka_port}"
        tansu, _ = procs.start("tansu", [shutil.which("tansu") or "tansu", "broker",
                                         "--listener-url", kafka_url, "--advertised-listener-url", kafka_url,
                                         "--storage-engine", "memory://tansu/"])
        wait_port(kafka_port, tansu, "tansu")

        mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"
        kafka = f"127.0.0.1:{kafka_port}"
        root = f"bench-{os.getpid()}"
        bridge_cmd = [bridge_bin, "--mqtt-url", mqtt_url, "--kafka-brokers", kafka,
                      "--http-addr", f"127.0.0.1:{http_port}", "--instance-id", "bench",
                      "--mqtt-topic-root", root, "--kafka-topic-prefix", "bench."]

        # 1. Create the bridge's persistent session (and its topics), then leave it offline.
        bridge, log = procs.start("hb-bridge", bridge_cmd)
        wait_log(log, "Subscribed to MQTT topics.", bridge, "hb-bridge")
        procs.stop(bridge)

        # 2. Queue N readings for the offline session.
        load = run_example(mqtt_load, ["--mqtt-url", mqtt_url, "--root", root, "--count", str(n),
                                       "--devices", str(args.devices)], "mqtt_load", work)

        # 3. The bridge drains them: wall time and CPU from its start to N forwarded.
        t0 = time.monotonic()
        bridge, log = procs.start("hb-bridge", bridge_cmd)
        deadline = t0 + max(120, n / 500)
        forwarded, first_at, in_flight = 0, None, []
        while True:
            if bridge.poll() is not None:
                raise SystemExit(f"hb-bridge exited with {bridge.returncode}; see {log}")
            try:
                m = metrics(http_port)
            except OSError:
                m = None
            now = time.monotonic()
            if m is not None:
                forwarded = m.get("hb_bridge_forwarded_total", 0)
                if m.get("hb_bridge_received_total", 0) > 0:
                    first_at = first_at or now
                    in_flight.append(m.get("hb_bridge_in_flight", 0))
                if forwarded >= n:
                    ticks = cpu_ticks(bridge.pid)
                    break
            if now > deadline:
                raise SystemExit(f"hb-bridge forwarded {forwarded:.0f} of {n} within "
                                 f"{now - t0:.0f} s; see {log}")
            time.sleep(0.05)
        bridge_s = now - t0
        latency_ms = m["hb_bridge_delivery_seconds_sum"] / m["hb_bridge_delivery_seconds_count"] * 1000
        bridge_cpu_s = ticks / HZ
        if m.get("hb_bridge_delivery_retries_total", 0):
            print(f"note: the bridge retried {m['hb_bridge_delivery_retries_total']:.0f} deliveries")
        procs.stop(bridge)

        # 4. The raw producer, same settings, own topics.
        raw = run_example(raw_producer, ["--kafka-brokers", kafka, "--kafka-topic-prefix", "raw.",
                                         "--instance-id", "bench-raw", "--count", str(n),
                                         "--devices", str(args.devices)], "raw_producer", work)

        bridge_rate = n / bridge_s
        ratio = bridge_rate / raw["rate"]
        print(f"N = {n} readings over {args.devices} devices, payload {raw['payload_bytes']:.1f} bytes "
              f"(postcard, one reading each); queued by mqtt_load in {load['seconds']:.1f} s")
        print(f"{'':<34} {'messages/s':>11} {'seconds':>8} {'CPU ms/1000 msg':>16}")
        print(f"{'hb-bridge (MQTT backlog -> Kafka)':<34} {bridge_rate:>11.0f} {bridge_s:>8.2f} "
              f"{bridge_cpu_s * 1000 / n * 1000:>16.1f}")
        print(f"{'raw rdkafka producer':<34} {raw['rate']:>11.0f} {raw['seconds']:>8.2f} "
              f"{raw['cpu_seconds'] * 1000 / n * 1000:>16.1f}")
        print(f"ratio bridge/raw: {ratio:.2f} (target >= 0.5)")
        startup = f"{first_at - t0:.2f} s" if first_at else "n/a"
        print(f"bridge: timed from process start (first message taken after {startup}); "
              f"mean in flight {sum(in_flight) / max(len(in_flight), 1):.0f}, "
              f"mean produce-to-confirm {latency_ms:.1f} ms")
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
