"""Helpers shared by the benchmark scripts: free loopback ports and waiting for a
service to listen."""
import socket
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
