"""sqlguard.PsqlGuard: what psql may run from a plain dump.

Genuine pg_dump output (of realistic_db and of functions whose dollar-quoted
bodies have backslashes at line starts) passes in any chunking, with the same
row counts as dump.CopyCounter; every payload an attacker could append is
refused with its line number, whatever the chunk boundaries.
"""

from __future__ import annotations

import random
import subprocess

import pytest
from conftest import make_db

from lifeboat.dump import CopyCounter
from lifeboat.sqlguard import PsqlGuard, Refused

HEADER = b"--\n-- PostgreSQL database dump\n--\n\n"
TRAILER = b"--\n-- PostgreSQL database dump complete\n--\n\n"

BACKSLASH_FUNCS = r"""
CREATE FUNCTION public.shell_like() RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN '
\! echo not a command
\connect elsewhere
';
END
$body$;
CREATE FUNCTION public.plain_sql() RETURNS text LANGUAGE sql AS $$
SELECT E'\\n' || '
\i /etc/passwd
'
$$;
CREATE FUNCTION public.atomic() RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT 1;
  SELECT 2;
END;
CREATE TABLE public.notes (id int, body text, raw bytea);
INSERT INTO public.notes VALUES
  (1, E'line\n\\! not a command\n\\.\n', '\x5c21'),
  (2, E'C:\\dir\\', NULL),
  (3, E'tab\there', '\x00ff');
COMMENT ON TABLE public.notes IS '
\! a comment with a backslash line';
CREATE VIEW public.v AS SELECT (ARRAY[1,2,3])[1:2] AS s, 'x'::text AS t;
"""


def pg_dump(db, *args: str) -> bytes:
    """pg_dump as the superuser (realistic_db has objects the owner cannot read)."""
    cluster = db.cluster
    return subprocess.run(
        [
            *("pg_dump", "-h", cluster.socket_dir, "-p", str(cluster.port), "-U", "postgres"),
            *("--no-password", f"--dbname={db.name}", *args),
        ],
        check=True,
        capture_output=True,
    ).stdout


def guard_in_pieces(data: bytes, sizes) -> PsqlGuard:
    guard, pos = PsqlGuard(), 0
    for size in sizes:
        guard.feed(data[pos : pos + size])
        pos += size
    guard.feed(data[pos:])
    guard.finish()
    return guard


def counted(data: bytes) -> dict:
    counter = CopyCounter()
    counter.feed(data)
    return counter.rows


@pytest.fixture(scope="module")
def dumps(pg):
    from conftest import make_realistic_db

    realistic = make_realistic_db(pg)
    funcs = make_db(pg, seed=False)
    funcs.sql(BACKSLASH_FUNCS)
    return {
        "realistic": pg_dump(realistic),
        "realistic-inserts": pg_dump(realistic, "--inserts"),
        "funcs": pg_dump(funcs),
        "funcs-no-owner": pg_dump(funcs, "--no-owner", "--no-acl"),
    }


def test_pg_dumps_own_output_passes_in_any_chunking(dumps):
    rng = random.Random(11)
    for name, data in dumps.items():
        whole = guard_in_pieces(data, [])
        assert whole.complete and whole.cleared == len(data), name
        assert whole.rows == counted(data), name
        for _ in range(20):
            sizes = [rng.randint(1, 4096) for _ in range(len(data) // 2048)]
            pieces = guard_in_pieces(data, sizes)
            assert pieces.rows == whole.rows, name
    assert b"\n\\! echo not a command\n" in dumps["funcs"]  # a backslash line in a body
    assert dumps["realistic"].count(b" FROM stdin;\n") >= 5


def test_every_split_point_of_a_small_dump(dumps):
    data = dumps["funcs"]
    expected = guard_in_pieces(data, []).rows
    for cut in range(1, len(data), 7):
        assert guard_in_pieces(data, [cut]).rows == expected, cut


def test_restrict_lines_of_newer_point_releases_pass(dumps):
    data = dumps["funcs"]
    if b"\n\\restrict " not in data:
        data = data.replace(HEADER, HEADER + b"\\restrict abcDEF123\n\n", 1)
        data = data.replace(TRAILER, b"\\unrestrict abcDEF123\n\n" + TRAILER)
    guard_in_pieces(data, [])


PAYLOADS = {
    "shell": (b"\\! touch /tmp/lifeboat-pwned\n", "\\!"),
    "shell mid-line": (b"SELECT 1; \\! touch /tmp/x\n", "\\!"),
    "connect": (b"\\connect postgres\nDELETE FROM users;\n", "\\connect"),
    "connect short": (b"\\c other\n", "\\c"),
    "passfile": (b"\\set x `cat $PGPASSFILE`\n", "\\set"),
    "include": (b"\\i /etc/passwd\n", "\\i"),
    "include relative": (b"\\ir x.sql\n", "\\ir"),
    "output": (b"\\o /tmp/out\n", "\\o"),
    "write": (b"SELECT 1 \\w /tmp/out\n", "\\w"),
    "setenv": (b"\\setenv PAGER touch\n", "\\setenv"),
    "gexec": (b"SELECT 'x' \\gexec\n", "\\gexec"),
    "client copy": (b"\\copy t from program 'id'\n", "\\copy"),
    "copy from program": (b"COPY public.t (a) FROM PROGRAM 'touch /tmp/x';\n", "COPY"),
    "copy from file": (b"COPY public.t FROM '/etc/passwd';\n", "COPY"),
    "copy rest of line": (b"COPY public.t (a) FROM stdin; \\! id\n\\.\n", "COPY"),
    "unrestrict mid-statement": (b"SELECT\n\\unrestrict abc\n", "\\unrestrict"),
    "command in copy data": (b"COPY public.t (a) FROM stdin;\n\\! id\n\\.\n", "COPY data"),
    "escape in copy data": (b"COPY public.t (a) FROM stdin;\nab \\! id\n\\.\n", "COPY data"),
    "crlf terminator": (b"COPY public.t (a) FROM stdin;\n\\.\r\n\\! id\n", "\\!"),
    "begin atomic copy": (
        b"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1;\n"
        b"COPY public.t (a) FROM stdin;\n\\! id\n\\.\nEND;\n",
        "\\!",
    ),
    "std strings": (b"SELECT 'a\\';\n'\n\\! id\n'\n", "standard_conforming_strings"),
    "encoding": (b"SELECT E'\x82\\';\n\\! id\n';\n", "client encodings"),
    "number then dollar": (b"SELECT 1$$ x $$;\n\\! id\n$$;\n", "after a number"),
    "nul": (b"SELECT 1;\x00\n", "NUL"),
    "comment ended by CR": (b"-- a comment\r\\! id\n", "\\!"),
    "CR inside a line": (b"SELECT 1;\r\\! id\n", "\\!"),
    # psql lexes `1e-` as one (failed) number: the second '-' starts no comment.
    "exponent sign": (b"SELECT 1e--\\! id\n", "\\!"),
    "parameter junk": (b"SELECT $1a$$ x $$;\n\\! id\n$$;\n", "parameter"),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payloads_are_refused_at_their_line_in_any_chunking(dumps, name):
    payload, what = PAYLOADS[name]
    body = dumps["funcs"]
    cut = body.index(TRAILER)
    data = body[:cut] + payload + body[cut:]
    line = body[:cut].count(b"\n") + 1
    for sizes in ([], [cut - 3], [cut + 2], [1] * 0 + [len(data) // 3] * 2, [5] * (len(data) // 5)):
        with pytest.raises(Refused) as caught:
            guard_in_pieces(data, sizes)
        assert what in caught.value.what or what in str(caught.value), caught.value
        assert line <= caught.value.line <= line + 3, (caught.value, line)
    # Nothing at or after the offending line was cleared for psql.
    guard = PsqlGuard()
    with pytest.raises(Refused):
        guard.feed(data)
    assert guard.cleared <= cut


QUOTED = [
    b"SELECT $q$\n\\! x\n$q$;\n",
    b"SELECT 'a''\n\\! x';\n",
    b"SELECT E'a\\'\n\\! x';\n",
    b'SELECT "a\n\\! x";\n',
    b"-- \\! a comment\n",
    b"/* a /* nested */ \\! still a comment */\n",
    b"SELECT 'a'\n'b\n\\! continued literal';\n",
    b"SELECT x$a$ FROM t; SELECT $a$\n\\! x$a$;\n",
    b"COPY public.t (a) FROM stdin;\n\\\\! escaped\n\\N\nx\\ty\n\\.\n",
]


@pytest.mark.parametrize("text", QUOTED)
def test_backslashes_inside_quotes_comments_and_data_pass(text):
    for size in (len(text), 1, 2, 3):
        guard_in_pieces(text, [size] * (len(text) // size))


def test_line_numbers_are_counted_across_chunks():
    data = b"SELECT 1;\n" * 1000 + b"\\! id\n"
    for size in (1, 7, 4096):
        with pytest.raises(Refused) as caught:
            guard_in_pieces(data, [size] * (len(data) // size))
        assert caught.value.line == 1001


# Pieces of psql syntax that change its lexer state, and commands that print a mark.
FUZZ_PIECES = [
    *("'", "''", "E'", "e'", "\\'", "\\\\", "$$", "$a$", "$1", "$1a", "1", "1e", "1e-", "x"),
    *("ab", '"', "--", "/*", "*/", "\n", "\r", " ", ";", "(", ")", "-", "+", "e", "*", "/"),
    *("\\! echo MARK\n", " \\! echo MARK\n", "CASE", "BEGIN", "END", "SELECT ", "\n'", "'\n"),
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC ",
    *("COPY public.t (a) FROM stdin;\n", "\\.\n", "\\.\r\n", "\\N\n", "\\\\!\n"),
    *("U&'", 'u&"', "b'", "X'", "N'", ":'x'", ":x"),
]


def test_whatever_the_guard_passes_runs_no_command_in_real_psql(pg):
    """Differential: random scripts the guard accepts are run by psql itself;
    none may execute a meta-command (this found `-- x\\r\\!` and `1e--\\!`)."""
    db = make_db(pg, seed=False)
    db.sql("CREATE TABLE public.t (a text)", superuser=True)
    rng = random.Random(20251130)
    accepted = 0
    for _ in range(400):
        script = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(3, 18))).encode()
        try:
            guard_in_pieces(script, [])
        except Refused:
            continue
        accepted += 1
        proc = subprocess.run(
            [
                *("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"),
                *("-h", pg.socket_dir, "-p", str(pg.port), "-U", "postgres", "-d", db.name),
                *("-f", "-"),
            ],
            input=script,
            capture_output=True,
            timeout=30,
        )
        assert b"MARK" not in proc.stdout, script
    assert accepted > 100  # the property was really exercised
