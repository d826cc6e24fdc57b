#!/usr/bin/env python3
"""The whole pipeline under a ramp of load: simulated agents -> Mosquitto ->
hb-bridge -> Kafka (tansu, in memory) -> hb-collector -> PostgreSQL, every process
on this machine, one step per fleet x rate. A benchmark that prints figures and
draws a chart (no pass or fail: the machine is shared and noisy).

Per step, a fresh hb-agent (its own device names, `--count` readings per device,
`--confirm stored`) offers devices x rate readings/s for --step-s seconds; then
the run waits until every reading is stored (or --drain-timeout-s passes).
  offered/s   readings whose sensor time falls in the step / step length
  stored/s    readings committed during the step / step length
  in flight   readings generated before the step's end and committed after it
              (the lag of the whole pipeline, in readings)
  lost        readings generated and never stored, exact per device and epoch
  p50, p99    commit time - sensor time (PostgreSQL's track_commit_timestamp);
              "recv p50" is the collector's receive time - sensor time
  drain       seconds from the step's end until its last reading was committed
  CPU         user + system time of each process from the step's start until
              drained, in microseconds per stored reading (postgres: every
              backend); RSS: the largest sampled, in MB
With --baseline (the default) each step is also run through
scripts/baseline_original.py (the original design: one INSERT and COMMIT per
reading, in Python), in the same run, on the same services.

With --outage FLEETxRATE:SECONDS one more step pauses Kafka (SIGSTOP to tansu)
that long under load: a backlog for the bridge to hold and then drain. With tansu
0.6 only the bridge's figures mean something there: tansu does not hand a
consumer group its partitions again after a pause longer than the session
timeout (a restarted collector got none either), so the readings reach Kafka and
stay there, and the step reports them as lost. Against Apache Kafka the
collector carries on.

Usage: scripts/bench-e2e.py [--steps 1000x1,1000x5,1000x10,2000x10] [--step-s 60]
                            [--no-baseline] [--outage 2000x1:600] [--out bench/results]
Writes <out>/e2e-<date>.md (table and machine) and .png (stored/s and latency
against offered load). Needs mosquitto, tansu and PostgreSQL (scripts/test.sh
installs them); builds the release binaries first; runs itself in a virtualenv
with matplotlib, confluent-kafka and psycopg2-binary (target/bench-venv).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Services, ensure_venv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HZ = os.sysconf("SC_CLK_TCK")
PACKAGES = {"matplotlib": "matplotlib", "psycopg2-binary": "psycopg2", "confluent-kafka": "confluent_kafka"}
LEAD_S = 5
PROCESSES = ["agent", "mosquitto", "hb-bridge", "tansu", "hb-collector", "postgres"]


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid):
    """The postmaster's backends (and itself)."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


class Sampler(threading.Thread):
    """CPU ticks (including exited postgres backends' last reading) and peak RSS of
    named processes, every 0.5 s."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids  # name -> pid; "postgres" -> postmaster pid
        self.ticks = {}   # (name, pid) -> last ticks seen
        self.peak = {name: 0.0 for name in pids}
        self.stop = threading.Event()
        self.sample()

    def sample(self):
        for name, pid in self.pids.items():
            pids = children(pid) if name == "postgres" else [pid]
            rss = 0.0
            for p in pids:
                t = cpu_ticks(p)
                if t:
                    self.ticks[(name, p)] = t
                rss += rss_mb(p) if name != "postgres" else 0.0
            if name == "postgres":
                rss = rss_mb(pid) + sum(rss_mb(p) for p in pids[1:])
            self.peak[name] = max(self.peak[name], rss)

    def cpu_s(self):
        self.sample()
        out = {name: 0.0 for name in self.pids}
        for (name, _), t in self.ticks.items():
            out[name] += t / HZ
        return out

    def run(self):
        while not self.stop.wait(0.5):
            self.sample()


def sql(pg, query, args=()):
    with pg.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchone()


def step_figures(pg, prefix, start, end, expected):
    row = sql(pg, """
        SELECT count(DISTINCT (device_id, epoch, seq)),
               count(*) FILTER (WHERE ts >= to_timestamp(%(s)s) AND ts < to_timestamp(%(e)s)),
               count(*) FILTER (WHERE pg_xact_commit_timestamp(xmin) < to_timestamp(%(e)s)),
               count(*) FILTER (WHERE ts < to_timestamp(%(e)s)
                                  AND pg_xact_commit_timestamp(xmin) >= to_timestamp(%(e)s)),
               percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                   (ORDER BY extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts)::float8),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM received_at - ts)::float8),
               extract(epoch FROM max(pg_xact_commit_timestamp(xmin)))::float8
        FROM readings WHERE device_id LIKE %(p)s""", {"s": start, "e": end, "p": prefix + "-%"})
    distinct, in_window, committed, backlog, (p50, p99), recv_p50, last_commit = row
    length = end - start
    return {"offered_per_s": in_window / length, "stored_per_s": committed / length,
            "backlog": backlog, "lost": expected - distinct, "stored": distinct,
            "p50_s": p50, "p99_s": p99, "recv_p50_s": recv_p50,
            "drain_s": max(0.0, (last_commit or end) - end)}


def run_step(ctx, index, devices, rate_hz, args, outage_s=0):
    """One step; with `outage_s`, Kafka (tansu) is paused (SIGSTOP) that long
    from 10 s into the step, and the step lasts the outage plus 40 s."""
    prefix = f"s{index}x{devices}x{rate_hz:g}" + (f"-outage{outage_s}" if outage_s else "")
    step_s = args.step_s if not outage_s else outage_s + 40
    # Readings enough to cover the connection stagger and the whole step.
    count = int(rate_hz * (LEAD_S + step_s + 1))
    expected = devices * count
    agent_cmd = [ctx["bin"]("hb-agent"), "--devices", str(devices), "--rate-hz", str(rate_hz),
                 "--count", str(count), "--mqtt-url", ctx["mqtt_url"], "--mqtt-topic-root", "bench",
                 "--device-id-template", f"{prefix}-{{index}}", "--connect-stagger-ms", "2000",
                 "--state-dir", os.path.join(ctx["work"], f"state-{prefix}")]
    agent = ctx["services"].start(f"agent-{prefix}", agent_cmd, cwd=ctx["work"])
    pids = dict(ctx["pids"], agent=agent.pid)
    sampler = Sampler(pids)
    sampler.start()
    cpu0 = sampler.cpu_s()
    time.sleep(LEAD_S)  # the connection stagger; the step is timed from here
    start = time.time()
    if outage_s:
        time.sleep(10)
        os.kill(ctx["pids"]["tansu"], signal.SIGSTOP)
        try:
            time.sleep(outage_s)
        finally:
            os.kill(ctx["pids"]["tansu"], signal.SIGCONT)
        time.sleep(step_s - 10 - outage_s)
    else:
        time.sleep(step_s)
    end = time.time()
    deadline = end + args.drain_timeout_s
    stored = 0
    while time.time() < deadline:
        stored = sql(ctx["pg"], "SELECT count(*) FROM readings WHERE device_id LIKE %s", (prefix + "-%",))[0]
        if stored >= expected:
            break
        time.sleep(1)
    cpu1 = sampler.cpu_s()
    sampler.stop.set()
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=30)
    except subprocess.TimeoutExpired:
        agent.kill()
    f = step_figures(ctx["pg"], prefix, start, end, expected)
    f.update(devices=devices, rate_hz=rate_hz, nominal_per_s=devices * rate_hz, outage_s=outage_s,
             bridge_connects=metric(ctx["bridge_http"], "hb_bridge_mqtt_connects_total"))
    f["cpu_us"] = {n: (cpu1[n] - cpu0[n]) * 1e6 / max(f["stored"], 1) for n in PROCESSES}
    f["rss_mb"] = dict(sampler.peak)
    return f


def metric(port, name):
    """One unlabelled sample of a process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def run_baseline(ctx, devices, rate_hz, args):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "baseline_original.py"),
           "--kafka-brokers", ctx["kafka"], "--pg-url", ctx["pg_url"], "--devices", str(devices),
           "--rate-hz", str(rate_hz), "--seconds", str(args.step_s),
           "--drain-timeout-s", str(args.drain_timeout_s), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"baseline failed ({r.returncode}):\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def table(results):
    lines = ["| fleet × rate | offered/s | stored/s | in flight at end | lost | p50 / p99 (s) | recv p50 (s) "
             "| drain (s) | CPU µs/reading: agent, mosquitto, bridge, tansu, collector, postgres "
             "| peak RSS MB: agent, bridge, collector "
             "| original design: stored/s, not stored within the drain timeout, p50 / p99 (s), "
             "µs/reading consumer + producer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b = r.get("baseline")
        base = "not run" if b is None else (
            f"{b['stored_per_s']:.0f}, {b['lost']}, {fmt(b['p50_s'], '.2f')} / {fmt(b['p99_s'], '.2f')}, "
            f"{fmt(b['consumer_cpu_us_per_reading'], '.0f')} + {fmt(b['producer_cpu_us_per_reading'], '.0f')}")
        cpu = ", ".join(f"{r['cpu_us'][n]:.0f}" for n in PROCESSES)
        rss = ", ".join(f"{r['rss_mb'][n]:.0f}" for n in ("agent", "hb-bridge", "hb-collector"))
        outage = (f", Kafka paused {r['outage_s']} s; bridge MQTT connections: {r['bridge_connects']:.0f}"
                  if r.get("outage_s") else "")
        lines.append(f"| {r['devices']} × {r['rate_hz']:g}{outage} | {r['offered_per_s']:.0f} | {r['stored_per_s']:.0f} "
                     f"| {r['backlog']} | {r['lost']} | {fmt(r['p50_s'], '.2f')} / {fmt(r['p99_s'], '.2f')} "
                     f"| {fmt(r['recv_p50_s'], '.2f')} | {r['drain_s']:.1f} | {cpu} | {rss} | {base} |")
    return "\n".join(lines)


def chart(results, path):
    results = [r for r in results if not r.get("outage_s")]
    if not results:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    offered = [r["offered_per_s"] for r in results]
    ax1.plot(offered, [r["stored_per_s"] for r in results], "o-", label="Heartbeat")
    base = [(r["baseline"]["offered_per_s"], r["baseline"]["stored_per_s"]) for r in results if r.get("baseline")]
    if base:
        ax1.plot(*zip(*base), "s--", label="original design")
    top = max(offered + [x for x, _ in base]) * 1.05
    ax1.plot([0, top], [0, top], ":", color="grey", label="stored = offered")
    ax1.set(xlabel="offered readings/s", ylabel="stored readings/s", title="Throughput")
    ax1.legend()
    ax2.plot(offered, [r["p50_s"] for r in results], "o-", label="Heartbeat p50")
    ax2.plot(offered, [r["p99_s"] for r in results], "o-", label="Heartbeat p99")
    if base:
        ax2.plot([r["baseline"]["offered_per_s"] for r in results if r.get("baseline")],
                 [r["baseline"]["p99_s"] for r in results if r.get("baseline")], "s--", label="original p99")
    ax2.set(xlabel="offered readings/s", ylabel="sensor → stored, s", title="Latency", yscale="log")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return f"{os.cpu_count()} × {cpu}, {mem / 1024 / 1024:.0f} GiB, {platform.platform()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="1000x1,1000x5,1000x10,2000x10",
                    help="fleet x rate (readings per device per second), comma-separated")
    ap.add_argument("--step-s", type=int, default=60)
    ap.add_argument("--drain-timeout-s", type=int, default=180)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--outage", default="",
                    help="after the ramp, FLEETxRATE:SECONDS: one more step with Kafka paused that long "
                         "(a backlog; the original design is not run for it)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()
    steps = [(int(d), float(r)) for d, r in (s.split("x") for s in args.steps.split(",") if s)]
    outage = None
    if args.outage:
        load, seconds = args.outage.split(":")
        outage = (int(load.split("x")[0]), float(load.split("x")[1]), int(seconds))
    ensure_venv(PACKAGES)
    import psycopg2

    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    release = os.path.join(json.loads(meta.stdout)["target_directory"], "release")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="hb-bench-e2e-")
    os.chmod(work, 0o755)
    services = Services(work)
    try:
        pg_port, bindir = services.start_postgres([("max_connections", "50"), ("track_commit_timestamp", "on")])
        pg_url = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
        kafka, tansu_pid = services.start_tansu()
        mqtt_url, broker = services.start_mosquitto(["max_inflight_messages 1000", "max_queued_messages 4000000",
                                                     "max_queued_bytes 0"])
        http_bridge, bridge = services.start_bridge(release, mqtt_url, kafka, "bench", "e2e")
        _, collector = services.start_collector(release, pg_url, kafka)
        pg = psycopg2.connect(pg_url)
        pg.autocommit = True
        ctx = {"services": services, "work": work, "bridge_http": http_bridge, "mqtt_url": mqtt_url, "kafka": kafka, "pg": pg,
               "pg_url": pg_url, "bin": lambda name: os.path.join(release, name),
               "pids": {"mosquitto": broker.pid, "hb-bridge": bridge.pid, "tansu": tansu_pid,
                        "hb-collector": collector.pid, "postgres": int(open(os.path.join(
                            services.pg_data, "postmaster.pid")).readline())}}
        results = []
        for i, (devices, rate) in enumerate(steps):
            print(f"step {i + 1}/{len(steps)}: {devices} devices × {rate:g} Hz for {args.step_s} s", flush=True)
            r = run_step(ctx, i, devices, rate, args)
            if not args.no_baseline:
                print("  the original design, same load", flush=True)
                r["baseline"] = run_baseline(ctx, devices, rate, args)
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
        if outage:
            devices, rate, seconds = outage
            print(f"outage: {devices} devices × {rate:g} Hz, Kafka paused {seconds} s", flush=True)
            r = run_step(ctx, len(steps), devices, rate, args, outage_s=seconds)
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, f"e2e-{time.strftime('%Y-%m-%d')}" + ("-outage" if not steps else ""))
        chart(results, stem + ".png")
        with open(stem + ".md", "w") as f:
            f.write(f"# End-to-end ramp, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
                    f"Machine: {machine()}; every process on it. Steps of {args.step_s} s; "
                    f"`scripts/bench-e2e.py {' '.join(sys.argv[1:])}`.\n\n"
                    f"{table(results)}\n")
            if steps:
                f.write(f"\n![stored/s and latency against offered load]({os.path.basename(stem)}.png)\n")
        with open(stem + ".json", "w") as f:
            json.dump(results, f, indent=1)
        print("\n" + table(results))
        print(f"\nwrote {stem}.md, .png and .json")
    finally:
        services.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
