"""restore/load.py older_server_fix: newer clients' SET lines become comments,
in pg_dump's header only (the rest of the stream passes untouched and unread)."""

from __future__ import annotations

from lifeboat.restore.load import HEADER_BYTES, older_server_fix

HEADER = b"SET statement_timeout = 0;\nSET transaction_timeout = 0;\nSET lock_timeout = 0;\n"
ENTRY = (
    b"\n--\n-- Name: t; Type: TABLE; Schema: public; Owner: app\n--\n\nCREATE TABLE t (a int);\n"
)


def test_header_line_becomes_a_comment_of_the_same_length():
    fix = older_server_fix(150000)
    out = fix(HEADER + ENTRY)
    assert b"\n--  transaction_timeout = 0;\n" in out
    assert b"\nSET transaction_timeout" not in out
    assert len(out) == len(HEADER + ENTRY)


def test_nothing_after_the_first_entry_is_rewritten():
    fix = older_server_fix(150000)
    fix(HEADER + ENTRY)
    later = b"SET transaction_timeout = 0;\nCOPY t (a) FROM stdin;\n1\n\\.\n"
    assert fix(later) is later  # not even copied


def test_header_split_over_pieces_and_a_script_without_entries():
    fix = older_server_fix(160000)
    assert fix(b"SET statement_timeout = 0;\n").startswith(b"SET statement_timeout")
    assert fix(b"SET transaction_timeout = 0;\n") == b"--  transaction_timeout = 0;\n"
    # No TOC entry at all (a hand-written script): only its first MiB is looked at.
    fix = older_server_fix(150000)
    fix(b"-- padding\n" * (HEADER_BYTES // 11 + 1))
    line = b"SET transaction_timeout = 0;\n"
    assert fix(line) is line


def test_servers_that_know_the_setting_get_no_fix():
    assert older_server_fix(170000) is None
