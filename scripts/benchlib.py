"""Helpers shared by the benchmark scripts: free loopback ports, waiting for a
service to listen, and private tansu and PostgreSQL instances."""
import glob
import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time


def free_port():
    """A free TCP port on 127.0.0.1."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc=None, name="service", timeout=30):
    """Waits until 127.0.0.1:port accepts connections; fails early if `proc` exits."""
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name}: port {port} did not open")


def pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if not dirs:
        raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql")
    return dirs[-1]


class Services:
    """tansu and PostgreSQL, stopped however the run ends."""

    def __init__(self, work):
        self.work = work
        self.as_pg = []
        self.pg_data = os.path.join(work, "pg", "data")
        self.running = []  # (name, Popen, log file)

    def start(self, name, cmd, **kw):
        log = open(os.path.join(self.work, f"{name}.log"), "a")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.running.append((name, p, log))
        return p

    def start_tansu(self):
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        # scripts/test.sh and run.sh build the patched one and say where: HB_TANSU.
        tansu = os.environ.get("HB_TANSU") or shutil.which("tansu") or os.path.expanduser("~/.cargo/bin/tansu")
        p = self.start("tansu", [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                 "--storage-engine", "memory://tansu/"], cwd=self.work)
        wait_port(port, p, "tansu")
        return f"127.0.0.1:{port}", p.pid

    def start_postgres(self, settings):
        bindir = pg_bin()
        pg_dir, sock = os.path.join(self.work, "pg"), os.path.join(self.work, "pgsock")
        os.makedirs(pg_dir)
        os.makedirs(sock)
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as postgres on dirs it owns
            subprocess.run(["chown", "postgres", pg_dir, sock], check=True)
            self.as_pg = ["runuser", "-u", "postgres", "--"]
        r = subprocess.run([*self.as_pg, f"{bindir}/initdb", "-D", self.pg_data, "-U", "postgres",
                            "-A", "trust", "--no-sync", "-E", "UTF8"], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"initdb failed:\n{r.stdout}{r.stderr}")
        port = free_port()
        flags = [x for k, v in settings for x in ("-c", f"{k}={v}")]
        p = self.start("postgres", [*self.as_pg, f"{bindir}/postgres", "-D", self.pg_data, "-k", sock,
                                    "-p", str(port), "-h", "127.0.0.1", *flags], cwd=pg_dir)
        wait_port(port, p, "postgres")
        return port, bindir

    def start_mosquitto(self, conf_lines=()):
        """An anonymous Mosquitto on a free loopback port without persistence, plus
        `conf_lines`; returns its mqtt:// URL and process."""
        port = free_port()
        conf = os.path.join(self.work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
                               *conf_lines]) + "\n")
        p = self.start("mosquitto", [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf])
        wait_port(port, p, "mosquitto")
        return f"mqtt://127.0.0.1:{port}", p

    def start_bridge(self, release, mqtt_url, kafka, topic_root, instance_id):
        """hb-bridge from `release`; returns its HTTP port and process."""
        http = free_port()
        p = self.start("hb-bridge", [os.path.join(release, "hb-bridge"), "--mqtt-url", mqtt_url,
                                     "--mqtt-topic-root", topic_root, "--kafka-brokers", kafka,
                                     "--http-addr", f"127.0.0.1:{http}", "--instance-id", instance_id])
        wait_port(http, p, "hb-bridge")
        return http, p

    def start_collector(self, release, pg_url, kafka, extra=()):
        """hb-collector from `release` (`extra` flags before `run`); returns its HTTP
        port and process."""
        http = free_port()
        p = self.start("hb-collector", [os.path.join(release, "hb-collector"), "--database-url", pg_url,
                                        "--kafka-brokers", kafka, "--http-addr", f"127.0.0.1:{http}",
                                        *extra, "run"])
        wait_port(http, p, "hb-collector", timeout=120)
        return http, p

    def stop_all(self):
        for name, p, log in reversed(self.running):
            if p.poll() is None:
                if name == "postgres":
                    self.stop_postmaster()
                else:
                    p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in 30 s; killing it", file=sys.stderr)
                    if name == "postgres":
                        self.stop_postmaster(signal.SIGKILL)
                    p.kill()
                    p.wait()
            log.close()
        self.running = []

    def stop_postmaster(self, sig=signal.SIGINT):
        """SIGINT to the postmaster we started (read from its pid file): fast shutdown."""
        try:
            with open(os.path.join(self.pg_data, "postmaster.pid")) as f:
                os.kill(int(f.readline()), sig)
        except (OSError, ValueError):
            pass


def ensure_venv(packages):
    """Runs the calling script in the benchmark virtualenv ($HB_BENCH_VENV, default
    <repo>/target/bench-venv): creates it and re-execs into it if needed, then
    pip-installs whichever of `packages` ({pip name: module}) is missing. Silent
    when all is in place."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.environ.get("HB_BENCH_VENV") or os.path.join(root, "target", "bench-venv")
    python = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        if not os.path.exists(python):
            print(f"creating the virtualenv {venv}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, stdout=sys.stderr)
        os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
    missing = [name for name, module in packages.items() if importlib.util.find_spec(module) is None]
    if missing:
        print(f"installing {' '.join(missing)} into {venv}", file=sys.stderr)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *missing],
                       check=True, stdout=sys.stderr)
        importlib.invalidate_caches()
