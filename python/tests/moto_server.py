"""A moto S3 server on loopback, in a child process: shared by the object store tests
and scripts/bench_object_store.py."""

import os
import socket
import subprocess
import sys
import time


def start(**env):
    """Start moto in server mode (extra environment for it in `env`) and wait until it
    accepts connections; returns (process, endpoint URL). The caller terminates it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=dict(os.environ, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    server.terminate()
    raise RuntimeError("the moto server did not start within 10 s")
