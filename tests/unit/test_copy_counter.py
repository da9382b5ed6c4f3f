import random

from lifeboat.dump import CopyCounter

DUMP = (
    b"--\n-- PostgreSQL database dump\n--\n\nCREATE TABLE public.t (a text);\n"
    b"COPY public.t (a) FROM stdin;\nx\n\\\\.\nhello\\tworld\n\\.\n\n"
    b'COPY public."Empty Table" (id) FROM stdin;\n\\.\n\n'
    b"-- a comment mentioning COPY public.t (a) FROM stdin;\n"
    b'COPY "odd""schema".t2 (b, c) FROM stdin;\n1\t2\n3\t\\N\n\\.\n'
    b"--\n-- PostgreSQL database dump complete\n--\n\n"
)
EXPECTED = {"public.t": 3, 'public."Empty Table"': 0, '"odd""schema".t2': 2}


def feed_in_pieces(data, sizes):
    counter = CopyCounter()
    pos = 0
    for size in sizes:
        counter.feed(data[pos : pos + size])
        pos += size
    counter.feed(data[pos:])
    return counter


def test_whole_stream():
    counter = feed_in_pieces(DUMP, [])
    assert counter.rows == EXPECTED and counter.complete


def test_every_split_point_gives_the_same_counts():
    for cut in range(1, len(DUMP)):
        counter = feed_in_pieces(DUMP, [cut])
        assert counter.rows == EXPECTED, cut


def test_random_tiny_chunks():
    rng = random.Random(7)
    for _ in range(200):
        sizes = [rng.randint(1, 9) for _ in range(len(DUMP) // 3)]
        assert feed_in_pieces(DUMP, sizes).rows == EXPECTED


def test_truncated_inside_copy_is_incomplete():
    counter = feed_in_pieces(DUMP[: DUMP.index(b"hello") + 3], [])
    assert not counter.complete
