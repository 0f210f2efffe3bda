"""Start and stop the registries under test, each on loopback with a fresh data directory.

aioreg runs as ``python -m aioreg serve`` with production settings (access log
off, uvloop); CNCF Distribution runs as ``docker-registry serve CONFIG`` with a
config written here (never the packaged one, which turns on htpasswd). Every
process started is remembered so that :func:`kill_all` can end it whatever
happened to the run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

_live: dict[int, subprocess.Popen[bytes]] = {}
_apt_updated = False


class ServerError(RuntimeError):
    """A registry did not start, or died while being measured."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- /proc accounting ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise ServerError(f"no {field} for pid {pid}")


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the most resident memory the process has had."""
    return _status_bytes(pid, "VmHWM")


def rss_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmRSS")


# -- tools --------------------------------------------------------------------


def ensure_tool(command: str, package: str, install: bool) -> str | None:
    """Path of ``command``; installs the Debian ``package`` first when allowed and root."""
    global _apt_updated
    found = shutil.which(command)
    if found or not install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[bench] {command} missing: apt-get install -y {package}", file=sys.stderr)
    try:
        if not _apt_updated:
            subprocess.run(
                ["apt-get", "update", "-qq"], env=env, check=True, timeout=600, capture_output=True
            )
            _apt_updated = True
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", package],
            env=env,
            check=True,
            timeout=900,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"[bench] could not install {package}: {exc}", file=sys.stderr)
        return None
    return shutil.which(command)


# -- running servers ----------------------------------------------------------


@dataclass
class Running:
    """One registry process serving on ``url`` from ``data_dir``."""

    kind: str
    url: str
    proc: subprocess.Popen[bytes]
    root: Path  # temp dir holding data, config and log; removed on stop
    data_dir: Path
    log_path: Path
    deviations: frozenset[str] = frozenset()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        self.check_alive()
        return cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        self.check_alive()
        return peak_rss_bytes(self.pid)

    def rss(self) -> int:
        self.check_alive()
        return rss_bytes(self.pid)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServerError(
                f"{self.kind} exited with {self.proc.returncode} during the run:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; removes the data. Returns the exit code."""
        code: int | None = None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
        finally:
            _live.pop(self.proc.pid, None)
            shutil.rmtree(self.root, ignore_errors=True)
        return code


class ServerKind:
    """How to start one kind of registry."""

    name = ""
    # Known departures from the spec that the listing checks note instead of failing on.
    deviations: frozenset[str] = frozenset()

    def available(self) -> bool:
        return True

    def command(self, root: Path, data: Path, port: int) -> tuple[list[str], dict[str, str | None]]:
        """argv and environment changes (None removes a variable)."""
        raise NotImplementedError

    def start(self, workdir: Path) -> Running:
        root = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=workdir))
        data = root / "data"
        data.mkdir()
        port = free_port()
        argv, changes = self.command(root, data, port)
        env = dict(os.environ)
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        log_path = root / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=root,  # not the caller's directory: `-m` puts the cwd first on sys.path
                start_new_session=True,  # a Ctrl-C to the bench reaches us, not the server
            )
        _live[proc.pid] = proc
        running = Running(
            self.name, f"http://127.0.0.1:{port}", proc, root, data, log_path, self.deviations
        )
        try:
            _wait_ready(running)
            self.check_started(running)
        except BaseException:
            running.stop()
            raise
        return running

    def check_started(self, running: Running) -> None:
        """Hook: assert the server runs with the settings we asked for."""

    def version(self) -> str:
        return ""


class Aioreg(ServerKind):
    """``python -m aioreg serve``: from the installed (editable) package, or from ``src``,
    a directory holding an ``aioreg/`` package (a snapshot of a git revision)."""

    name = "aioreg"

    def __init__(self, src: Path | None = None, config: str = "", access_log: bool = False) -> None:
        self.src = src
        self.config = config  # TOML written to the run's dir and passed as --config
        self.access_log = access_log

    def configured(self, config: str = "", access_log: bool = False) -> Aioreg:
        """The same aioreg (same source) with a config file and/or the access log on."""
        return Aioreg(self.src, config, access_log)

    def _env(self) -> dict[str, str | None]:
        # Nothing from the caller's environment may change the configuration.
        env: dict[str, str | None] = {key: None for key in os.environ if key.startswith("AIOREG_")}
        if self.src is not None:
            # PYTHONPATH comes before the editable install's finder on sys.path.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.src), os.environ.get("PYTHONPATH", "")) if p
            )
        return env

    def command(self, root: Path, data: Path, port: int) -> tuple[list[str], dict[str, str | None]]:
        argv = [
            sys.executable,
            "-m",
            "aioreg",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(data),
        ]
        if self.config:
            config = root / "aioreg.toml"
            config.write_text(self.config)
            argv += ["--config", str(config)]
        # Production settings: no access log (unless a scenario counts requests with it);
        # uvloop is picked up when installed.
        env = self._env()
        env.update(
            AIOREG_SERVER_ACCESS_LOG="true" if self.access_log else "false", PYTHONUNBUFFERED="1"
        )
        return argv, env

    def check_started(self, running: Running) -> None:
        deadline = time.monotonic() + 5
        while "listening on" not in (log := running.log_path.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise ServerError(f"aioreg never logged 'listening on':\n{log}")
            time.sleep(0.05)
        if "(uvloop)" not in log and ", uvloop) serving" not in log:  # one process, or workers
            raise ServerError(f"aioreg is not running on uvloop (production setting):\n{log}")

    def _python(self, code: str) -> str:
        env = dict(os.environ)
        for key, value in self._env().items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=self.src or tempfile.gettempdir(),
        )
        if out.returncode != 0:
            raise ServerError(f"cannot import aioreg: {out.stderr.strip()}")
        return out.stdout.strip()

    def version(self) -> str:
        return self._python("import aioreg; print('aioreg', aioreg.__version__)")

    def package_dir(self) -> str:
        """Where the server's ``aioreg`` package is imported from."""
        return self._python("import os, aioreg; print(os.path.dirname(aioreg.__file__))")


def snapshot_revision(repo: Path, rev: str, dest: Path) -> str:
    """Extract ``aioreg/`` at git revision ``rev`` into ``dest``; returns the full commit id."""
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", commit, "aioreg"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return commit


def source_state(repo: Path) -> dict[str, object]:
    """HEAD and the uncommitted changes under aioreg/ of the working tree."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else ""

    # Porcelain lines are "XY path": the status columns may be spaces, so never strip them.
    status = git("status", "--porcelain", "--", "aioreg").splitlines()
    return {
        "head": git("rev-parse", "HEAD").strip(),
        "uncommitted_aioreg_files": [line[3:] for line in status if len(line) > 3],
    }


DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
catalog:
  maxentries: {max_entries}
"""


class Distribution(ServerKind):
    """CNCF Distribution 2.8 (Debian's ``docker-registry``), filesystem storage, no auth."""

    name = "distribution"
    # 2.8 returns a repository's tags in directory order and ignores ?n= and ?last= on
    # tags/list (one unsorted page); its catalog is sorted and paginated.
    deviations = frozenset({"tags_unsorted", "tags_unpaginated"})
    max_entries = 100_000  # lets ?n= list a whole 1,000-repository catalog in one page

    def __init__(self, binary: str | None) -> None:
        self.binary = binary

    def available(self) -> bool:
        return self.binary is not None

    def command(self, root: Path, data: Path, port: int) -> tuple[list[str], dict[str, str | None]]:
        assert self.binary is not None
        config = root / "config.yml"
        config.write_text(
            DISTRIBUTION_CONFIG.format(data=data, port=port, max_entries=self.max_entries)
        )
        # No REGISTRY_* variables from the caller's environment may override the file.
        env: dict[str, str | None] = {
            key: None for key in os.environ if key.startswith("REGISTRY_")
        }
        return [self.binary, "serve", str(config)], env

    def version(self) -> str:
        if self.binary is None:
            return ""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        return out.stdout.strip()


def _wait_ready(running: Running) -> None:
    """Poll ``GET /v2/`` until it answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise ServerError(
                f"{running.kind} exited with {running.proc.returncode} before it was ready:\n"
                f"{running.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{running.url}/v2/", timeout=2) as response:
                if response.status == 200:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise ServerError(
        f"{running.kind} not ready after {READY_TIMEOUT}s ({last}):\n{running.log_tail()}"
    )


def kill_all() -> None:
    """Kill every server still running (used on error and at exit)."""
    for pid, proc in list(_live.items()):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        _live.pop(pid, None)


atexit.register(kill_all)
