"""gzip written as independent members cut at COPY rows (compress.GzipMembers),
read back as SQL plus still-compressed rows (compress.members, Inflater), and
the cuts the dump's CopyCounter finds (dump.CopyCounter(cuts=True), dump._Cutter)."""

import gzip
import io
import itertools
import random
import subprocess
import zlib

import pytest

from lifeboat import compress, dump
from lifeboat.compress import MEMBER, ROWS, SQL


def sql_like(size: int, seed: int) -> bytes:
    """Random-ish SQL text of at least `size` bytes, whole lines."""
    rng = random.Random(seed)
    verbs = ("INSERT INTO public.t VALUES", "UPDATE public.u SET v =", "SELECT pg_catalog.setval")
    lines, total = [], 0
    while total < size:
        line = f"{rng.choice(verbs)} ({rng.getrandbits(40)}, '{rng.getrandbits(64):x}');\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def copy_rows(count: int, seed: int) -> bytes:
    """Whole COPY rows (tab-separated, with an escaped backslash now and then)."""
    rng = random.Random(seed)
    escaped = "a\\\\b"  # the value a\b as COPY writes it
    return "".join(
        f"{i}\t{rng.getrandbits(48):x}\t{escaped if i % 97 == 0 else 'x'}\n" for i in range(count)
    ).encode()


class Trickle(io.RawIOBase):
    """A reader that returns at most `most` bytes a read, as a pipe may."""

    def __init__(self, data: bytes, most: int = 777):
        self._data = io.BytesIO(data)
        self._most = most

    def readable(self) -> bool:
        return True

    def read(self, size=-1) -> bytes:
        size = self._most if size is None or size < 0 else min(size, self._most)
        return self._data.read(size)

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def write_members(data: bytes, cuts, sizes=(65536,), threads: int = 1, level: int = 1) -> bytes:
    """`data` through GzipMembers in writes of `sizes` (cycled), cut at `cuts`."""
    sink = io.BytesIO()
    writer = compress.GzipMembers(sink, level, threads)
    pos, size = 0, itertools.cycle(sizes)
    for offset, kind in [*cuts, (len(data), None)]:
        while pos < offset:
            n = min(next(size), offset - pos)
            assert writer.write(data[pos : pos + n]) == n
            pos += n
        if kind is not None:
            writer.cut(kind)
    writer.close()
    return sink.getvalue()


def walk(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, member) for every member, found by the size in its LB subfield."""
    found, pos = [], 0
    while pos < len(blob):
        fields = compress._HEADER.unpack_from(blob, pos)
        assert fields[:10] == compress._OURS, f"member at {pos} has a foreign header"
        kind, size = fields[10], fields[11]
        assert kind in (SQL, ROWS)
        found.append((kind, blob[pos : pos + size]))
        pos += size
    assert pos == len(blob), "the last member's size overruns the file"
    return found


def expected_members(total: int, cuts) -> list[tuple[bytes, int, int]]:
    """(kind, start, end) of the members GzipMembers must write for `cuts`."""
    out, start, kind = [], 0, SQL
    for offset, next_kind in [*cuts, (total, None)]:
        for at in range(start, offset, MEMBER):
            out.append((kind, at, min(at + MEMBER, offset)))
        start, kind = offset, next_kind
    return out


def pieces(blob: bytes, chunk: int = 1 << 20, raw=None) -> list[tuple[str, bytes | object]]:
    """compress.members over `blob`: adjacent SQL bytes joined, each Packed on its own."""
    out: list = []
    for piece in compress.members(raw or io.BytesIO(blob), chunk):
        if isinstance(piece, compress.Packed):
            out.append(("D", piece))
        else:
            assert isinstance(piece, bytes) and 0 < len(piece) <= chunk
            if out and out[-1][0] == "S":
                out[-1] = ("S", out[-1][1] + piece)
            else:
                out.append(("S", piece))
    return out


def inflated(packed: compress.Packed) -> bytes:
    return b"".join(compress.inflate(packed.data))


# ------------------------------------------------------------ GzipMembers


BIG = sql_like(2 * MEMBER + 300_000, seed=1)
BIG_CUTS = [(100_001, ROWS), (300_017, SQL), (MEMBER + 5, ROWS), (2 * MEMBER + 17, SQL)]


@pytest.mark.parametrize("threads", [1, 3])
def test_round_trip_through_stdlib_and_gunzip(threads):
    blob = write_members(BIG, BIG_CUTS, sizes=(1, 7, 4093, 65537, 1_000_003), threads=threads)
    assert gzip.decompress(blob) == BIG
    gunzip = subprocess.run(["gunzip", "-c"], input=blob, capture_output=True, check=True)
    assert gunzip.stdout == BIG

    found = walk(blob)
    want = expected_members(len(BIG), BIG_CUTS)
    assert [kind for kind, _ in found] == [kind for kind, _, _ in want]
    for (_, member), (_, start, end) in zip(found, want):
        data = zlib.decompress(member, 31)  # each member stands alone
        assert len(data) <= MEMBER
        assert data == BIG[start:end]
        assert int.from_bytes(member[-4:], "little") == end - start
    assert sum(kind == ROWS for kind, _ in found) == 3  # the second ROWS run spans 2 members


def test_empty_stream_is_one_empty_gzip_member():
    sink = io.BytesIO()
    compress.GzipMembers(sink, 6).close()
    blob = sink.getvalue()
    assert blob
    assert gzip.decompress(blob) == b""
    gunzip = subprocess.run(["gunzip", "-c"], input=blob, capture_output=True, check=True)
    assert gunzip.stdout == b""
    assert [kind for kind, _ in walk(blob)] == [SQL]
    assert pieces(blob) == []


def test_cuts_with_nothing_between_them_write_no_member():
    blob = write_members(b"abc\n", [(0, ROWS), (0, SQL), (4, ROWS), (4, SQL)])
    assert [(kind, zlib.decompress(m, 31)) for kind, m in walk(blob)] == [(SQL, b"abc\n")]


# ------------------------------------------------------------ members()


SQL1 = b"SET client_encoding = 'UTF8';\nCOPY public.a (id, v, w) FROM stdin;\n"
ROWS1 = copy_rows(2000, seed=2)
SQL2 = b"\\.\n\n" + sql_like(50_000, seed=3) + b"COPY public.b (id, v, w) FROM stdin;\n"
ROWS2 = copy_rows(220_000, seed=4)  # more than one member
SQL3 = b"\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
PARTS = [SQL1, ROWS1, SQL2, ROWS2, SQL3]
TEXT = b"".join(PARTS)
ENDS = list(itertools.accumulate(len(part) for part in PARTS))
CUTS = [(ENDS[0], ROWS), (ENDS[1], SQL), (ENDS[2], ROWS), (ENDS[3], SQL)]


@pytest.fixture(scope="module")
def lifeboat_blob():
    assert len(ROWS2) > MEMBER
    return write_members(TEXT, CUTS, sizes=(4099, 131071))


@pytest.mark.parametrize("trickle", [None, 777, 7])  # 7: short reads inside headers too
def test_members_packs_exactly_the_rows(lifeboat_blob, trickle):
    raw = Trickle(lifeboat_blob, trickle) if trickle else None
    got = pieces(lifeboat_blob, chunk=65536, raw=raw)
    assert [tag for tag, _ in got] == ["S", "D", "S", "D", "D", "S"]
    assert got[0][1] == SQL1
    assert got[2][1] == SQL2
    assert got[5][1] == SQL3
    assert inflated(got[1][1]) == ROWS1
    assert inflated(got[3][1]) == ROWS2[:MEMBER]
    assert inflated(got[4][1]) == ROWS2[MEMBER:]
    for tag, packed in got:
        if tag == "D":
            assert packed.size == len(inflated(packed))
    joined = b"".join(inflated(p) if tag == "D" else p for tag, p in got)
    assert joined == TEXT


def test_members_inflates_a_foreign_single_member():
    got = pieces(gzip.compress(TEXT), chunk=65536)
    assert [tag for tag, _ in got] == ["S"]
    assert got[0][1] == TEXT


def test_members_inflates_two_foreign_members():
    blob = gzip.compress(TEXT[:1000]) + gzip.compress(TEXT[1000:])
    assert pieces(blob, chunk=65536) == [("S", TEXT)]
    # the smallest foreign member there is (20 bytes: shorter than our header)
    assert pieces(gzip.compress(b"") + gzip.compress(b"tail\n")) == [("S", b"tail\n")]


def test_members_inflates_a_foreign_member_after_ours(lifeboat_blob):
    tail = sql_like(10_000, seed=5)
    got = pieces(lifeboat_blob + gzip.compress(tail), chunk=65536)
    assert [tag for tag, _ in got] == ["S", "D", "S", "D", "D", "S"]
    assert got[5][1] == SQL3 + tail

    rows_then_foreign = write_members(b"r1\nr2\n", [(0, ROWS)]) + gzip.compress(tail)
    got = pieces(rows_then_foreign)
    assert [tag for tag, _ in got] == ["D", "S"]
    assert inflated(got[0][1]) == b"r1\nr2\n"
    assert got[1][1] == tail


# ------------------------------------------------------------ corrupt input


def test_truncated_inside_a_member_is_corrupt(lifeboat_blob):
    starts = list(itertools.accumulate([0] + [len(m) for _, m in walk(lifeboat_blob)]))
    for index in range(len(starts) - 1):  # each member, SQL and ROWS
        middle = (starts[index] + starts[index + 1]) // 2
        for cut in (middle, starts[index + 1] - 1):
            with pytest.raises(compress.Corrupt):
                list(compress.members(io.BytesIO(lifeboat_blob[:cut])))


def test_truncated_inside_a_member_header_is_corrupt(lifeboat_blob):
    second = len(walk(lifeboat_blob)[0][1])
    for keep in (1, 10, compress._HEADER.size - 1):
        with pytest.raises(compress.Corrupt):
            list(compress.members(io.BytesIO(lifeboat_blob[: second + keep])))


@pytest.mark.parametrize("kind", [SQL, ROWS])
@pytest.mark.parametrize("size", [compress.MEMBER_MAX + 1, 0xFFFFFFFF, 3])
def test_impossible_member_size_is_corrupt(kind, size):
    head = compress._HEADER.pack(*compress._OURS, kind, size)
    with pytest.raises(compress.Corrupt, match="size"):
        list(compress.members(io.BytesIO(head + bytes(64))))


def test_a_changed_byte_in_packed_rows_is_corrupt(lifeboat_blob):
    packed = pieces(lifeboat_blob)[1][1]
    data = packed.data
    assert inflated(packed) == ROWS1
    body = compress._HEADER.size
    for at in (body, body + 1, (body + len(data)) // 2, len(data) - 9):  # deflate body
        for at_ in (at, len(data) - 8, len(data) - 5, len(data) - 4, len(data) - 1):  # CRC, ISIZE
            bad = bytearray(data)
            bad[at_] ^= 0xFF
            with pytest.raises(compress.Corrupt):
                list(compress.inflate(bytes(bad)))


# ------------------------------------------------------------ Inflater


def test_inflater_piece_sizes_do_not_matter():
    text = sql_like(120_000, seed=6)
    cuts = [(10_000, ROWS), (40_000, SQL), (40_000, ROWS), (90_000, SQL)]
    foreign = gzip.compress(b"foreign\n") + gzip.compress(b"")
    blob = write_members(text, cuts, sizes=(333,)) + foreign
    want = text + b"foreign\n"
    for size in (1, 7, 4096):
        inflater = compress.Inflater(limit=5000)
        out = []
        for at in range(0, len(blob), size):
            out.extend(inflater.feed(blob[at : at + size]))
        inflater.finish()
        assert b"".join(out) == want, size
        assert max(len(piece) for piece in out) <= 5000


def test_inflater_bounds_its_pieces():
    blob = gzip.compress(bytes(20 << 20))
    for size in (len(blob), 4096):
        inflater = compress.Inflater(limit=1 << 20)
        out = []
        for at in range(0, len(blob), size):
            out.extend(inflater.feed(blob[at : at + size]))
        inflater.finish()
        assert max(len(piece) for piece in out) <= 1 << 20
        assert sum(len(piece) for piece in out) == 20 << 20
        assert all(not piece.strip(b"\0") for piece in out)


def test_inflater_finish_after_a_partial_member_is_corrupt():
    one, two = gzip.compress(b"first\n" * 1000), gzip.compress(b"second\n" * 1000)
    for partial in (one[:5], one[: len(one) // 2], one[:-1], one + two[:12]):
        inflater = compress.Inflater()
        list(inflater.feed(partial))
        with pytest.raises(compress.Corrupt):
            inflater.finish()
    inflater = compress.Inflater()
    assert b"".join(inflater.feed(one + two)) == b"first\n" * 1000 + b"second\n" * 1000
    inflater.finish()
    with pytest.raises(compress.Corrupt):
        list(compress.Inflater().feed(b"not gzip at all"))


# ------------------------------------------------------------ CopyCounter cuts


A_HEADER = b"COPY public.a (x) FROM stdin;\n"
E_HEADER = b'COPY public."Empty" (id) FROM stdin;\n'
DUMP = (
    b"--\n-- PostgreSQL database dump\n--\n\n"
    b"SET client_encoding = 'UTF8';\n"
    b"CREATE TABLE public.a (x text);\n"
    b"-- mentions COPY public.a (x) FROM stdin;\n"
    b"SELECT 'a line with COPY public.a (x) FROM stdin; in it';\n" + A_HEADER + b"1\n"
    b"COPY public.b (y) FROM stdin;\n"  # a row that looks like a header
    b"\\\\.\n"  # a row holding \.
    b"last\n"
    b"\\.\n"
    b"\n" + E_HEADER + b"\\.\n"
    b"\n"
    b"ALTER TABLE ONLY public.a ADD CONSTRAINT a_pkey PRIMARY KEY (x);\n"
    b"--\n-- PostgreSQL database dump complete\n--\n\n"
)
A_ROWS = DUMP.index(b"\n" + A_HEADER) + 1 + len(A_HEADER)
A_END = DUMP.index(b"\n\\.\n", A_ROWS) + 1
E_ROWS = DUMP.index(E_HEADER) + len(E_HEADER)
DUMP_CUTS = [(A_ROWS, ROWS), (A_END, SQL), (E_ROWS, ROWS), (E_ROWS, SQL)]
DUMP_ROWS = {"public.a": 4, 'public."Empty"': 0}


def count(data: bytes, sizes) -> dump.CopyCounter:
    counter = dump.CopyCounter(cuts=True)
    pos = 0
    for size in sizes:
        counter.feed(data[pos : pos + size])
        pos += size
    if pos < len(data):
        counter.feed(data[pos:])
    return counter


def test_cut_offsets_point_at_rows_and_terminators():
    assert DUMP[A_ROWS:].startswith(b"1\nCOPY public.b")
    assert DUMP[:A_ROWS].endswith(b"\n" + A_HEADER)
    assert DUMP[A_END:].startswith(b'\\.\n\nCOPY public."Empty"')
    assert DUMP[E_ROWS:].startswith(b"\\.\n\nALTER TABLE")
    counter = count(DUMP, [])
    assert list(counter.cuts) == DUMP_CUTS
    assert counter.rows == DUMP_ROWS and counter.complete


@pytest.mark.parametrize("size", [1, 5, 4096])
def test_cuts_do_not_depend_on_chunk_size(size):
    counter = count(DUMP, [size] * len(DUMP))
    assert list(counter.cuts) == DUMP_CUTS
    assert counter.rows == DUMP_ROWS and counter.complete


def test_cuts_at_every_split_point():
    for split in range(1, len(DUMP)):
        counter = count(DUMP, [split])
        assert list(counter.cuts) == DUMP_CUTS, split
        assert counter.rows == DUMP_ROWS, split


def test_copy_not_at_line_start_is_no_cut():
    text = (
        b"SELECT 'COPY public.a (x) FROM stdin;';\n"
        b"-- COPY public.a (x) FROM stdin;\n"
        b"  COPY public.a (x) FROM stdin;\n"
        b"xCOPY public.a (x) FROM stdin;\n"
    )
    for sizes in ([], [1] * len(text), [5] * len(text)):
        counter = count(text, sizes)
        assert list(counter.cuts) == [] and counter.rows == {} and counter.complete


def test_without_cuts_nothing_is_recorded():
    counter = dump.CopyCounter()
    counter.feed(DUMP)
    assert counter.cuts is None and counter.rows == DUMP_ROWS


# ------------------------------------------------------------ dump._Cutter end to end


def dump_text(blocks) -> tuple[bytes, list[bytes]]:
    """A plain dump with one COPY block per entry of `blocks` (rows bytes)."""
    parts, rows = [b"--\n-- PostgreSQL database dump\n--\n\nSET x = 0;\n"], []
    for n, block in enumerate(blocks):
        header = f"\n-- Data for Name: t{n}\n\nCOPY public.t{n} (id, v, w) FROM stdin;\n"
        parts.append(header.encode())
        parts.append(block)
        parts.append(b"\\.\n")
        rows.append(block)
    parts.append(b"\n--\n-- PostgreSQL database dump complete\n--\n\n")
    return b"".join(parts), rows


def pack_dump(text: bytes, sizes) -> bytes:
    """`text` as the dump pipeline writes it: counter first, then the writer."""
    counter = dump.CopyCounter(cuts=True)
    sink = io.BytesIO()
    writer = dump._Cutter(compress.GzipMembers(sink, 1), counter.cuts)
    at, size = 0, itertools.cycle(sizes)
    while at < len(text):
        chunk = text[at : at + next(size)]
        counter.feed(chunk)
        writer.write(chunk)
        at += len(chunk)
    writer.close()
    assert not counter.cuts  # every cut was used
    return sink.getvalue()


def whole_rows(data: bytes) -> bool:
    return data.endswith(b"\n") and not data.startswith(b"\\.\n") and b"\n\\.\n" not in data


SMALL_BLOCKS = [copy_rows(300, seed=7), b"", copy_rows(1, seed=8), copy_rows(5000, seed=9)]


@pytest.mark.parametrize("sizes", [(1,), (5,), (4096,), (1 << 20,), (3, 1000, 17, 65536)])
def test_dump_through_write_and_members(sizes):
    text, rows = dump_text(SMALL_BLOCKS)
    blob = pack_dump(text, sizes)
    assert gzip.decompress(blob) == text
    got = pieces(blob, chunk=4096)
    packed = [inflated(p) for tag, p in got if tag == "D"]
    assert packed == [block for block in rows if block]  # one member per non-empty block
    assert all(whole_rows(data) for data in packed)
    assert b"".join(inflated(p) if tag == "D" else p for tag, p in got) == text
    for tag, sql in got:
        if tag == "S":
            assert sql.startswith(b"--") or sql.startswith(b"\\.\n")


def test_terminator_split_across_chunks():
    text, rows = dump_text([b"1\n2\n"])
    start = text.index(b"\n\\.\n") + 1  # where the terminator line begins
    wrong = {}
    for split in range(start - 2, start + 5):  # the dump read in two chunks, cut at `split`
        blob = pack_dump(text, (split, len(text)))
        packed = [inflated(p) for tag, p in pieces(blob) if tag == "D"]
        if packed != rows:
            wrong[split - start] = packed
    assert wrong == {}, "keys: where the read was cut, relative to the terminator line"


def test_rows_longer_than_a_member():
    block = copy_rows(220_000, seed=10)
    assert len(block) > MEMBER
    text, _ = dump_text([copy_rows(10, seed=11), block])
    blob = pack_dump(text, (65536,))
    got = pieces(blob, chunk=65536)
    assert [tag for tag, _ in got] == ["S", "D", "S", "D", "D", "S"]
    assert all(len(inflated(p)) <= MEMBER for tag, p in got if tag == "D")
    # The block's members may split a row between them: whole rows together.
    assert inflated(got[3][1]) + inflated(got[4][1]) == block
    assert b"".join(inflated(p) if tag == "D" else p for tag, p in got) == text


def test_a_damaged_stream_raises_only_what_readers_catch():
    """Every way a damaged gzip fails to read (bad deflate data, bad CRC, cut short)
    is one of compress.data_errors(), which restores turn into "corrupt or truncated"."""
    source = gzip.compress(copy_rows(2000, seed=12))
    seen = set()
    for at in range(10, len(source), max(1, len(source) // 40)):
        damaged = bytearray(source)
        damaged[at] ^= 0x55
        for data in (bytes(damaged), source[:at]):
            try:
                reader = compress.decompressor(io.BytesIO(data), "gzip")
                while reader.read(1 << 16):
                    pass
            except compress.data_errors() as exc:
                seen.add(type(exc).__name__)
    assert len(seen) >= 2, seen  # at least a decode error and a cut-short stream
