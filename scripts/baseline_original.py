#!/usr/bin/env python3
"""Baseline: the original Python design of Heartbeat, measured so that
scripts/bench-e2e.py can print it next to the Rust pipeline from the same run.

What it reproduces: simulated devices publish one JSON reading per Kafka message
(key = device id, no MQTT, no agent); one Python consumer reads each message,
classifies the heart rate and stores the reading in PostgreSQL with one INSERT and
one COMMIT per reading. No batching anywhere: that per-reading cost is the point.

How: the table `baseline_readings` is dropped (if it exists) and created in the
given database, and the topic is created (tansu does not auto-create topics). A
consumer process joins a fresh consumer group (earliest offset); once it has its
partition, a producer process paces --devices x --rate-hz readings per second for
--seconds. The consumer stops when it has stored every reading the broker
acknowledged, or --drain-timeout-s after the load ended. Each side is its own
process, so that its CPU time is its own. The table and the topic are left for
inspection; nothing else is dropped.

Figures:
  offered/s   readings produced / load duration
  stored/s    rows / (last stored_at - first stored_at): first to last commit
  lost        offered - rows in the table (an exact count)
  p50, p99    stored_at - ts (the producer's clock when it made the reading),
              percentile_cont in SQL; stored_at is clock_timestamp() at insert
  CPU/reading user + system time of the producer (per offered reading) and of the
              consumer (per stored reading), librdkafka's threads included,
              over their work only (not imports or connection set-up)

Usage:
  scripts/baseline_original.py --kafka-brokers 127.0.0.1:9092 \\
      --pg-url postgresql://postgres@127.0.0.1:5432/postgres \\
      [--devices 100] [--rate-hz 5] [--seconds 20] [--topic NAME] \\
      [--drain-timeout-s 60] [--json]
With --json the last line of stdout is one JSON object: devices, rate_hz, topic,
offered, delivered (acknowledged by the broker), stored, lost, load_s, store_span_s,
offered_per_s, stored_per_s, p50_s, p99_s, producer_cpu_us_per_reading,
consumer_cpu_us_per_reading (null where there is nothing to divide by).
Needs a running Kafka-protocol broker and PostgreSQL (it starts neither). The first
run creates a virtualenv ($HB_BENCH_VENV, default target/bench-venv), installs
confluent-kafka and psycopg2-binary there from PyPI, and re-runs itself in it.
"""
import argparse
import json
import multiprocessing
import os
import queue
import random
import signal
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ensure_venv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"confluent-kafka": "confluent_kafka", "psycopg2-binary": "psycopg2"}  # name -> module
TABLE = "baseline_readings"
BRADYCARDIA_BELOW_BPM = 50
TACHYCARDIA_ABOVE_BPM = 110
READY_TIMEOUT_S = 60
FLUSH_TIMEOUT_S = 30

CREATE_TABLE_SQL = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    device_id   text        NOT NULL,
    ts          timestamptz NOT NULL,
    bpm         integer     NOT NULL,
    status      text        NOT NULL,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (device_id, ts)
)"""
INSERT_SQL = (f"INSERT INTO {TABLE} (device_id, ts, bpm, status, received_at) "
              "VALUES (%s, to_timestamp(%s), %s, %s, to_timestamp(%s)) ON CONFLICT DO NOTHING")
FIGURES_SQL = f"""
SELECT count(*),
       extract(epoch FROM max(stored_at) - min(stored_at))::float8,
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts)::float8)
FROM {TABLE}"""


def log(message):
    print(f"[baseline] {message}", file=sys.stderr, flush=True)


def cpu_seconds():
    """User + system CPU time of this process, all its threads."""
    t = os.times()
    return t.user + t.system


def classify(bpm):
    if bpm == 0:
        return "no_signal"
    if bpm < BRADYCARDIA_BELOW_BPM:
        return "bradycardia"
    if bpm > TACHYCARDIA_ABOVE_BPM:
        return "tachycardia"
    return "normal"


def reading_json(device_id):
    """One reading as a device sends it; ts is now, in ms since the epoch."""
    bpm = max(0, round(random.gauss(75, 15)))
    return json.dumps({"device_id": device_id, "ts": time.time() * 1000, "bpm": bpm})


# --- Producer process -----------------------------------------------------------

def run_producer(brokers, topic, devices, rate_hz, seconds, results):
    """Paces devices x rate_hz readings per second for `seconds`, evenly spread (each
    device every 1/rate_hz s), then flushes; reports counts and CPU time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    from confluent_kafka import Producer

    failed = 0

    def on_failed_delivery(_err, _msg):
        nonlocal failed
        failed += 1

    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5,
                         "delivery.report.only.error": True, "on_delivery": on_failed_delivery})
    device_ids = [f"dev-{i:05d}" for i in range(devices)]
    rate = devices * rate_hz
    total = round(rate * seconds)
    cpu_start, start = cpu_seconds(), time.monotonic()
    for offered in range(total):
        delay = start + offered / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        device_id = device_ids[offered % devices]
        producer.produce(topic, key=device_id, value=reading_json(device_id))
        producer.poll(0)
    load_s = time.monotonic() - start
    unsent = producer.flush(FLUSH_TIMEOUT_S)
    results.put(("producer", {"offered": total, "delivered": total - failed - unsent,
                              "load_s": load_s, "cpu_s": cpu_seconds() - cpu_start}))


# --- Consumer process -----------------------------------------------------------

def store(conn, cur, payload):
    """The original's per-reading work: parse, classify, INSERT, COMMIT. Returns the
    number of rows inserted (0 for a redelivered reading)."""
    received_at = time.time()
    reading = json.loads(payload)
    cur.execute(INSERT_SQL, (reading["device_id"], reading["ts"] / 1000, reading["bpm"],
                             classify(reading["bpm"]), received_at))
    inserted = cur.rowcount
    conn.commit()
    return inserted


def consumer_done(stored, target, load_end, drain_timeout_s):
    """True once the load has ended and every delivered reading is stored, or the
    drain timeout has passed."""
    if load_end.value == 0:
        return False
    return stored >= target.value or time.time() > load_end.value + drain_timeout_s


def run_consumer(brokers, pg_url, topic, ready, target, load_end, drain_timeout_s, results):
    """Stores each message as it comes (see `store`) until `consumer_done`; sets
    `ready` once it has its partitions; reports rows stored and CPU time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    import psycopg2
    from confluent_kafka import Consumer

    parent_pid = os.getppid()
    conn = psycopg2.connect(pg_url)
    cur = conn.cursor()
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"baseline-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic], on_assign=lambda _consumer, _partitions: ready.set())
    stored = 0
    cpu_start = cpu_seconds()
    while not consumer_done(stored, target, load_end, drain_timeout_s):
        msg = consumer.poll(0.2)
        if msg is None:
            if os.getppid() != parent_pid:  # orphaned: nobody waits for the result
                return
        elif msg.error():
            log(f"consumer: {msg.error()}")
        else:
            stored += store(conn, cur, msg.value())
    cpu_s = cpu_seconds() - cpu_start
    consumer.close()
    conn.close()
    results.put(("consumer", {"stored": stored, "cpu_s": cpu_s}))


# --- Parent: set-up, coordination, figures ---------------------------------------

def create_table(pg_url):
    import psycopg2
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(CREATE_TABLE_SQL)
    conn.close()


def create_topic(brokers, topic):
    """A new topic of one partition; fails if it exists (its old messages would count)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": brokers})
    future = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic]
    try:
        future.result(timeout=READY_TIMEOUT_S)
    except KafkaException as e:
        raise SystemExit(f"cannot create the topic {topic}: {e.args[0].str()}")


def check_alive(processes):
    for p in processes:
        if p.exitcode not in (None, 0):
            raise SystemExit(f"the {p.name} failed (exit code {p.exitcode})")


def wait_ready(ready, consumer):
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.wait(0.5):
        check_alive([consumer])
        if time.monotonic() > deadline:
            raise SystemExit(f"the consumer had no partition after {READY_TIMEOUT_S} s")


def receive(results, name, processes, timeout_s):
    """The result `name` reports on `results`; fails if a process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            sender, result = results.get(timeout=0.5)
        except queue.Empty:
            check_alive(processes)
            continue
        if sender != name:
            raise SystemExit(f"expected the {name}'s result, got the {sender}'s")
        return result
    raise SystemExit(f"no result from the {name} within {timeout_s:.0f} s")


def stop(process):
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
    if process.pid is not None:
        process.join()


def run_load(args, topic):
    """Starts the consumer, then the producer; returns both processes' results."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding librdkafka threads
    results, ready = ctx.Queue(), ctx.Event()
    target, load_end = ctx.RawValue("q", -1), ctx.RawValue("d", 0.0)
    consumer = ctx.Process(name="consumer", target=run_consumer,
                           args=(args.kafka_brokers, args.pg_url, topic, ready, target, load_end,
                                 args.drain_timeout_s, results))
    producer = ctx.Process(name="producer", target=run_producer,
                           args=(args.kafka_brokers, topic, args.devices, args.rate_hz, args.seconds, results))
    try:
        consumer.start()
        wait_ready(ready, consumer)
        producer.start()
        produced = receive(results, "producer", [producer, consumer], args.seconds + FLUSH_TIMEOUT_S + 60)
        target.value = produced["delivered"]
        load_end.value = time.time()  # after target: the consumer reads load_end first
        consumed = receive(results, "consumer", [consumer], args.drain_timeout_s + 30)
        return produced, consumed
    finally:
        stop(producer)
        stop(consumer)


def figures(args, topic, produced, consumed):
    import psycopg2
    with psycopg2.connect(args.pg_url) as conn, conn.cursor() as cur:
        cur.execute(FIGURES_SQL)
        rows, span_s, percentiles = cur.fetchone()
    conn.close()
    p50_s, p99_s = percentiles or (None, None)
    return {
        "devices": args.devices, "rate_hz": args.rate_hz, "topic": topic,
        "offered": produced["offered"], "delivered": produced["delivered"], "stored": rows,
        "lost": produced["offered"] - rows,
        "load_s": round(produced["load_s"], 3), "store_span_s": span_s and round(span_s, 3),
        "offered_per_s": round(produced["offered"] / produced["load_s"], 1),
        "stored_per_s": round(rows / span_s, 1) if span_s else None,
        "p50_s": p50_s and round(p50_s, 4), "p99_s": p99_s and round(p99_s, 4),
        "producer_cpu_us_per_reading": per_reading_us(produced["cpu_s"], produced["offered"]),
        "consumer_cpu_us_per_reading": per_reading_us(consumed["cpu_s"], consumed["stored"]),
    }


def per_reading_us(cpu_s, readings):
    return round(cpu_s * 1e6 / readings, 1) if readings else None


def print_table(f):
    print(f"original Python design: {f['devices']} devices x {f['rate_hz']:g} Hz, topic {f['topic']}")
    print(f"  offered    {f['offered']:>9} readings  {f['offered_per_s']:>9} /s  over the load ({f['load_s']} s)")
    print(f"  delivered  {f['delivered']:>9}           (acknowledged by the broker)")
    print(f"  stored     {f['stored']:>9} rows      {f['stored_per_s']!s:>9} /s  first to last commit"
          f" ({f['store_span_s']} s)")
    print(f"  lost       {f['lost']:>9}")
    print(f"  latency    p50 {f['p50_s']} s, p99 {f['p99_s']} s  (sensor ts -> stored)")
    print(f"  CPU        producer {f['producer_cpu_us_per_reading']} us/reading, "
          f"consumer {f['consumer_cpu_us_per_reading']} us/reading")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kafka-brokers", required=True, metavar="HOST:PORT")
    ap.add_argument("--pg-url", required=True, metavar="postgresql://...")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rate-hz", type=float, default=5.0, help="readings per device per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of the load")
    ap.add_argument("--topic", help="Kafka topic to create; must not exist (default: a unique name)")
    ap.add_argument("--drain-timeout-s", type=float, default=60.0,
                    help="how long the consumer may keep storing after the load ended")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON on the last line of stdout")
    args = ap.parse_args()
    if args.devices < 1 or args.rate_hz <= 0 or args.seconds <= 0:
        ap.error("--devices, --rate-hz and --seconds must be positive")
    return args


def main():
    args = parse_args()
    ensure_venv(PACKAGES)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the clean-up in run_load
    topic = args.topic or f"baseline-{uuid.uuid4().hex[:12]}"
    create_table(args.pg_url)
    create_topic(args.kafka_brokers, topic)
    produced, consumed = run_load(args, topic)
    result = figures(args, topic, produced, consumed)
    print_table(result)
    if args.json:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
