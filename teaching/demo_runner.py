"""The demo's side of a real runner: a ``beaverq run`` process it can SIGKILL, its
metrics scraped, and the WAL archive that keeps every segment for the accounting.

teaching/demo.py tells the story with these; tests/test_kill9.py uses them too.  Why
the archive exists is told in demo.py's module doc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

# The module the runner imports its handlers from (``beaverq run --import``).
DEMO_MODULE = "beaverq.teaching.demo"


class DemoFailed(Exception):
    pass


# -- The WAL archive (see the module docstring). -------------------------------------------


class WalArchive:
    def __init__(self, data_dir: str, archive_dir: str) -> None:
        self.data_dir = data_dir
        self.directory = archive_dir
        os.makedirs(archive_dir, mode=0o700, exist_ok=True)

    def sync(self) -> None:
        from beaverq.impl.storage.segments import parse_segment_name

        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            return
        for name in names:
            live = os.path.join(self.data_dir, name)
            if name.endswith(".cut-0"):
                # Recovery dropped a segment that was torn from its first byte: it
                # never held a durable event, so the archive forgets it too (unless a
                # new segment took its name, which the inode check below handles).
                dropped = name[: -len(".cut-0")]
                if not os.path.exists(os.path.join(self.data_dir, dropped)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.directory, dropped))
                continue
            if parse_segment_name(name) is None:
                continue
            kept = os.path.join(self.directory, name)
            try:
                live_inode = os.stat(live).st_ino
            except FileNotFoundError:
                continue  # deleted between listdir and stat: linked on an earlier poll
            if os.path.exists(kept) and os.stat(kept).st_ino == live_inode:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(kept)
            with contextlib.suppress(FileNotFoundError):
                os.link(live, kept)


# -- Scraping the runner. ------------------------------------------------------------------


def scrape(port: int) -> dict[str, float] | None:
    """Every sample of the runner's /metrics, or None if it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- The runner process. -------------------------------------------------------------------


class Runner:
    """One runner process, in its own session so that a SIGKILL reaches all of it."""

    def __init__(self, data_dir: str, workers: int, log_path: str) -> None:
        self.port = _free_port()
        argv = [
            sys.executable, "-m", "beaverq.impl.frontends.cli", "--data-dir", data_dir, "run",
            "--workers", str(workers), "--metrics-port", str(self.port),
            "--import", DEMO_MODULE,
        ]  # fmt: skip
        self.argv = argv
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in wait())
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_serving(self, deadline: float) -> dict[str, float]:
        while True:
            samples = scrape(self.port)
            if samples is not None and "queue_recovery_duration_seconds" in samples:
                return samples
            if self.process.poll() is not None:
                raise DemoFailed(f"the runner exited ({self.process.returncode}) before serving")
            if time.monotonic() > deadline:
                raise DemoFailed("the runner did not serve its metrics in time")
            threading.Event().wait(0.02)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.wait(10.0)

    def terminate(self, timeout_s: float) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
            raise DemoFailed(f"the runner did not exit within {timeout_s} s") from None
        finally:
            self._log.close()
        return code

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""
