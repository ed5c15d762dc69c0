"""A throw-away PostgreSQL cluster, for tests that must stop and restart the database.

The shared server on 127.0.0.1:5432 must never be stopped; a test that needs
the database to go away (and come back) starts one of these instead::

    with TempPostgres(tmp_path) as pg:
        url = pg.create_database("insight")   # postgresql+asyncpg://postgres@127.0.0.1:PORT/insight
        ...
        pg.stop()          # fast shutdown (or stop("immediate"): a crash, recovered on start)
        pg.restart()       # same port, same data

initdb and postgres refuse to run as root, so when the tests run as root the
server programs run as the ``postgres`` OS user and the cluster's directory is
handed to that user. Durability is left as configured by default (fsync on);
only initdb skips its own fsync (``--no-sync``).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Sequence
from urllib.parse import quote

PG_ROOTS = "/usr/lib/postgresql"
PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_isready", "psql")
OS_USER = "postgres"
STOP_MODES = ("smart", "fast", "immediate")
START_TIMEOUT_SECONDS = 60
# A Unix socket path must fit in sun_path (108 bytes on Linux, with the NUL).
MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535") - 1


class PostgresClusterError(RuntimeError):
    """A cluster command failed; the message ends with the server log's tail."""


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding every program needed (INSIGHT_TEST_PG_BIN overrides)."""
    override = os.environ.get("INSIGHT_TEST_PG_BIN")
    candidates = [Path(override)] if override else sorted(
        Path(PG_ROOTS).glob("*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True)
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in PROGRAMS):
            return candidate
    return None


def available() -> bool:
    """Whether the PostgreSQL server programs (initdb, pg_ctl, postgres, ...) are installed."""
    return bin_dir() is not None and (os.geteuid() != 0 or _has_os_user())


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _has_os_user() -> bool:
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class TempPostgres:
    """One PostgreSQL cluster in a fresh directory under ``base_dir``, on a free port of 127.0.0.1."""

    host = "127.0.0.1"

    def __init__(self, base_dir: Path) -> None:
        found = bin_dir()
        if found is None:
            raise PostgresClusterError(
                f"PostgreSQL server programs ({', '.join(PROGRAMS)}) not found under {PG_ROOTS}/*/bin "
                "(set INSIGHT_TEST_PG_BIN to their directory)")
        self.bin_dir = found
        self._as_root = os.geteuid() == 0
        if self._as_root and not _has_os_user():
            raise PostgresClusterError(f"running as root, and there is no {OS_USER!r} OS user to run PostgreSQL as")
        base_dir = Path(base_dir).resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        socket_dir = self.directory / "sock"
        self._own_socket_dir: Path | None = None
        if len(str(socket_dir)) > MAX_SOCKET_DIR:  # deep pytest tmp_path: keep the socket path short
            socket_dir = self._own_socket_dir = Path(tempfile.mkdtemp(prefix="pgs-"))
        else:
            socket_dir.mkdir()
        self.socket_dir = socket_dir
        self.port: int | None = None
        self._initialized = False
        self._running = False
        self._closed = False
        if self._as_root:
            self._hand_over(self.directory)
            self._hand_over(self.socket_dir)
        # Never leak a server: if close() is forgotten, stop it when collected or at exit.
        self._finalizer = weakref.finalize(
            self, _emergency_stop, self._command_prefix(), str(self.bin_dir / "pg_ctl"), str(self.data_dir),
            [self.directory] + ([self._own_socket_dir] if self._own_socket_dir else []))

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> "TempPostgres":
        """initdb (the first time), then start and wait until the server accepts connections."""
        self._check_open()
        if self._running:
            return self
        if not self._initialized:
            self._initdb()
        if self.port is not None:  # a restart: the same port, or a clear failure
            self._start_server()
            return self
        for attempt in range(3):  # another process may take the free port before the server binds it
            self._configure(free_port(self.host))
            try:
                self._start_server()
                return self
            except PostgresClusterError as exc:
                if attempt == 2 or "already in use" not in str(exc):
                    self.port = None
                    raise
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (clean shutdown), "immediate" (as a crash; recovery on next start) or "smart"."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {', '.join(STOP_MODES)}, not {mode!r}")
        if not self._running or not self._initialized:
            return
        if self._pg_ctl("status", check=False).returncode == 3:  # not running any more (crashed, killed)
            self._running = False
            return
        self._pg_ctl("stop", "-w", "-t", str(START_TIMEOUT_SECONDS), "-m", mode)
        self._running = False

    def restart(self, mode: str = "fast") -> "TempPostgres":
        """Start again on the same port with the same data (stopping it first, with ``mode``, if running)."""
        self.stop(mode)
        return self.start()

    def close(self) -> None:
        """Stop the server if it runs and remove its directory."""
        if self._closed:
            return
        try:
            try:
                self.stop("fast")
            except PostgresClusterError:
                self.stop("immediate")
        finally:
            self._closed = True
            self._finalizer.detach()
            shutil.rmtree(self.directory, ignore_errors=True)
            if self._own_socket_dir is not None:
                shutil.rmtree(self._own_socket_dir, ignore_errors=True)

    def __enter__(self) -> "TempPostgres":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- addresses and databases -----------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database (trust auth, user postgres)."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise PostgresClusterError("the cluster has not been started: no port yet")
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{quote(database, safe='')}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name (the server must be running); returns its SQLAlchemy URL."""
        self.psql('CREATE DATABASE "%s"' % name.replace('"', '""'))
        return self.url_for(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql over TCP (blocking; fine inside async tests) and return its output."""
        if not self._running:
            raise PostgresClusterError("the server is not running")
        result = self._run([str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
                           as_postgres=False, what=f"psql {sql!r}")
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"

    # -- the work ----------------------------------------------------------------------

    def _initdb(self) -> None:
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8", "--locale=C"], what="initdb")
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/support/pg_cluster.py\ninclude 'temp_cluster.conf'\n")
        self._initialized = True

    def _configure(self, port: int) -> None:
        self.port = port
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            "shared_buffers": "32MB",
            "max_connections": "50",
        }
        conf = self.data_dir / "temp_cluster.conf"
        conf.write_text("".join(f"{k} = '{v}'\n" for k, v in settings.items()), encoding="utf-8")
        if self._as_root:
            self._hand_over(conf)

    def _start_server(self) -> None:
        self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_SECONDS), "-l", str(self.log_path))
        self._running = True
        try:
            self._wait_ready()
        except PostgresClusterError:
            self.stop("immediate")
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        command = [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres",
                   "-d", "postgres", "-t", "2"]
        while True:
            result = subprocess.run(command, capture_output=True, text=True, env=_clean_env(), check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresClusterError(
                    f"PostgreSQL on {self.host}:{self.port} not ready after {START_TIMEOUT_SECONDS} s "
                    f"({result.stdout.strip()}); log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
                         what=f"pg_ctl {args[0]}", check=check)

    def _run(self, command: Sequence[str], what: str, as_postgres: bool = True,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = self._command_prefix() if as_postgres else []
        try:
            result = subprocess.run([*prefix, *command], capture_output=True, text=True, env=_clean_env(),
                                    cwd=self.directory, stdin=subprocess.DEVNULL, check=False,
                                    timeout=START_TIMEOUT_SECONDS + 30)
        except subprocess.TimeoutExpired as exc:
            raise PostgresClusterError(f"{what} timed out; log {self.log_path}:\n{self.log_tail()}") from exc
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise PostgresClusterError(
                f"{what} failed (exit {result.returncode}): {output}\n"
                f"log {self.log_path}:\n{self.log_tail()}")
        return result

    def _command_prefix(self) -> list[str]:
        if not self._as_root:
            return []
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", OS_USER, "--"]

    def _hand_over(self, path: Path) -> None:
        """Give path to the postgres user, and let that user reach it (o+x on root-only parents)."""
        entry = pwd.getpwnam(OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH and parent.stat().st_uid == 0:
                # e.g. pytest's /tmp/pytest-of-root is 0700: traversal only, no listing.
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)

    def _check_open(self) -> None:
        if self._closed:
            raise PostgresClusterError("this TempPostgres has been closed")


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables (PGPORT, PGHOST, ... would redirect the programs)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}


def _emergency_stop(prefix: list[str], pg_ctl: str, data_dir: str, directories: list[Path]) -> None:
    if Path(data_dir, "postmaster.pid").exists():
        subprocess.run([*prefix, pg_ctl, "-D", data_dir, "-w", "-t", "30", "stop", "-m", "immediate"],
                       capture_output=True, env=_clean_env(), cwd="/", check=False)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
