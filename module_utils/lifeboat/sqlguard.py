"""What may reach psql: only what pg_dump writes.

psql runs a script as it reads it, and a line whose backslash psql sees
outside a quote is a meta-command: `\\!` runs a shell command, `\\connect`
switches database, `\\i` and `\\o` read and write files, `\\set x `cmd``
runs a command. A plain dump is a script, so whoever can write to the store
could make a restore, a deep verify or a drill run anything as the lifeboat
user. `PsqlGuard` is fed the uncompressed stream before psql sees any of it
and refuses, with the line number, anything pg_dump does not write:

- a backslash that psql would read as a meta-command, other than pg_dump's
  own `\\restrict KEY` / `\\unrestrict KEY` lines (newer point releases);
  `\\connect` is refused too (pg_dump writes it only with --create, and
  following it would leave the scratch database);
- a COPY other than pg_dump's `COPY name (cols) FROM stdin;` on its own line
  (so no COPY ... FROM PROGRAM, no COPY to or from a server file);
- in COPY data, a backslash escape pg_dump does not write (its text format
  only writes \\\\ \\b \\f \\n \\r \\t \\v \\N), so a line taken for data can
  never be a command even if psql saw it otherwise;
- constructs psql reads differently depending on settings a script can
  change (standard_conforming_strings, a multibyte client encoding): a
  backslash right before a quote in a standard string, a backslash after a
  non-ASCII byte in an E'' string, a quote or `$` straight after a number, a
  `$` or letter straight after a parameter; and NUL.

The lexer follows psql's own (src/fe_utils/psqlscan.l): comments (nested
/* */ and --), quoted strings with '' and newline continuation, E'', B'', X'',
U&'', quoted identifiers, dollar quotes, parenthesis depth and the BEGIN ...
END depth of CREATE FUNCTION/PROCEDURE bodies, so a statement ends where
psql ends it. It also counts the rows of every COPY block, like
dump.CopyCounter. It is streaming: COPY data and quoted text are skipped
with bytes.find, and SQL outside quotes is lexed a line at a time.
"""

from __future__ import annotations

import re

from .errors import VerificationFailed

_IDENT = re.compile(rb"[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*")
# psql's number tokens (integer, real, their "fail" and "junk" forms) use these
# bytes and a sign right after an exponent's e: `1e-` is one token, so `1e--x`
# holds no comment.
_NUMBER = re.compile(rb"(?:[0-9]|\.[0-9])(?:[0-9A-Za-z\x80-\xff_.]|(?<=[eE])[-+])*")
_DOLQ = re.compile(rb"\$(?:[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*)?\$")
_PARAM = re.compile(rb"\$[0-9]+")
_SPACE = re.compile(rb"[ \t\n\r\f\v]+")
# Runs of tokens that change no state: identifiers (not right before a quote
# or &), numbers, blanks and operators other than the ones that start something.
_BORING = re.compile(
    rb"(?:(?>[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*)(?![&'\"$])"
    rb"|(?>[0-9]+)(?![0-9A-Za-z\x80-\xff_.'\"$&])"
    rb"|[ \t\r\f\v,=<>+*%^~!@#|`?\[\]{}:]"
    rb"|\.(?![0-9])|-(?!-)|/(?!\*))++"
)
# Whole statements that change no lexer state, consumed by one regex call
# (the bulk of an --inserts dump): tokens of _BORING, standard strings without
# a backslash, quoted identifiers and parentheses nested at most 4 deep (so the
# closing `;` is at depth 0, as psql counts it); never COPY or CREATE, whose
# first words psql looks at.
_ATOM = (
    rb"[ \t\r\n\f\v,=<>+*%^~!@#|`?\[\]{}:]++"
    rb"|(?>[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*)(?![&'\"$])"
    rb"|'(?:[^'\\]++|\\++[^'\\])*+'"
    rb"|(?>[0-9]+(?:\.[0-9]+)?)(?![0-9A-Za-z\x80-\xff_.'\"$&])"
    rb"|\.(?![0-9])|-(?!-)|/(?!\*)|\"[^\"]*\""
)
# Possessive throughout: a statement that does not fit fails at once, without
# backtracking (it is then lexed token by token).
_NESTED = rb"(?:" + _ATOM + rb")*+"
for _ in range(4):
    _NESTED = rb"(?:" + _ATOM + rb"|\(" + _NESTED + rb"\))*+"
_STATEMENTS = re.compile(
    rb"(?:(?>(?![ \t\r\n\f\v]*(?:[Cc][Oo][Pp][Yy]|[Cc][Rr][Ee][Aa][Tt][Ee])"
    rb"(?![A-Za-z0-9_$\x80-\xff]))" + _NESTED + rb";))+"
)
# After a closing quote: blanks and -- comments with a newline, then a quote,
# continue the same literal ('a'\n'b' is 'ab').
_AFTER_QUOTE = re.compile(rb"(?:[ \t\n\r\f\v]|--[^\n\r]*)*")
_XE_BODY = re.compile(rb"(?:[^\\']|\\.)*", re.DOTALL)
_HIGH_BACKSLASH = re.compile(rb"[\x80-\xff]\\")
_COMMENT = re.compile(rb"--[^\n\r]*")
_XC = re.compile(rb"/\*|\*/")
_QIDENT = rb'(?:"(?:[^"\n]|"")+"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_COPY_STMT = re.compile(
    rb"COPY (" + _QIDENT + rb"(?:\." + _QIDENT + rb")?)"
    rb"(?: \(" + _QIDENT + rb"(?:, " + _QIDENT + rb")*\))? FROM stdin;\n"
)
_ALLOWED_META = re.compile(rb"\\(restrict|unrestrict) [A-Za-z0-9]+\n")
_META_NAME = re.compile(rb"\\([A-Za-z0-9_\x80-\xff]+|[^\sA-Za-z0-9]?)")
_COPY_END = (b"\\.\n", b"\\.\r\n")
# pg_dump's comment before each TOC entry (the greedy name takes the last "; Type: ").
_TOC = re.compile(rb"-- (?:Data for )?Name: .*; Type: ([A-Z ]+); Schema: ")
_BAD_ESCAPE = re.compile(rb"\\[^bfnrtvN]")
_FUNC_WORDS = {
    b"create": b"c",
    b"function": b"f",
    b"procedure": b"p",
    b"or": b"o",
    b"replace": b"r",
}

INITIAL, XC, XQ, XE, XUS, XB, XD, XDOLQ, XQS, COPY = range(10)
# Marks (PsqlGuard(marks=True)): where the parallel restore may cut the stream.
TOC, META, COPY_START, COPY_END = range(4)


class Refused(Exception):
    """The stream holds something pg_dump does not write (`line` is 1-based)."""

    def __init__(self, line: int, what: str):
        super().__init__(f"line {line}: {what}")
        self.line = line
        self.what = what


class PsqlGuard:
    """Feed it the plain SQL stream chunk by chunk; it raises Refused at the
    first thing psql must not run, before anything from the offending line on
    has been cleared. `cleared` is how many bytes may be passed to psql: only
    whole lines, all checked."""

    def __init__(self, marks: bool = False) -> None:
        self.rows: dict[str, int] = {}
        # With marks=True, stream offsets found while lexing, in order (restore/parallel.py):
        # (TOC, start, type) a TOC comment line at a statement start; (META, start, end)
        # an allowed meta-command line; (COPY_START, start, data start, table) and
        # (COPY_END, terminator start, end). Only lexed SQL outside quotes is marked.
        self.marks: list[tuple] | None = [] if marks else None
        self.stmt_end = 0  # stream offset just after the last complete statement
        self.cleared = 0
        self._buf = b""
        self._base = 0  # stream offset of _buf[0]
        self._line = 1  # line number at _buf[0]
        self._bol = True  # _buf[0] starts a line
        self._state = INITIAL
        self._depth = 0  # nested comment depth
        self._tag = b""  # dollar-quote delimiter
        self._prev = INITIAL  # string state before a closing quote (XQS)
        self._start = 0  # where the current literal began (for messages)
        self._new_statement()
        self._table: str | None = None
        self._count = 0

    # ----------------------------------------------------------------- driving

    def feed(self, chunk: bytes) -> None:
        if b"\0" in chunk:
            at = self._buf.count(b"\n") + chunk[: chunk.index(b"\0")].count(b"\n")
            raise Refused(self._line + at, "a NUL byte (pg_dump never writes one)")
        self._buf = self._buf + chunk if self._buf else chunk
        self._run(final=False)

    def finish(self) -> None:
        """End of stream: check what was held back for lack of lookahead."""
        self._run(final=True)

    @property
    def complete(self) -> bool:
        return self._table is None

    def between_rows(self) -> bool:
        """In a COPY block, with everything fed whole rows of it: whole rows may
        follow here, checked elsewhere (check_rows)."""
        return self._state == COPY and not self._buf

    def _run(self, final: bool) -> None:
        buf = self._buf
        pos = self._scan(buf, final)
        # Whole lines up to where the lexer stopped are checked and may go to psql.
        last = buf.rfind(b"\n", 0, pos)
        self.cleared = self._base + (len(buf) if final else last + 1)
        self._line += buf.count(b"\n", 0, pos)
        if pos:
            self._bol = buf[pos - 1] == 0x0A
        self._base += pos
        self._buf = buf[pos:]

    def _refuse(self, buf: bytes, pos: int, what: str) -> Refused:
        return Refused(self._line + buf.count(b"\n", 0, pos), what)

    def _new_statement(self) -> None:
        self._parens = 0
        self._begins = 0
        self._idents: list[bytes] = []
        self._func = False

    # ----------------------------------------------------------------- the lexer

    def _scan(self, buf: bytes, final: bool) -> int:
        """Lex from 0; returns where it stopped (the rest waits for more input)."""
        pos, end = 0, len(buf)
        # Outside quotes only whole lines are lexed: no token spans a newline.
        limit = end if final else buf.rfind(b"\n") + 1
        while pos < end:
            state = self._state
            if state == COPY:
                pos = self._copy(buf, pos, final)
                if self._state == COPY:
                    return pos
            elif state == INITIAL:
                if pos >= limit:
                    return pos
                pos = self._initial(buf, pos, limit)
            elif state == XDOLQ:
                found = buf.find(self._tag, pos)
                if found < 0:
                    return max(pos, end - len(self._tag) + 1)
                pos = found + len(self._tag)
                self._state = INITIAL
            elif state == XC:
                match = _XC.search(buf, pos)
                if match is None:
                    return max(pos, end - 1)
                pos = match.end()
                if match.group() == b"/*":
                    self._depth += 1
                elif self._depth == 0:
                    self._state = INITIAL
                else:
                    self._depth -= 1
            elif state in (XQ, XUS, XB):
                found = buf.find(b"'", pos)
                if found < 0:
                    keep = end  # keep a trailing backslash run: the quote may follow
                    while keep > pos and buf[keep - 1] == 0x5C:
                        keep -= 1
                    return keep
                if state != XB:
                    if found + 1 >= end and not final:
                        return found  # '' or the end? wait for the next byte
                    if found + 1 < end and buf[found + 1] == 0x27:
                        pos = found + 2
                        continue
                    if state == XQ:
                        run = found
                        while run > pos and buf[run - 1] == 0x5C:
                            run -= 1
                        if (found - run) % 2:
                            raise self._refuse(
                                buf,
                                found,
                                "a backslash before a quote in a string, which psql reads "
                                "differently when standard_conforming_strings is off",
                            )
                self._prev, self._state = state, XQS
                pos = found + 1
            elif state == XE:
                stop = _XE_BODY.match(buf, pos).end()
                if _HIGH_BACKSLASH.search(buf, pos, stop):
                    raise self._refuse(
                        buf,
                        stop,
                        "a backslash after a non-ASCII byte in an E'' string, which psql "
                        "reads differently in some client encodings",
                    )
                if stop >= end or buf[stop] == 0x5C:  # the end, or a lone backslash at it
                    return stop
                if stop + 1 >= end and not final:
                    return stop  # '' or the end of the literal? wait for the next byte
                if buf[stop + 1 : stop + 2] == b"'":
                    pos = stop + 2
                    continue
                self._prev, self._state = XE, XQS
                pos = stop + 1
            elif state == XD:
                found = buf.find(b'"', pos)
                if found < 0:
                    return max(pos, end - 1)
                if found + 1 >= end and not final:
                    return found
                if buf[found + 1 : found + 2] == b'"':
                    pos = found + 2
                    continue
                self._state = INITIAL
                pos = found + 1
            elif state == XQS:
                stop = _AFTER_QUOTE.match(buf, pos).end()
                if stop >= end and not final:
                    return pos
                gap = buf[pos:stop]
                if stop < end and buf[stop] == 0x27 and (b"\n" in gap or b"\r" in gap):
                    self._state = self._prev  # the literal continues
                    pos = stop + 1
                else:
                    self._state = INITIAL
        return pos

    def _initial(self, buf: bytes, pos: int, limit: int) -> int:
        """Lex outside quotes up to `limit` (a line end) or until a quote opens."""
        while pos < limit:
            if not self._idents and not self._parens and not self._begins:
                match = _STATEMENTS.match(buf, pos, limit)
                if match:
                    pos = match.end()
                    self.stmt_end = self._base + pos
                    if pos >= limit:
                        break
            elif len(self._idents) >= 4 and not self._func:
                match = _BORING.match(buf, pos, limit)
                if match:
                    pos = match.end()
                    if pos >= limit:
                        break
            c = buf[pos]
            nxt = buf[pos + 1] if pos + 1 < limit else -1
            if c in b" \t\n\r\f\v":
                pos = _SPACE.match(buf, pos).end()
            elif c == 0x2D and nxt == 0x2D:  # -- comment: psql ends it at \n or \r
                end = _COMMENT.match(buf, pos, limit).end()
                if self.marks is not None and self._at_statement_start(buf, pos):
                    toc = _TOC.match(buf, pos, end)
                    if toc:
                        self.marks.append((TOC, self._base + pos, toc.group(1)))
                pos = end
            elif c == 0x2F and nxt == 0x2A:  # /*
                self._state, self._depth = XC, 0
                return pos + 2
            elif c == 0x27:
                return self._open(XQ, pos, 1)
            elif c == 0x22:
                self._state = XD
                return pos + 1
            elif c == 0x24:  # $
                match = _DOLQ.match(buf, pos, limit)
                if match:
                    self._tag = match.group()
                    self._state = XDOLQ
                    return match.end()
                match = _PARAM.match(buf, pos, limit)
                if match:
                    pos = match.end()
                    if pos < limit and (buf[pos] == 0x24 or _IDENT.match(buf, pos, pos + 1)):
                        raise self._refuse(buf, pos, "a '$' or a letter straight after a parameter")
                else:
                    pos += 1
            elif c == 0x5C:  # backslash: a meta-command
                pos = self._meta(buf, pos)
            elif c == 0x3B:  # ;
                pos += 1
                if self._parens == 0 and self._begins == 0:
                    self._new_statement()
                    self.stmt_end = self._base + pos
            elif c == 0x28:
                self._parens += 1
                pos += 1
            elif c == 0x29:
                self._parens = max(0, self._parens - 1)
                pos += 1
            elif c in b"eEbBxXnN" and nxt == 0x27:
                kind = XE if c in b"eE" else XB if c in b"bBxX" else XQ
                return self._open(kind, pos, 2)
            elif c in b"uU" and nxt == 0x26 and pos + 2 < limit and buf[pos + 2] in b"'\"":
                if buf[pos + 2] == 0x22:
                    self._state = XD
                    return pos + 3
                return self._open(XUS, pos, 3)
            elif c >= 0x80 or c == 0x5F or 0x41 <= (c & 0xDF) <= 0x5A:
                match = _IDENT.match(buf, pos, limit)
                self._word(buf, pos, match.group())
                if self._state == COPY:
                    return self._copy_start
                pos = match.end()
            elif 0x30 <= c <= 0x39 or (c == 0x2E and 0x30 <= nxt <= 0x39):
                match = _NUMBER.match(buf, pos, limit)
                pos = match.end()
                after = buf[pos] if pos < limit else -1
                if after >= 0 and (after in b"'\"$" or (after == 0x26 and buf[pos - 1] in b"uU")):
                    raise self._refuse(
                        buf,
                        pos,
                        "a quote or '$' straight after a number, which psql versions split "
                        "differently",
                    )
            else:
                pos += 1
        return pos

    def _open(self, state: int, pos: int, width: int) -> int:
        self._state, self._start = state, pos
        return pos + width

    def _word(self, buf: bytes, pos: int, word: bytes) -> None:
        """An identifier: psql's CREATE FUNCTION ... BEGIN/END tracking, and COPY."""
        lower = word.lower()
        if len(self._idents) < 4:
            if not self._idents and lower == b"copy":
                self._start_copy(buf, pos)
                return
            self._idents.append(_FUNC_WORDS.get(lower, b""))
            i = self._idents + [b""] * (4 - len(self._idents))
            self._func = i[0] == b"c" and (
                i[1] in (b"f", b"p") or (i[1] == b"o" and i[2] == b"r" and i[3] in (b"f", b"p"))
            )
        if self._func and self._parens == 0:
            if lower == b"begin" or (lower == b"case" and self._begins >= 1):
                self._begins += 1
            elif lower == b"end" and self._begins > 0:
                self._begins -= 1

    def _start_copy(self, buf: bytes, pos: int) -> None:
        match = _COPY_STMT.match(buf, pos)
        if match is None:
            eol = buf.find(b"\n", pos)
            text = buf[pos : eol if eol >= 0 else pos + 200][:200].decode("utf-8", "replace")
            raise self._refuse(
                buf,
                pos,
                f"a COPY that pg_dump does not write ({text!r}; pg_dump writes only "
                "'COPY name (columns) FROM stdin;' on its own line)",
            )
        self._table = match.group(1).decode("utf-8", "replace")
        self._count = 0
        self._state = COPY
        self._copy_start = match.end()
        if self.marks is not None:
            self.marks.append((COPY_START, self._base + pos, self._base + match.end(), self._table))

    def _at_statement_start(self, buf: bytes, pos: int) -> bool:
        line_start = buf[pos - 1] == 0x0A if pos else self._bol
        return line_start and not self._idents and not self._parens and not self._begins

    def _meta(self, buf: bytes, pos: int) -> int:
        line_start = buf[pos - 1] == 0x0A if pos else self._bol
        match = _ALLOWED_META.match(buf, pos)
        if line_start and match and not self._idents and self._parens == 0:
            if self.marks is not None:
                self.marks.append((META, self._base + pos, self._base + match.end()))
            return match.end()
        name = _META_NAME.match(buf, pos).group().decode("utf-8", "replace")
        if name in ("\\c", "\\connect"):
            what = (
                f"the psql meta-command {name} (it would leave the database being restored; "
                "pg_dump writes it only with --create, which lifeboat backups never use)"
            )
        else:
            what = f"the psql meta-command {name}, which pg_dump never writes"
        raise self._refuse(buf, pos, what)

    def _copy(self, buf: bytes, pos: int, final: bool) -> int:
        """COPY data: count rows up to the terminator; check escapes line by line."""
        end = len(buf)
        while True:
            if pos < end and buf[pos] == 0x5C:  # a line starting with a backslash
                for term in _COPY_END:
                    if buf.startswith(term, pos):
                        if self.marks is not None:
                            self.marks.append(
                                (COPY_END, self._base + pos, self._base + pos + len(term))
                            )
                        self._end_copy()
                        return pos + len(term)
            idx = buf.find(b"\n\\.", pos)
            if idx < 0:
                last = buf.rfind(b"\n", pos)
                stop = last + 1 if last >= 0 else pos
                if final:
                    stop = end
                self._check_data(buf, pos, stop)
                self._count += buf.count(b"\n", pos, stop)
                return stop
            # Rows up to this line; then look at it as a possible terminator.
            self._check_data(buf, pos, idx + 1)
            self._count += buf.count(b"\n", pos, idx + 1)
            pos = idx + 1
            if end - pos < 4 and not final:
                return pos
            if not any(buf.startswith(t, pos) for t in _COPY_END):
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    return end if final else pos
                self._check_data(buf, pos, eol + 1)
                self._count += 1
                pos = eol + 1

    def _check_data(self, buf: bytes, start: int, stop: int) -> None:
        if buf.find(b"\\", start, stop) < 0:
            return
        bad = _bad_escape(buf[start:stop])
        if bad:
            # Locate it in the original for the line number.
            line = buf[start:stop].split(b"\n")
            offset = start
            for text in line:
                if _bad_escape(text):
                    break
                offset += len(text) + 1
            raise self._refuse(buf, offset, _escape_refused(bad, self._table))

    def _end_copy(self) -> None:
        self.rows[self._table] = self.rows.get(self._table, 0) + self._count
        self._table = None
        self._state = INITIAL
        self._new_statement()


def _bad_escape(rows: bytes):
    return _BAD_ESCAPE.search(rows.replace(b"\\\\", b""))


def check_rows(rows: bytes, table: str) -> None:
    """Whole lines of COPY rows of `table` that did not pass the guard's own lexer
    (a parallel restore's packed rows): the escapes it allows there, and no NUL.
    Refused has no line number then (0)."""
    if b"\0" in rows:
        raise Refused(0, f"a NUL byte in COPY data of {table} (pg_dump never writes one)")
    if b"\\" in rows:
        bad = _bad_escape(rows)
        if bad:
            raise Refused(0, _escape_refused(bad, table))


def _escape_refused(bad: re.Match, table: str | None) -> str:
    return (
        f"a backslash escape pg_dump does not write in COPY data of {table} "
        f"({bad.group().decode('utf-8', 'replace')!r})"
    )


def refused(location: str, exc: Refused) -> VerificationFailed:
    """The error restore, verify and drills raise for a refused stream."""
    where = f"line {exc.line} holds" if exc.line else "holds"
    return VerificationFailed(
        f"Backup {location} was refused before psql ran it: {where} {exc.what}.",
        "Nothing from that line on was run. The file was changed after pg_dump wrote it, or is "
        "not a pg_dump plain dump: do not restore from it; find out who can write to the store, "
        "and restore another backup (`lifeboat list`).",
    )
