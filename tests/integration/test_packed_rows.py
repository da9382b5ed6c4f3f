"""A lifeboat backup's COPY rows travel compressed to the connection that loads
them (issue 14): the .sql.gz is written as gzip members cut where rows begin
and end (compress.GzipMembers), and a parallel restore hands each member of
rows, still compressed, to a worker, which inflates, counts and checks it
(restore/parallel.Rows).

The members come from a file whoever can write to the store may have
rewritten, with a matching manifest: rows cut in the middle of a line, an
escape pg_dump never writes, a COPY terminator smuggled into the rows, a
damaged member, and a "rows" label put on SQL must each stop the restore
with the original untouched, the scratch database dropped and nothing run.
A stock single-member gzip of the same dump restores to the same database.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from conftest import AppDB, fingerprint
from test_parallel_restore import (
    backup,
    databases,
    make_db,
    replace_dump,
    restore,
    rewrite_gzip,
    schema,
)

from lifeboat import compress


def split_members(path: Path) -> list[tuple[bytes, bytes]]:
    """(kind, member bytes) for every member of a lifeboat .sql.gz."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        fields = compress._HEADER.unpack_from(data, at)
        assert fields[:10] == compress._OURS, f"not a lifeboat member at {at}"
        out.append((fields[10], data[at : at + fields[11]]))
        at += fields[11]
    return out


def write_members(path: Path, members: list[tuple[bytes, bytes]]) -> None:
    """The file rewritten, with a manifest to match: only the restore can object."""
    replace_dump(path, b"".join(member for _, member in members))


def inflated(member: bytes) -> bytes:
    return b"".join(compress.inflate(member))


def test_backup_rows_are_packed_and_restore_as_a_stock_gzip_does(pg, lifeboat_env):
    db = make_db(pg)
    dump = backup(db, lifeboat_env)
    members = split_members(dump)
    kinds = [kind for kind, _ in members]
    assert kinds.count(compress.ROWS) >= 5, kinds  # parent, child, grandchild, ...
    text = subprocess.run(["gunzip", "-c", str(dump)], capture_output=True, check=True).stdout
    assert b"".join(inflated(m) for _, m in members) == text
    blocks, rows = [], b""  # the rows of each block: members may cut a row, blocks never
    for kind, member in members:
        body = inflated(member)
        assert len(body) <= compress.MEMBER
        if kind == compress.ROWS:
            rows += body
        elif rows:
            blocks.append(rows)
            rows = b""
    assert len(blocks) >= 5 and len(blocks) < kinds.count(compress.ROWS)  # big ones: several
    for rows in blocks:  # only whole rows, never the terminator
        assert rows.endswith(b"\n") and b"\n\\.\n" not in b"\n" + rows

    packed = f"{db.name}_packed"
    proc = restore(db, lifeboat_env, 2, "--target-db", packed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rewrite_gzip(dump, lambda sql: sql)  # one stock gzip member: inflated and lexed as before
    assert gzip.decompress(dump.read_bytes()) == text
    assert dump.read_bytes()[:4] != compress._HEADER.pack(*compress._OURS, b"S", 0)[:4]
    stock = f"{db.name}_stock"
    proc = restore(db, lifeboat_env, 2, "--target-db", stock)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copies = [AppDB(name, db.url_for(name), pg) for name in (packed, stock)]
    assert schema(copies[0]) == schema(copies[1])
    prints = [fingerprint(copy, superuser=True) for copy in copies]
    assert prints[0] == prints[1]
    original = fingerprint(db, superuser=True)
    assert {k: v for k, v in prints[0].items() if k != "database"} == {
        k: v for k, v in original.items() if k != "database"
    }


def _rows(change):
    """A change to a member's rows, packed again as lifeboat would."""
    return lambda member: compress._member(change(inflated(member)), 6, compress.ROWS)


def _damaged_crc(member: bytes) -> bytes:
    damaged = bytearray(member)
    damaged[-6] ^= 0xFF  # a byte of its CRC-32
    return bytes(damaged)


ESCAPE = "holds a backslash escape pg_dump does not write in COPY data of"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_rows(lambda rows: rows[:-1]), "end in the middle of a line"),  # the last newline gone
        (_rows(lambda rows: b"1\\x41\t" + rows), ESCAPE),
        # psql would end the block at \. and run the rest as SQL.
        (_rows(lambda rows: rows + b"\\.\nDROP TABLE public.parent CASCADE;\n"), ESCAPE),
        (_damaged_crc, "is corrupt or truncated"),
    ],
    ids=["cut-mid-line", "bad-escape", "terminator-then-sql", "damaged-crc"],
)
def test_rewritten_packed_rows_stop_the_restore(pg, lifeboat_env, change, said):
    db = make_db(pg, big=20000)
    dump = backup(db, lifeboat_env)
    before = fingerprint(db, superuser=True)
    names = databases(pg)
    members = split_members(dump)
    at = next(i for i, (kind, _) in enumerate(members) if kind == compress.ROWS)
    members[at] = (compress.ROWS, change(members[at][1]))
    write_members(dump, members)
    proc = restore(db, lifeboat_env, 2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert said in proc.stdout, proc.stdout
    assert "line" not in proc.stdout.split(said)[0][-60:]  # found on a worker: no line number
    assert databases(pg) == names  # the scratch database was dropped
    assert fingerprint(db, superuser=True) == before


def test_a_rows_label_on_sql_is_lexed_as_sql(pg, lifeboat_env):
    """Members labelled rows where the stream is not inside a COPY block are
    inflated and lexed like any SQL: a meta-command there is refused with its line."""
    db = make_db(pg, big=1000)
    dump = backup(db, lifeboat_env)
    before = fingerprint(db, superuser=True)
    trace = Path(f"/tmp/lifeboat_packed_label_{db.name}")
    members = split_members(dump)
    hostile = compress._member(f"\\! touch {trace}\n".encode(), 6, compress.ROWS)
    members.insert(0, (compress.ROWS, hostile))  # where the stream starts: no COPY block
    write_members(dump, members)
    proc = restore(db, lifeboat_env, 2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "was refused before psql ran it: line" in proc.stdout, proc.stdout
    assert "meta-command \\!" in proc.stdout, proc.stdout
    assert not trace.exists()
    assert fingerprint(db, superuser=True) == before
