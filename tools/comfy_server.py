"""A real ComfyUI server for the tests and the measuring tools, started and stopped (standard library only).

``running_comfyui`` runs ``main.py`` of a ComfyUI checkout on the CPU, on a free local port, with its own
base directory and an extra_model_paths.yaml (the route by which the pack and its models come in), waits
until /system_stats answers, and stops the server when the block ends.
"""

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

STOP_TIMEOUT_S = 30  # after this, a server that ignores SIGTERM is killed
POLL_INTERVAL_S = 0.5


class ServerDidNotStart(RuntimeError):
    """ComfyUI exited, or did not answer in time; the message ends with the tail of its log."""


class Server(NamedTuple):
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_comfyui(comfyui: Path, python: str, *, base: Path, paths: Path, log: Path, startup_timeout_s: float,
                    env: Optional[dict] = None) -> Iterator[Server]:
    """ComfyUI of checkout ``comfyui`` run by ``python`` (base folder ``base``, extra paths ``paths``, output
    in ``log``, ``env`` added to this environment), once it answers; stopped when the block ends."""
    port = free_port()
    command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
               "--base-directory", str(base), "--extra-model-paths-config", str(paths)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=comfyui, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, process, log, startup_timeout_s)
            yield Server(url, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/system_stats", timeout=5).read()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServerDidNotStart(f"ComfyUI did not start; {log} ends:\n{log.read_text()[-3000:]}")
            time.sleep(POLL_INTERVAL_S)
