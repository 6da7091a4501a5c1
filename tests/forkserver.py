"""``python runner.py ARGS`` as a real process, without the interpreter's start each time.

Every fresh ``python runner.py`` spends ~5 s of CPU importing torch (with torch._dynamo, which the
first optimizer imports), Hydra, matplotlib and gmcnn; the suite starts the runner ~60 times. Here a server process
imports those modules once, then forks one child per command. Each child is a process of its own:
its own pid and exit status (negative for a signal, as ``subprocess.Popen.returncode``), signals
sent to it alone, stdout and stderr into files, the environment, working directory and
``sys.argv`` of the request. It runs runner.py as ``__main__`` from its first line, as
``python runner.py ARGS`` does, and ends as that does: the status of ``sys.exit``, a traceback and
1 for an uncaught exception, atexit handlers, non-daemon threads joined.

What a child shares with its siblings, unlike fresh interpreters: the modules imported before the
fork (the same code a fresh import would run) and the seed of ``str`` hashes (PYTHONHASHSEED, one
per server). numpy's global generator is reseeded from the OS in each child, as a fresh
interpreter seeds it, and ``random`` reseeds itself after a fork. Tests about the interpreter's
start (the OpenMP setting made before torch loads) start python themselves.

Protocol, over the server's stdin and stdout: a request is one JSON line ``{"argv", "cwd", "env",
"stdout", "stderr"}`` (``argv[0]`` the script); the server answers ``started PID``, and
``exited PID STATUS`` when that child ends. End of input stops the server.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# what runner processes import: runner.py's modules, the sweep summary, torch._dynamo (imported
# by torch.optim's first optimizer: 1.9 s of every training run)
PRELOAD = ("runner", "gmcnn.cli", "gmcnn.report", "torch._dynamo")
POLL_SECONDS = 0.02  # how often the server looks for ended children


# --- the server (python -m tests.forkserver) ----------------------------------------------------

def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import matplotlib  # every finished run plots its curves with the Agg backend

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def serve(requests: int, replies: int) -> dict[str, Any] | None:
    """Fork a child for every request read from ``requests``; returns the request in the child,
    None in the server once ``requests`` is closed."""
    pending, running = b"", set()

    def reply(line: str) -> None:
        os.write(replies, f"{line}\n".encode())

    while True:
        readable, _, _ = select.select([requests], [], [], POLL_SECONDS if running else None)
        if readable:
            chunk = os.read(requests, 1 << 16)
            if not chunk:
                return None
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(requests)
                    os.close(replies)
                    return request
                running.add(pid)
                reply(f"started {pid}")
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                reply(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def become(request: dict[str, Any]) -> str:
    """Turn this forked child into the requested process; returns the script to run."""
    import numpy as np

    stdin = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY)
    err = out if request["stderr"] == request["stdout"] else os.open(request["stderr"], os.O_WRONLY)
    for source, target in ((stdin, 0), (out, 1), (err, 2)):
        os.dup2(source, target)
    for fd in {stdin, out, err}:
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # not the server's buffered requests
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script, *_ = sys.argv = list(request["argv"])
    sys.path[0] = str(Path(script).resolve().parent)
    np.random.seed()  # from the OS, as a fresh interpreter's
    return script


def main() -> None:
    requests, replies = os.dup(0), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # whatever an import prints stays out of the replies
    preload()
    request = serve(requests, replies)
    if request is None:
        return
    runpy.run_path(become(request), run_name="__main__")


# --- the client ---------------------------------------------------------------------------------

class ForkServer:
    """A running server (started at the first request) and the exit statuses it reported."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.process: subprocess.Popen | None = None
        self.files = Path(tempfile.mkdtemp(prefix="forkserver-"))
        self.exited: dict[int, int] = {}
        self._pending, self._count = b"", 0

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            log = (self.files / "server.log").open("ab")
            self.process = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], cwd=self.root,
                                            env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=log)
            log.close()
        return self.process

    def _read(self, timeout: float | None) -> str | None:
        """The next reply line, None if none came within ``timeout``; exit statuses are recorded."""
        process = self._start()
        while b"\n" not in self._pending:
            readable, _, _ = select.select([process.stdout], [], [], timeout)
            if not readable:
                return None
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                log = (self.files / "server.log").read_text()[-3000:]
                raise RuntimeError(f"the fork server ended (status {process.wait()}): {log}")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        kind, pid, *status = line.decode().split()
        if kind == "exited":
            self.exited[int(pid)] = int(status[0])
        return line.decode()

    def start(self, argv: list[str], env: dict[str, str], merge_stderr: bool) -> RunnerProcess:
        process = self._start()
        self._count += 1
        stdout = self.files / f"{self._count}.out"
        stderr = stdout if merge_stderr else self.files / f"{self._count}.err"
        for path in {stdout, stderr}:
            path.touch()  # readable as soon as the child exists
        request = {"argv": argv, "cwd": str(self.root), "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        while not (line := self._read(None)).startswith("started "):
            pass
        return RunnerProcess(self, int(line.split()[1]), argv, stdout, stderr)

    def status(self, pid: int, timeout: float | None) -> int | None:
        """The exit status of child ``pid``, waiting up to ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.exited:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._read(left)
        return self.exited[pid]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        for path in self.files.iterdir():
            path.unlink()
        self.files.rmdir()


class RunnerProcess:
    """A forked child as ``subprocess.Popen`` is used by the tests: pid, poll, wait, signals,
    communicate; ``stdout`` is its output file, readable while it runs."""

    def __init__(self, server: ForkServer, pid: int, args: list[str], stdout: Path, stderr: Path):
        self.server, self.pid, self.args = server, pid, args
        self.stdout_path, self.stderr_path = stdout, stderr
        self.stdout = stdout.open()
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.status(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.server.status(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        self.wait(timeout)
        output = self.stdout_path.read_text()
        return output, None if self.stderr_path == self.stdout_path else self.stderr_path.read_text()

    def run(self, timeout: float | None) -> subprocess.CompletedProcess:
        """Wait for the end (killed after ``timeout``, as ``subprocess.run`` does); its output."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        stdout, stderr = self.communicate()
        self.stdout.close()
        return subprocess.CompletedProcess(self.args, self.returncode, stdout, stderr)


if __name__ == "__main__":
    main()
