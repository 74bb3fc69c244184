"""One member never exhausts memory: zip bombs, lying zip headers, links out of a folder, special files.

The corpus is generated here: a 1 MB zip member that inflates to 1 GiB (honest and lying
headers), symlinks to ``/dev/zero`` and out of the folder, a FIFO, a directory named like an
image, an oversized file. Each case asserts its exact outcome: a counted skip naming the member,
or a one-line error.
"""

import io
import json
import os
import re
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import fsspec
import PIL.Image
import pytest
from helpers import random_images, write_zip

from fastgen_dm import ImageFolderDataModule
from fastgen_dm.read import EDMReader
from fastgen_dm.storage import (
    DEFAULT_MAX_MEMBER_BYTES,
    UnsafeMemberError,
    check_max_member_bytes,
    read_folder_member,
    read_zip_member,
)

GIB = 1 << 30


def deflate(data):
    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush()


def zeros_bomb(size=GIB):
    """(raw deflate stream, crc32) of ``size`` zero bytes, built from one MiB compressed once (about 1 KB per MiB)."""
    chunk = bytes(1 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(chunk) + co.flush(zlib.Z_FULL_FLUSH)  # a full flush: every MiB compresses alike
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return block * (size >> 20) + co.flush(), crc


def write_raw_zip(path, members):
    """A zip of deflated ``members``: (name, raw deflate bytes, crc32, declared uncompressed size)."""
    out, central = bytearray(), bytearray()
    for name, data, crc, size in members:
        encoded, offset = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0) + encoded + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0, 0, 0, 0, 0, offset)
        central += encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    Path(path).write_bytes(bytes(out + central + end))
    return str(path)


@pytest.fixture(scope="module")
def bomb():
    return zeros_bomb()


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory, bomb):
    """Six 8x8 PNG items; item 2 inflates to 1 GiB (declared), item 4 declares 1000 bytes and inflates to 1 GiB."""
    folder = tmp_path_factory.mktemp("bomb")
    with zipfile.ZipFile(write_zip(folder / "good.zip", random_images(6, size=8), labels=[0, 1, 2, 0, 1, 2])) as zf:
        members = [(name, zf.read(name)) for name in zf.namelist()]
    data, crc = bomb
    raw = []
    for name, content in members:
        if name == "00000/img00000002.png":
            raw.append((name, data, crc, GIB))
        elif name == "00000/img00000004.png":
            raw.append((name, data, crc, 1000))
        else:
            raw.append((name, deflate(content), zlib.crc32(content), len(content)))
    return write_raw_zip(folder / "bomb.zip", raw)


# -- zip members --------------------------------------------------------------------------------


def test_the_generated_bomb_is_a_1_mb_member_that_inflates_to_1_gib(bomb_zip):
    with zipfile.ZipFile(bomb_zip) as zf:
        info = zf.getinfo("00000/img00000002.png")
        assert info.compress_size < 1.1e6 and info.file_size == GIB


def test_a_member_declared_over_the_cap_is_refused_unread(bomb_zip):
    with zipfile.ZipFile(bomb_zip) as zf:
        message = f"{bomb_zip}: member '00000/img00000002.png' holds {GIB} bytes, over max_member_bytes={DEFAULT_MAX_MEMBER_BYTES}; raise max_member_bytes if such members are expected"
        with pytest.raises(UnsafeMemberError, match=f"^{re.escape(message)}$"):
            read_zip_member(zf, "00000/img00000002.png", max_bytes=DEFAULT_MAX_MEMBER_BYTES, source=bomb_zip)


def test_a_lying_header_cannot_inflate_past_its_declared_size(bomb_zip):
    tracemalloc.start()
    try:
        with zipfile.ZipFile(bomb_zip) as zf, pytest.raises(zipfile.BadZipFile, match="Bad CRC-32 for file '00000/img00000004.png'"):
            read_zip_member(zf, "00000/img00000004.png", max_bytes=DEFAULT_MAX_MEMBER_BYTES, source=bomb_zip)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


def test_the_cap_is_inclusive_and_configurable(tmp_path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", b"x" * 100)
    with zipfile.ZipFile(path) as zf:
        assert read_zip_member(zf, "a.npy", max_bytes=100, source="x.zip") == b"x" * 100
        with pytest.raises(UnsafeMemberError, match=re.escape("x.zip: member 'a.npy' holds 100 bytes, over max_member_bytes=99")):
            read_zip_member(zf, "a.npy", max_bytes=99, source="x.zip")


def test_zip_bombs_are_counted_skips_in_bounded_memory(bomb_zip, tmp_path, caplog):
    skipped = tmp_path / "skipped"
    dm = ImageFolderDataModule(bomb_zip, batch_size=6, num_workers=0, shuffle=False, max_skip_fraction=0.5, skipped_index_dir=str(skipped))
    dm.setup("fit")
    tracemalloc.start()
    try:
        ids = [i for batch in dm.train_dataloader() for i in batch["idx"].tolist()]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ids == [0, 1, 3, 5]
    assert peak < 64 << 20  # not the 1 GiB (or 2 GiB) that reading the members would take
    assert [json.loads(p.read_text()) for p in skipped.glob("*.json")] == [{"bomb.zip": ["00000/img00000002.png", "00000/img00000004.png"]}]
    assert "UnsafeMemberError" in caplog.text and "BadZipFile: Bad CRC-32" in caplog.text


def test_max_member_bytes_is_an_argument_validated_early(demo_zip):
    with pytest.raises(ValueError, match=re.escape("max_member_bytes must be an integer >= 1 (bytes), got 0; e.g. max_member_bytes=268435456 (256 MiB)")):
        ImageFolderDataModule(demo_zip, max_member_bytes=0)
    with pytest.raises(ValueError, match=r"demo\.zip: member 'dataset\.json' holds \d+ bytes, over max_member_bytes=10;"):
        ImageFolderDataModule(demo_zip, max_member_bytes=10, num_workers=0).setup("fit")
    assert check_max_member_bytes(DEFAULT_MAX_MEMBER_BYTES) == 256 << 20


# -- folder members -----------------------------------------------------------------------------


def png(seed):
    buf = io.BytesIO()
    PIL.Image.fromarray(random_images(1, size=8, seed=seed)[0]).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def hostile_folder(tmp_path):
    """An EDM folder of 8 items: 0, 1 and 7 are plain PNGs, 6 links to item 0 (inside: fine); the rest are hostile."""
    root = tmp_path / "dataset"
    items = root / "00000"
    items.mkdir(parents=True)
    outside = tmp_path / "outside.png"
    outside.write_bytes(png(99))
    for i in (0, 1, 7):
        (items / f"img{i:08d}.png").write_bytes(png(i))
    (items / "img00000002.png").symlink_to("/dev/zero")
    (items / "img00000003.png").symlink_to(outside)
    os.mkfifo(items / "img00000004.png")
    (items / "img00000005.png").write_bytes(png(5) + bytes(5000))  # over a 4 KB cap
    (items / "img00000006.png").symlink_to(items / "img00000000.png")
    return root


def member(i):
    return f"00000/img{i:08d}.png"


@pytest.mark.timeout(60)  # a FIFO read would block forever
@pytest.mark.parametrize(
    ("item", "message"),
    [
        (2, "member '00000/img00000002.png' resolves to /dev/zero, outside the dataset folder; refusing to read it (copy the file into the folder instead of linking to it)"),
        (3, "member '00000/img00000003.png' resolves to {outside}, outside the dataset folder"),
        (4, "member '00000/img00000004.png' is not a regular file (mode prw-r--r--); refusing to read it"),
        (5, "member '00000/img00000005.png' holds {size} bytes, over max_member_bytes=4096"),
    ],
    ids=["link to /dev/zero", "link out of the folder", "fifo", "over the cap"],
)
def test_hostile_folder_members_are_refused_unread(hostile_folder, item, message):
    fs = fsspec.filesystem("file")
    size = (hostile_folder / member(5)).stat().st_size
    expected = f"{hostile_folder}: " + message.format(outside=hostile_folder.parent / "outside.png", size=size)
    with pytest.raises(UnsafeMemberError, match=f"^{re.escape(expected)}"):
        read_folder_member(fs, str(hostile_folder), member(item), max_bytes=4096, source=str(hostile_folder))


def test_a_directory_named_like_an_image_is_not_a_regular_file(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(UnsafeMemberError, match=re.escape("member 'd.png' is not a regular file (mode drwx")):
        read_folder_member(fsspec.filesystem("file"), str(tmp_path), "d.png", max_bytes=4096, source="ds")


def test_a_link_inside_the_folder_is_read(hostile_folder):
    reader = EDMReader(str(hostile_folder), is_zip=False, max_member_bytes=4096)
    assert reader.read(member(6)) == reader.read(member(0)) == png(0)


@pytest.mark.timeout(60)
def test_hostile_folder_members_are_counted_skips(hostile_folder, tmp_path):
    skipped = tmp_path / "skipped"
    dm = ImageFolderDataModule(str(hostile_folder), batch_size=8, num_workers=0, shuffle=False, use_labels=False,
                               max_skip_fraction=0.6, max_member_bytes=4096, skipped_index_dir=str(skipped))  # fmt: skip
    dm.setup("fit")
    assert [i for batch in dm.train_dataloader() for i in batch["idx"].tolist()] == [0, 1, 6, 7]
    assert [json.loads(p.read_text()) for p in skipped.glob("*.json")] == [{"dataset": [member(i) for i in (2, 3, 4, 5)]}]


@pytest.mark.timeout(60)
def test_a_labels_file_linked_to_dev_zero_is_a_one_line_error(hostile_folder):
    (hostile_folder / "dataset.json").symlink_to("/dev/zero")
    with pytest.raises(UnsafeMemberError, match=re.escape(f"{hostile_folder}: member 'dataset.json' resolves to /dev/zero, outside the dataset folder")):
        ImageFolderDataModule(str(hostile_folder), num_workers=0).setup("fit")


def test_remote_folder_members_are_read_with_one_bounded_request():
    fs = fsspec.filesystem("memory")
    fs.pipe("/bounded-test/00000/img00000000.png", b"x" * 5000)
    assert read_folder_member(fs, "/bounded-test", member(0), max_bytes=5000, source="memory://bounded-test") == b"x" * 5000
    with pytest.raises(UnsafeMemberError, match=re.escape("memory://bounded-test: member '00000/img00000000.png' holds more than 4096 bytes, over max_member_bytes=4096")):
        read_folder_member(fs, "/bounded-test", member(0), max_bytes=4096, source="memory://bounded-test")
