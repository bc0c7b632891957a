"""One throwaway etcd member for a test: free ports, a temporary data dir, stopped after.

(impl/cluster/etcd_members.py, on its way, starts whole clusters; one member is all
the snapshot tests need, and it starts in about a second.)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ETCD = shutil.which("etcd")
needs_etcd = pytest.mark.skipif(ETCD is None, reason="etcd is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def etcd_member(data_dir: Path, *, quota_bytes: int = 0) -> Iterator[str]:
    """A running single-member etcd; yields its client URL."""
    if ETCD is None:
        pytest.skip("etcd is not installed")
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    peer_url = f"http://127.0.0.1:{peer}"
    args = [
        ETCD,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        url,
        "--advertise-client-urls",
        url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        f"default={peer_url}",
        "--log-level",
        "error",
    ]
    if quota_bytes:
        args += ["--quota-backend-bytes", str(quota_bytes)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(url + "/health", timeout=0.5).json().get("health") == "true":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                _stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"etcd did not start: {_stderr[-2000:]}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
