#!/usr/bin/env python3
"""Ingest rate of hb-collector next to a raw binary COPY loop (10k rows per
transaction) and a row-by-row INSERT loop, in one run, on the same partitioned
`readings` table and indexes. A benchmark that prints figures (no pass or fail:
this machine is shared and noisy); the target is a collector rate of at least 0.7x
the raw COPY loop's.

How: a private PostgreSQL (initdb in a temporary directory, as the postgres user
when run as root; default durability: fsync=on, synchronous_commit=on, unless
--fsync-off) and tansu (in memory) on free loopback ports. For each --per-envelope
value, a fresh database and the example `collector/examples/ingest_bench/`, which
pre-fills a topic, runs the collector in-process until its /metrics shows every
reading committed, then the raw loops; it prints the table. Last, `collector/examples/duplicate_bench.rs`
times batches of 5000 readings with 10 % already stored (a redelivery) against
batches with none; the target is a ratio of at least 0.5.

Usage: scripts/bench-collector.py [--readings 200000] [--devices 1000]
                                  [--per-envelope 1,10] [--fsync-off] [--statements]
                                  [-- extra ingest_bench flags]
Needs PostgreSQL server binaries and tansu (scripts/test.sh installs them). Builds
the release examples of hb-collector first (honours CARGO_TARGET_DIR).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import Services  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--per-envelope", default="1,10",
                    help="readings per Kafka record, comma-separated: one run (and database) each")
    ap.add_argument("--fsync-off", action="store_true",
                    help="run PostgreSQL with fsync=off and synchronous_commit=off (printed in the output)")
    ap.add_argument("--statements", action="store_true",
                    help="preload pg_stat_statements and print PostgreSQL's time per statement of the collector run")
    ap.add_argument("--no-duplicates", action="store_true",
                    help="skip the last table (batches of 5000 with 10 %% already stored, duplicate_bench)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more ingest_bench flags")
    args = ap.parse_args()
    if args.readings < 1 or args.devices < 1:
        ap.error("--readings and --devices must be at least 1")
    per_envelope = [int(x) for x in args.per_envelope.split(",")]
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra

    subprocess.run(["cargo", "build", "--release", "-p", "hb-collector", "--examples", "--quiet"],
                   cwd=ROOT, check=True)
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    examples = os.path.join(json.loads(meta.stdout)["target_directory"], "release", "examples")
    bench = os.path.join(examples, "ingest_bench")
    dup_bench = os.path.join(examples, "duplicate_bench")

    # SIGTERM (as well as Ctrl-C and errors) goes through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="hb-bench-collector-")
    os.chmod(work, 0o755)  # postgres, started through runuser, must reach its directory
    services = Services(work)
    try:
        settings = [("max_connections", "50")]
        if args.fsync_off:
            settings += [("fsync", "off"), ("synchronous_commit", "off")]
        if args.statements:
            settings.append(("shared_preload_libraries", "pg_stat_statements"))
            extra = ["--statements", *extra]
        pg_port, bindir = services.start_postgres(settings)
        kafka, tansu_pid = services.start_tansu()
        for i, e in enumerate(per_envelope):
            db = f"bench_{i}_e{e}"
            subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", db],
                           check=True)
            cmd = [bench, "--database-url", f"postgres://postgres@127.0.0.1:{pg_port}/{db}",
                   "--kafka-brokers", kafka, "--broker-pid", str(tansu_pid),
                   "--readings", str(args.readings), "--devices", str(args.devices),
                   "--per-envelope", str(e), *extra]
            if i:
                print()
            print(f"=== --per-envelope {e} ===", flush=True)
            r = subprocess.run(cmd, cwd=work)
            if r.returncode != 0:
                raise SystemExit(f"ingest_bench failed ({r.returncode})")
        if not args.no_duplicates:
            subprocess.run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres",
                            "bench_dups"], check=True)
            print("\n=== a redelivery: batches with already stored readings ===", flush=True)
            r = subprocess.run([dup_bench, "--database-url",
                                f"postgres://postgres@127.0.0.1:{pg_port}/bench_dups"], cwd=work)
            if r.returncode != 0:
                raise SystemExit(f"duplicate_bench failed ({r.returncode})")
    finally:
        services.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
