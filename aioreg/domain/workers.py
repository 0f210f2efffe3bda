"""Who this process is among ``server.workers`` processes, and whether a peer still lives.

Each worker is numbered 0..N-1 (a restarted worker keeps its number) and each
run of one is an *incarnation* named ``w<number>-<pid>``. An incarnation holds
an exclusive ``flock`` on ``run/<token>.lock`` for its whole life and serves
its peers on ``run/<token>.sock``; the kernel drops the lock the moment the
process dies, however it dies, so "the lock is free" is exactly "that
incarnation is gone". Upload sessions record the incarnation that opened them
(``uploads.owner``): it alone holds their running hash state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes on Linux, with the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    number: int  # 0..count-1, kept by a restarted worker
    count: int
    pid: int
    run_dir: Path
    supervisor: int = 0  # the supervisor's pid: one group of workers

    @property
    def token(self) -> str:
        """This incarnation, as upload sessions record their owner."""
        return f"w{self.number}-{self.pid}"

    @property
    def maintenance(self) -> bool:
        """Scheduled GC and retention run here (worker 0) only, never N times at once."""
        return self.number == 0

    def socket_path(self, token: str | None = None) -> Path:
        return self.run_dir / f"{token or self.token}.sock"

    def lock_path(self, token: str | None = None) -> Path:
        return self.run_dir / f"{token or self.token}.lock"

    @property
    def generation_path(self) -> Path:
        """Shared counters of index commits, one slot per worker of this supervisor
        (see ``index.cache``)."""
        return self.run_dir / f"index-generation-{self.supervisor}"

    def claim(self) -> int:
        """Take this incarnation's life lock; the fd must stay open as long as the process."""
        fd = os.open(self.lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd

    def peers(self) -> list[str]:
        """The live incarnations of the other workers (a scrape asks each for its figures)."""
        tokens = []
        for lock in sorted(self.run_dir.glob("w*-*.lock")):
            number = lock.stem[1:].partition("-")[0]
            if (
                number.isdigit()
                and int(number) != self.number
                and int(number) < self.count
                and self.alive(lock.stem)
            ):
                tokens.append(lock.stem)
        return tokens

    def alive(self, token: str) -> bool:
        """Whether incarnation ``token`` (of this server) still runs: its life lock is held."""
        if token == self.token:
            return True
        try:
            fd = os.open(self.lock_path(token), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def remove_dead(run_dir: Path) -> None:
    """Remove the sockets and life locks of incarnations that are gone, and the commit
    counters of supervisors none of whose workers lives (supervisor start)."""
    probe = WorkerIdentity(-1, 0, 0, run_dir)
    groups = {path.name.rpartition("-")[2] for path in run_dir.glob("index-generation-*")}
    for lock in run_dir.glob("w*.lock"):
        token = lock.stem
        if not probe.alive(token):
            for path in (probe.socket_path(token), lock):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(group), 0)
            continue  # that supervisor still runs
        with contextlib.suppress(FileNotFoundError):
            (run_dir / f"index-generation-{group}").unlink()
