"""Suite-wide fixtures: a throwaway PostgreSQL server, so the store runs against both of its databases.

The server is started once per test session: ``initdb`` into a temporary folder, ``postgres`` on
127.0.0.1 at a free port, stopped by its pid at the end. PostgreSQL refuses to run as root, so as root it
runs as ``nobody`` (through ``setpriv``). Tests that need it skip, saying why, when the server binaries or
the psycopg driver are missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    # Triton (torch's compiler, which diffusers loads) and Mesa's llvmpipe each carry an LLVM: a process that
    # made a GL context first crashes when triton loads. In-process GL tests and generator tests share one
    # process here, so triton comes first whatever order the tests run in (it loads in a tenth of a second).
    import triton  # noqa: F401
except ImportError:
    pass

#: Where Debian's postgresql package puts the server binaries (newest version first).
_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_counter = itertools.count()


def _pg_bin() -> Path | None:
    found = sorted(Path("/").glob(_PG_BIN_GLOB.lstrip("/")), key=lambda p: float(p.parent.name), reverse=True)
    found = [p for p in found if (p / "initdb").exists() and (p / "postgres").exists()]
    if found:
        return found[0]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running throwaway cluster: its admin URL and data folder."""

    port: int
    data_dir: Path
    user: str = "panostudy"

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{self.user}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on 127.0.0.1 for the whole test session (skips if it cannot be started here)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg (the PostgreSQL driver) is not installed; pip install -e '.[postgres]'")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found; install Debian's 'postgresql' package (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="panostudy-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        nobody = pwd.getpwnam("nobody")
        for path in (root, sockets):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    port = _free_port()
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "panostudy", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--locale=C"],
        check=True, capture_output=True, cwd=root,
    )
    log = open(root / "server.log", "wb")
    server = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
         "-k", str(sockets), "-c", "fsync=off", "-c", "max_connections=100"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)
        # The socket answers slightly before the server accepts logins.
        import psycopg

        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=panostudy dbname=postgres").close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield PostgresServer(port, data)
    finally:
        # setpriv execs postgres, so this pid is the postmaster's. SIGQUIT is its immediate shutdown: no
        # final checkpoint, which a cluster about to be deleted does not need.
        server.send_signal(signal.SIGQUIT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request):
    """Where a test's study database goes, once per store: ``target(folder)`` gives a SQLite file path in the
    folder, or the URL of a fresh empty PostgreSQL database."""
    if request.param == "sqlite":
        return lambda folder: Path(folder) / "study.sqlite"
    server = request.getfixturevalue("postgres_server")
    return lambda folder: server.create_database()
