"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

A cluster lives in one directory, listens on 127.0.0.1 and a Unix socket in
that directory, and is owned by the `postgres` system user when we run as root
(initdb refuses root). Nothing here is used by the engine on a real host.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


def server_bin_dir() -> Path:
    """Newest PostgreSQL server installation on this machine."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise SystemExit(
        "PostgreSQL server binaries not found: install them with "
        "`apt-get install -y postgresql-15` (make setup-test does this as root)."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner() -> dict:
    """preexec/user arguments so server commands run as `postgres` under root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres"}


@dataclass
class Cluster:
    datadir: Path
    port: int

    @property
    def bindir(self) -> Path:
        return server_bin_dir()

    @property
    def socket_dir(self) -> str:
        return str(self.datadir)

    def _run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd="/",
            **_as_owner(),
            **kw,
        )
        if check and proc.returncode != 0:  # what the program said, not only its exit code
            raise RuntimeError(
                f"{args[0]} exited with {proc.returncode}: {proc.stderr.strip()} "
                f"{proc.stdout.strip()[-2000:]}"
            )
        return proc

    def init(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
            # The server must reach its directory through every parent.
            for parent in self.datadir.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
        self.datadir.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.datadir}'\n"
                "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
                "max_connections = 50\n"
                # tests of prepared transactions (two-phase commit)
                "max_prepared_transactions = 4\n"
                # half the default lock table: test_many_tables fills it with fewer tables
                "max_locks_per_transaction = 32\n"
            )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.datadir / "server.log"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-w", "-m", mode, "stop", check=False)

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0

    def _psql(self, db: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """psql as the superuser over the Unix socket, stopping at the first error."""
        return self._run(
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            db,
            *args,
            check=check,
        )

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> str:
        """Run SQL as the superuser; return psql's unaligned output."""
        return self._psql(db, "-At", "-c", sql, check=check).stdout.strip()

    def psql_file(self, path: str, db: str) -> None:
        self._psql(db, "-f", path)

    def create_owner(self, role: str, password: str, db: str) -> str:
        """A LOGIN + CREATEDB role owning `db`; returns its URL (password encoded)."""
        lit = password.replace("'", "''")
        self.psql(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{lit}'")
        self.psql(f'CREATE DATABASE "{db}" OWNER "{role}"')
        return self.url(role, password, db)

    def url(self, role: str, password: str, db: str) -> str:
        quote = urllib.parse.quote
        return (
            f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}"
            f"@127.0.0.1:{self.port}/{quote(db, safe='')}"
        )


DEMO_SCHEMA = """
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE plots (
    id bigserial PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES users(id),
    title text NOT NULL,
    area_m2 numeric(10, 2) NOT NULL,
    tags jsonb NOT NULL DEFAULT '[]'
);
INSERT INTO users (email, name)
    SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, 500) g;
INSERT INTO plots (owner_id, title, area_m2, tags)
    SELECT 1 + g % 500, 'Plot ' || g, (g * 7.5) % 5000, jsonb_build_array('tag' || g % 7)
    FROM generate_series(1, 2000) g;
ANALYZE;
"""


def demo(root: Path) -> str:
    """Start (creating on first use) the demo cluster; return its DATABASE_URL."""
    root = root.resolve()
    state = root / "demo.env"
    datadir = root / "pgdata"
    if state.exists() and datadir.exists():
        url = state.read_text().strip()
        port = urllib.parse.urlsplit(url).port
        cluster = Cluster(datadir, port)
        if not cluster.is_running():
            cluster.start()
        return url
    if datadir.exists():
        shutil.rmtree(datadir)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    cluster = Cluster(datadir, free_port())
    cluster.init()
    cluster.start()
    url = cluster.create_owner("plotzed", "demo p@ss/word", "plotzed")
    schema = root / "schema.sql"
    schema.write_text(DEMO_SCHEMA)
    schema.chmod(0o644)
    cluster._run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(schema))
    state.write_text(url + "\n")
    state.chmod(0o600)
    return url


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("demo-url", help="start the demo cluster, print its URL")
    start.add_argument("root", type=Path)
    stop = sub.add_parser("demo-stop", help="stop the demo cluster")
    stop.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "demo-url":
        print(demo(args.root))
    else:
        datadir = args.root.resolve() / "pgdata"
        if datadir.exists():
            Cluster(datadir, 0).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
