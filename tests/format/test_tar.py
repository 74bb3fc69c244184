"""fastgen_dm.format.tar: the header parser against tarfile, and a generated corpus of broken headers."""

import io
import pickle
import re
import tarfile

import pytest
import webdataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgen_dm.format.tar import ShardReadError, sample_members, scan_members, split_name, split_sample, walk_members
from fastgen_dm.index import index_shard

# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a/b/000001.latent.pth", ("a/b/000001", "latent.pth")),
        ("000001.JSON", ("000001", "json")),
        ("x.y/z/000001.tar.gz", ("x.y/z/000001", "tar.gz")),
        ("a/b.", ("a/b", "")),
        ("README", None),
        ("x.y/README", None),
        ("__key__", None),
        ("__meta__/x.txt", None),
        (".hidden.txt", None),
        ("dir/._000001.jpg", None),
    ],
)
def test_split_name(name, expected):
    assert split_name(name) == expected


def webdataset_split(name):
    """webdataset's own rule (base_plus_ext and the meta-file checks), hidden base names ignored."""
    base, ext = webdataset.tariterators.base_plus_ext(name)
    meta = re.match(r"__[^/]*__($|/)", name) or ("/" not in name and name.startswith("__") and name.endswith("__"))
    hidden = name.rsplit("/", 1)[-1].startswith(".")
    return None if base is None or meta or hidden else (base, ext.lower())


def test_split_name_matches_webdataset_except_hidden():
    names = ["__meta__", "x.y/", "x.y/000001.Latent.PTH", "README", "__x__/info.txt", "x.y/000001.", "a/b/c.d.e", "a.b/c", "/abs/000.x", "k.x/y"]
    for name in names:
        assert split_name(name) == webdataset_split(name), name


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab._/\n\u00e9", max_size=12))
def test_split_name_agrees_with_webdatasets_regexes(name):
    assert split_name(name) == webdataset_split(name)


def test_shard_read_error_pickles():
    err = pickle.loads(pickle.dumps(ShardReadError("s3://b/0.tar", 1024, "truncated")))
    assert (err.url, err.offset, str(err)) == ("s3://b/0.tar", 1024, "s3://b/0.tar: truncated (at byte 1024)")
    assert isinstance(err, ValueError)


# --- the parser agrees with tarfile on well-formed tars ------------------------------------------


def walked(data, scan=False):
    f = io.BytesIO(data)
    members = scan_members(f, "s.tar", len(data)) if scan else walk_members(f, "s.tar", len(data))
    return [(m.name, m.header_offset, m.data_offset, m.size, m.regular, m.next_offset) for m in members]


def tarfile_members(data):
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        infos = tf.getmembers()
        end = tf.offset
    nexts = [i.offset for i in infos[1:]] + [end]
    out = []
    for info, nxt in zip(infos, nexts):
        out.append((info.name, info.offset, info.offset_data, info.size, info.isreg(), nxt))
    return out


member_names = st.lists(
    st.text(alphabet="abc._/-\u00e9", min_size=1, max_size=60).map(lambda s: s.strip("/") or "x"), min_size=0, max_size=12
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=member_names,
    sizes=st.lists(st.integers(0, 1500), min_size=12, max_size=12),
    dirs=st.lists(st.booleans(), min_size=12, max_size=12),
    long_folder=st.sampled_from(["", "d" * 90 + "/", "e" * 120 + "/"]),
    fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
    mtime=st.sampled_from([0, 1700000000.5]),
)
def test_walk_agrees_with_tarfile(names, sizes, dirs, long_folder, fmt, mtime):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        for name, size, is_dir in zip(names, sizes, dirs):
            info = tarfile.TarInfo(long_folder + name)
            info.mtime = mtime
            if is_dir:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = size
                tf.addfile(info, io.BytesIO(bytes(size)))
    data = buf.getvalue()
    expected = tarfile_members(data)
    got = walked(data)
    # tarfile strips a directory's trailing slash; only regular members' names matter to samples.
    assert [m[:1] + m[1:] if m[4] else (m[0].rstrip("/"),) + m[1:] for m in got] == expected
    assert walked(data, scan=True) == got


def test_webdataset_shards_take_the_fast_path(tmp_path):
    buf = io.BytesIO()
    with webdataset.TarWriter(buf) as writer:
        for k in range(50):
            writer.write({"__key__": f"{k:06d}", "jpg": bytes(100), "json": b"{}"})
    data = buf.getvalue()
    assert walked(data, scan=True) == walked(data) == tarfile_members(data)
    keys = [key for key, _, _ in sample_members(scan_members(io.BytesIO(data), "s.tar", len(data)))]
    assert keys == [f"{k:06d}" for k in range(50) for _ in range(2)]


# --- a corpus of broken headers, generated field by field ----------------------------------------


def header(name=b"a.jpg", size=0, kind=b"0", checksum=None, prefix=b"", size_field=None):
    """A ustar header block; ``size_field`` replaces the size bytes, ``checksum`` the computed checksum."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    h[345 : 345 + len(prefix)] = prefix
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % (sum(h) if checksum is None else checksum)
    return bytes(h)


def member(name, data, kind=b"0"):
    return header(name, len(data), kind) + data + bytes(-len(data) % 512)


def pax(records: bytes):
    return header(b"././@PaxHeader", len(records), b"x") + records + bytes(-len(records) % 512)


GOOD = member(b"a.jpg", b"1" * 10) + member(b"a.json", b"{}") + member(b"b.jpg", b"2") + member(b"b.json", b"{}")  # samples a, b: 0..4096
END = bytes(1024)


def base256(value, width=12):
    return (b"\x80" if value >= 0 else b"\xff") + (value % 256 ** (width - 1)).to_bytes(width - 1, "big")


# Each case: (tar bytes, offset of the error, its message, samples a partial index keeps). The good
# samples a, b come first; the damage is in sample c's header, or in its data (then c is dropped).
CORPUS = {
    "negative base-256 size": (GOOD + header(b"c.jpg", size_field=base256(-5)) + END, 4096, "corrupt member header (negative size -5)", 1),
    "negative size that would not advance": (GOOD + header(b"c.jpg", size_field=base256(-512)) + END, 4096, "negative size -512", 1),
    "size past the end": (GOOD + header(b"c.jpg", 10**6) + bytes(512) + END, 4096, "member 'c.jpg' needs 1000448 bytes of data (with padding) but the file has 1536: truncated", 2),
    "base-256 size past the end": (GOOD + header(b"c.jpg", size_field=base256(2**60)) + END, 4096, "needs 1152921504606846976 bytes of data", 2),
    "bad checksum": (GOOD + header(b"c.jpg", 3, checksum=12345) + bytes(512) + END, 4096, "corrupt member header (bad checksum or format)", 1),
    "non-octal checksum": (GOOD + header(b"c.jpg", 3)[:148] + b"12x45\0 \0" + bytes(356) + END, 4096, "corrupt member header (bad checksum or format)", 1),
    "non-octal size": (GOOD + header(b"c.jpg", size_field=b"0000000009x\0") + END, 4096, "corrupt member header (size field b'0000000009x\\x00' is not an octal number)", 1),
    "truncated header": (GOOD + header(b"c.jpg", 3)[:100], 4096, "truncated member header (100 of 512 bytes)", 1),
    "sparse member": (GOOD + header(b"c.jpg", 0, kind=b"S") + END, 4096, "member 'c.jpg' is a sparse file; shards cannot hold sparse files", 1),
    "pax sparse records": (GOOD + pax(b"22 GNU.sparse.major=1\n") + member(b"c.jpg", b"x") + END, 4096, "sparse file (pax GNU.sparse records)", 1),
    "pax record longer than its data": (GOOD + pax(b"99 path=x.jpg\n") + member(b"c.jpg", b"x") + END, 4096, "corrupt pax header (record at 0 of its data claims 99 bytes)", 1),
    "pax record of length 0": (GOOD + pax(b"0 a=\n") + member(b"c.jpg", b"x") + END, 4096, "claims 0 bytes", 1),
    "pax record without length": (GOOD + pax(b"path=x\n") + member(b"c.jpg", b"x") + END, 4096, "corrupt pax header (record at 0 of its data has no decimal length)", 1),
    "pax record without '='": (GOOD + pax(b"10 pathx\n\n") + member(b"c.jpg", b"x") + END, 4096, "is not 'key=value'", 1),
    "pax record not ending in a newline": (GOOD + pax(b"12 path=x.jpX") + member(b"c.jpg", b"x") + END, 4096, "claims 12 bytes", 1),
    "pax size record not a number": (GOOD + pax(b"12 size=1x2\n") + member(b"c.jpg", b"x") + END, 4096, "corrupt pax header ('size' record b'1x2' is not a decimal number)", 1),
    "pax size record past the end": (GOOD + pax(b"16 size=9999999\n") + member(b"c.jpg", b"x") + END, 4096, "member 'c.jpg' needs 10000384 bytes", 2),
    "pax header data past the end": (GOOD + header(b"././@PaxHeader", 4096, b"x") + bytes(512), 4096, "extended header of 4096 bytes runs past the end of the file", 1),
    "pax header too large to read": (GOOD + header(b"././@PaxHeader", 2 << 20, b"x") + bytes(2 << 20) + END, 4096, "extended header of 2097152 bytes is over the limit of 1048576 bytes", 1),
    "pax global header renaming every member": (GOOD + header(b"g", 12, b"g") + b"12 path=x.y\n" + bytes(500) + member(b"c.jpg", b"x") + END, 4096, "pax global header sets 'path' or 'size'", 1),
    "long name without its member": (GOOD + header(b"././@LongLink", 6, b"L") + b"c.jpg\0" + bytes(506) + END, 4096, "extended header followed by the end-of-archive block, without its member", 1),
    "long name at the end of the file": (GOOD + header(b"././@LongLink", 6, b"L") + b"c.jpg\0" + bytes(506), 4096, "extended header at the end of the file, without its member", 1),
    "garbage first header": (b"hello, world\n" * 100, 0, "not a tar file, or a corrupt first member header (bad checksum or format)", 0),
    "negative size in the first header": (header(b"a.jpg", size_field=base256(-1)) + END, 0, "not a tar file, or a corrupt first member header (negative size -1)", 0),
}

# Well-formed but unusual: each must index to exactly these keys, with no error.
GOOD_CORPUS = {
    "zero-size members": (b"".join(member(b"%04d.txt" % k, b"") for k in range(300)) + END, [f"{k:04d}" for k in range(300)]),
    "zero-size pax and long-name headers": (pax(b"") + member(b"a.jpg", b"1") + header(b"././@LongLink", 0, b"L") + member(b"b.jpg", b"2") + END, ["a"]),
    "directory with a size field": (header(b"d/", 10**6, b"5") + member(b"d/a.jpg", b"1") + END, ["d/a"]),
    "ustar prefix": (header(b"a.jpg", 1, prefix=b"x" * 150) + b"1" + bytes(511) + END, ["x" * 150 + "/a"]),
    "missing end blocks": (GOOD, ["a", "b"]),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", list(CORPUS))
def test_broken_header_ends_the_walk_with_its_offset(tmp_path, case):
    data, offset, message, partial_count = CORPUS[case]
    path = tmp_path / "bad.tar"
    path.write_bytes(data)
    for walk in (walk_members, scan_members):
        with pytest.raises(ShardReadError, match=re.escape(message)) as info:
            list(walk(io.BytesIO(data), str(path), len(data)))
        assert info.value.offset == offset, walk.__name__
    with pytest.raises(ShardReadError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        index_shard(str(path))
    partial = index_shard(str(path), partial_ok=True)
    assert partial.count == partial_count and partial.truncated_at == offset
    # A sample cut by the damage may have had more members after it: only those before it count.
    assert partial.keys == ("a", "b")[:partial_count]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", list(GOOD_CORPUS))
def test_unusual_but_well_formed_headers(tmp_path, case):
    data, keys = GOOD_CORPUS[case]
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    assert walked(data, scan=True) == walked(data)
    index = index_shard(str(path))
    assert index.keys == keys and index.truncated_at is None


@pytest.mark.timeout(10)
def test_old_style_signed_checksums_are_accepted():
    h = bytearray(header(b"\xe9.jpg", 1))
    signed = sum(b - 256 if b >= 128 else b for b in h[:148] + b"        " + h[156:])
    h[148:156] = b"%06o\0 " % signed
    data = bytes(h) + b"1" + bytes(511) + END
    assert [m[0] for m in walked(data)] == [b"\xe9.jpg".decode("utf-8", "surrogateescape")]
    assert walked(data, scan=True) == walked(data)


@pytest.mark.timeout(10)
def test_compressed_tars_are_recognised():
    import gzip

    data = gzip.compress(GOOD + END)
    for walk in (walk_members, scan_members):
        with pytest.raises(ShardReadError, match=re.escape("s.tar: gzip-compressed tar; byte-range reads need an uncompressed tar")):
            list(walk(io.BytesIO(data), "s.tar", len(data)))


@pytest.mark.timeout(10)
def test_split_sample_refuses_a_broken_header():
    data = GOOD[:1024] + header(b"a.json", size_field=base256(-3))  # a.jpg, then a.json's header at 1024
    with pytest.raises(ShardReadError, match=re.escape("s.tar: corrupt member header (negative size -3) (at byte 5120)")):
        split_sample(data, "s.tar", 4096)
