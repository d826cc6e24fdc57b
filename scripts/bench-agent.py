#!/usr/bin/env python3
"""Footprint of hb-agent: RSS and CPU for 1 device and for 1000 devices at 1 Hz,
and the stripped release binary size. A benchmark that prints figures (no pass or
fail: this machine is shared and noisy).

With `--confirm stored` (the agent's default) a stand-in for the collector and
bridge (agent/examples/confirm_echo.rs) confirms every reading the broker
receives, every 2 s per device as the real pipeline does, so the agent runs with
its back channel; `--confirm puback` measures it without. Both side by side:
`--confirm stored,puback`. Also prints the confirmations' MQTT traffic per device.

`--baseline BINARY` measures another hb-agent build (say, of the commit before a
change) in the same run, alternating with this one, so that the two compare on the
same machine at the same time.

Usage: scripts/bench-agent.py [--seconds 60] [--devices 1,1000] [--profile release]
                              [--confirm stored,puback] [--baseline BINARY]
Needs mosquitto (scripts/test.sh installs it). Builds the release binary first.
"""
import argparse
import os
import sys
import shutil
import subprocess
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import free_port, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return rss_kb, ticks


def run(binary, devices, seconds, mqtt_port, work, confirm, tag="this"):
    state = os.path.join(work, f"state-{devices}-{confirm}-{tag}")
    cmd = [binary, "--devices", str(devices), "--rate-hz", "1",
           "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--state-dir", state,
           "--connect-stagger-ms", "2000", "--episodes-per-hour", "1",
           "--confirm", confirm, "--device-id-template", f"{confirm}-{tag}-{{index}}"]
    log = open(os.path.join(work, f"agent-{devices}-{confirm}-{tag}.log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "HB_LOG": "warn"})
    hz = os.sysconf("SC_CLK_TCK")
    time.sleep(5)  # connect and settle
    rss, ticks0 = proc_sample(p.pid)
    t0 = time.time()
    peak, samples = rss, []
    while time.time() - t0 < seconds:
        time.sleep(1)
        rss, ticks = proc_sample(p.pid)
        peak = max(peak, rss)
        samples.append(rss)
    cpu = (ticks - ticks0) / hz / (time.time() - t0) * 100
    p.terminate()
    p.wait(timeout=30)
    return sum(samples) / len(samples) / 1024, peak / 1024, cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--devices", default="1,1000")
    ap.add_argument("--profile", default="release", help="cargo profile to build and measure")
    ap.add_argument("--confirm", default="stored", help="agent --confirm modes to measure, comma-separated")
    ap.add_argument("--baseline", help="another hb-agent binary to measure alongside")
    args = ap.parse_args()
    # Apart: built together, the example's dev-dependencies' features (tokio's
    # "full") would be unified into the measured binary.
    subprocess.run(["cargo", "build", "--profile", args.profile, "-p", "hb-agent", "--quiet",
                    "--bin", "hb-agent"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--profile", args.profile, "-p", "hb-agent", "--quiet",
                    "--example", "confirm_echo"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", args.profile, "hb-agent")
    echo_bin = os.path.join(ROOT, "target", args.profile, "examples", "confirm_echo")
    work = tempfile.mkdtemp(prefix="hb-bench-")
    os.chmod(work, 0o755)
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n"
                "max_queued_messages 4000000\nmax_connections -1\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([mosquitto, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        print(f"hb-agent {args.profile} binary (stripped): {os.path.getsize(binary) / 1e6:.2f} MB")
        binaries = [("this", binary)]
        if args.baseline:
            binaries.insert(0, ("baseline", args.baseline))
            print(f"baseline binary: {os.path.getsize(args.baseline) / 1e6:.2f} MB")
        print(f"{'binary':>8} {'devices':>8} {'confirm':>8} {'avg RSS MB':>11} {'peak RSS MB':>12} "
              f"{'CPU % of one core':>18}   ({args.seconds} s at 1 Hz)")
        for n in [int(x) for x in args.devices.split(",")]:
            for confirm in args.confirm.split(","):
                echo = None
                if confirm == "stored":
                    echo = subprocess.Popen([echo_bin, "--port", str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    for name, b in binaries:
                        avg, peak, cpu = run(b, n, args.seconds, port, work, confirm, name)
                        print(f"{name:>8} {n:>8} {confirm:>8} {avg:>11.1f} {peak:>12.1f} {cpu:>18.2f}")
                finally:
                    if echo:
                        echo.terminate()
                        echo.wait()
        # What the back channel costs each device, as the broker sends it: one
        # retained confirmation per device per 2 s at most (QoS 0 to the device).
        sample = ('{"version":1,"device_id":"sim-123","epochs":[{"epoch":4,'
                  '"ranges":[[0,3599]]}]}')
        topic = "hb/v1/devices/sim-123/stored"
        publish = 2 + 2 + len(topic) + 2 + len(sample)
        publish -= 2  # QoS 0: no packet id
        print(f"confirmation traffic per device at 1 Hz: <= 0.5 messages/s, {publish} B per message "
              f"(typical JSON {len(sample)} B), no acknowledgement back: <= {publish / 2:.0f} B/s")
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
