"""``server.workers`` > 1: one supervisor process, N forked workers sharing the port.

Each worker is a whole registry (``serve`` on its own uvloop loop) that binds
the port with SO_REUSEPORT, so the kernel spreads new connections over the
workers' own accept queues (by a hash of each connection's addresses: even
under load, unlike one shared socket whose idle worker wins every accept).
The supervisor binds the port too, without listening: that reserves it (and
picks it, for ``:0``) before any worker starts, and keeps it while a worker
restarts. SO_REUSEPORT only shares a port between sockets of the same user.

The supervisor is plain synchronous code (no event loop, no threads), so
forking a worker from it is safe at any time. It starts worker 0 alone first,
so first-start work (migrations, the token signing key, the admin account)
happens once, then the others; restarts a worker that dies (with a backoff
when it dies young); and on SIGTERM/SIGINT forwards SIGTERM to every worker,
each of which drains its requests as a single server does, and exits 0 when
all of them exited 0.

The workers share the index (SQLite in WAL: each has its connections, the
write lock serialises them; see ``aioreg.index.cache`` for how their read
caches stay coherent), and share the blob store. What runs on a schedule is
either per process by nature (pull-time flushes, proxy reloads, the upload
janitor, which only ends sessions whose files no live worker holds) or runs
in worker 0 only (scheduled GC and retention). How an upload continues when
its next request lands on another worker: see ``aioreg.api.forward``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from types import FrameType

import msgspec

from aioreg import __version__, logcontext
from aioreg.api.server import ListenError, _reason, run, warn_if_open
from aioreg.config import Config
from aioreg.domain.workers import WorkerIdentity, remove_dead

log = logging.getLogger("aioreg.supervisor")

# A worker that dies sooner than this after starting is restarted after a growing pause.
YOUNG_SECONDS = 5.0
MAX_BACKOFF = 30.0
# Beyond the workers' own shutdown_timeout, how long they get to close before SIGKILL.
EXIT_GRACE = 10.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class _Worker:
    number: int
    pid: int
    ready_fd: int  # read end of a pipe the worker writes one byte to once it listens
    started: float
    ready: bool = False


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = config.server.workers
        self.run_dir = config.data_path / "run"
        self._workers: dict[int, _Worker] = {}
        self._restart_at: dict[int, float] = {}  # number -> when to start it again
        self._quick_deaths: dict[int, int] = {}
        self._reserved: list[socket.socket] = []
        self._stopping = False
        self._all_ready = False
        self._failed = False
        self._wake: tuple[int, int] = (-1, -1)
        self._pid = os.getpid()

    # -- the supervisor's loop -------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the process's exit status."""
        self.config.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        remove_dead(self.run_dir)
        self._reserve()
        self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake[1])
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, _ignore)
        try:
            self._spawn(0)
            return self._loop()
        finally:
            signal.set_wakeup_fd(-1)
            for sock in self._reserved:
                sock.close()
            with contextlib.suppress(FileNotFoundError):
                self._identity(-1, 0).generation_path.unlink()

    def _loop(self) -> int:
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            timeout = min([*self._restart_at.values(), now + 1.0]) - now
            fds = [self._wake[0], *(w.ready_fd for w in self._workers.values() if not w.ready)]
            readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
            if self._wake[0] in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake[0], 512)
            starting = [w for w in self._workers.values() if not w.ready]
            for worker in starting:
                if worker.ready_fd in readable and os.read(worker.ready_fd, 1):
                    self._on_ready(worker)
            self._reap()
            if self._stopping:
                if not self._workers:
                    return 1 if self._failed else 0
                if kill_at is None:
                    log.info("supervisor: stopping %d workers", len(self._workers))
                    self._signal_all(signal.SIGTERM)
                    kill_at = time.monotonic() + self.config.server.shutdown_timeout + EXIT_GRACE
                elif time.monotonic() > kill_at:
                    log.error("supervisor: workers still running; killing them")
                    self._signal_all(signal.SIGKILL)
                    kill_at = float("inf")
                continue
            now = time.monotonic()
            for number, when in list(self._restart_at.items()):
                if when <= now:
                    del self._restart_at[number]
                    self._spawn(number)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _on_ready(self, worker: _Worker) -> None:
        worker.ready = True
        os.close(worker.ready_fd)
        worker.ready_fd = -1
        if self._all_ready:
            return
        if worker.number == 0:
            # First-start work is done: the others may start together.
            for number in range(1, self.count):
                self._spawn(number)
        if len(self._workers) == self.count and all(w.ready for w in self._workers.values()):
            self._all_ready = True
            warn_if_open(self.config)
            log.info(
                "aioreg %s listening on %s (%d workers, pids %s), data in %s",
                __version__,
                self.url,
                self.count,
                " ".join(str(self._workers[n].pid) for n in sorted(self._workers)),
                self.config.data_path,
            )

    def _reap(self) -> None:
        while self._workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self._workers.values() if w.pid == pid), None)
            if worker is None:
                continue
            del self._workers[worker.number]
            if not worker.ready:
                os.close(worker.ready_fd)
            code = os.waitstatus_to_exitcode(status)
            identity = self._identity(worker.number, pid)
            for path in (identity.socket_path(), identity.lock_path()):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            self._on_exit(worker, code)

    def _on_exit(self, worker: _Worker, code: int) -> None:
        how = f"exit status {code}" if code >= 0 else f"signal {-code}"
        if self._stopping:
            if code != 0:
                self._failed = True
                log.warning("worker %d (pid %d) ended with %s", worker.number, worker.pid, how)
            return
        if not self._all_ready:
            # It could not start (port taken, bad data directory): neither will the others.
            log.error("worker %d (pid %d) failed to start (%s)", worker.number, worker.pid, how)
            self._failed = True
            self._stopping = True
            return
        lived = time.monotonic() - worker.started
        quick = self._quick_deaths.get(worker.number, 0) + 1 if lived < YOUNG_SECONDS else 0
        self._quick_deaths[worker.number] = quick
        delay = 0.0 if quick == 0 else min(2.0 ** (quick - 1), MAX_BACKOFF)
        log.error(
            "worker %d (pid %d) died (%s); restarting it%s",
            worker.number,
            worker.pid,
            how,
            f" in {delay:g}s" if delay else "",
        )
        self._restart_at[worker.number] = time.monotonic() + delay

    def _signal_all(self, sig: int) -> None:
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, sig)

    def _identity(self, number: int, pid: int) -> WorkerIdentity:
        return WorkerIdentity(number, self.count, pid, self.run_dir, self._pid)

    # -- the port ----------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.config.server.host, self.config.server.port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _reserve(self) -> None:
        """Bind (not listen) the port with SO_REUSEPORT; ``:0`` becomes the port picked."""
        host, port = self.config.server.host, self.config.server.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self._reserved.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                if port:
                    _refuse_if_served(family, str(address[0]), port)
                port = sock.getsockname()[1]
        except (OSError, socket.gaierror) as exc:
            for sock in self._reserved:
                sock.close()
            raise ListenError(
                f"cannot listen on {self.config.server.listen}: {_reason(exc)}"
            ) from exc
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        server = msgspec.structs.replace(self.config.server, listen=listen)
        self.config = msgspec.structs.replace(self.config, server=server)

    # -- a worker ----------------------------------------------------------

    def _spawn(self, number: int) -> None:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read_fd)
                code = self._worker_main(number, write_fd)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        self._workers[number] = _Worker(number, pid, read_fd, time.monotonic())

    def _worker_main(self, number: int, ready_fd: int) -> int:
        """A worker's life after the fork: a registry server like ``workers = 1``'s."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (*self._wake, *(w.ready_fd for w in self._workers.values() if not w.ready)):
            os.close(fd)
        for sock in self._reserved:
            sock.close()
        _end_with_parent(self._pid)
        logcontext.worker = f"w{number}"
        identity = self._identity(number, os.getpid())
        life = identity.claim()  # held until the process ends

        def ready() -> None:
            os.write(ready_fd, b"r")

        try:
            run(self.config, identity, ready)
        except ListenError as exc:
            log.error("%s", exc)
            return 1
        finally:
            os.close(life)
        return 0


def _refuse_if_served(family: int, host: str, port: int) -> None:
    """SO_REUSEPORT lets another server of this user (another ``--workers`` supervisor)
    share the port silently, splitting its clients with ours: refuse a port that
    already answers."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((wildcard.get(host, host), port)) == 0:
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def _end_with_parent(parent: int) -> None:
    """A worker whose supervisor dies (even by SIGKILL) gets SIGTERM and drains, rather
    than serving on unsupervised (Linux; elsewhere it serves until stopped)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD needs a handler for the wakeup fd to hear of it."""


def supervise(config: Config) -> int:
    """``aioreg serve`` with ``server.workers`` > 1."""
    return Supervisor(config).run()
