"""A video's (width, height, frames) from its ISO-BMFF boxes: moov anywhere, malformed input is no size."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.format.mp4 import HEAD_BYTES, video_dims

PATTERN = "nullsrc=size={w}x{h}:rate=24,geq=r='mod(X*4+N*7,256)':g='mod(Y*5+N*13,256)':b='mod(N*29+X+Y,256)'"


def encode(path, frames, size=(64, 48), args=("-pix_fmt", "yuv420p", "-c:v", "libx264")):
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", PATTERN.format(w=size[0], h=size[1]), "-frames:v", str(frames), *args, str(path)],
        check=True,
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp4")
    return {
        "moov_last": encode(d / "a.mp4", 30),
        "moov_first": encode(d / "b.mp4", 17, (48, 64), ("-pix_fmt", "yuv420p", "-c:v", "libx264", "-movflags", "+faststart")),
        "mov": encode(d / "c.mov", 20, (80, 48), ("-c:v", "mpeg4")),
        "long": encode(d / "d.mp4", 240, (64, 48), ("-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "240")),
        "webm": encode(d / "e.webm", 10, (64, 48), ("-c:v", "libvpx")),
    }


def dims(data, reads=None):
    def read(start, end):
        if reads is not None:
            reads.append((start, end))
        return data[start:end]

    return video_dims(read, len(data))


def test_sizes_and_frame_counts_from_the_boxes_wherever_the_moov_is(videos):
    assert dims(videos["moov_last"]) == (64, 48, 30)
    assert dims(videos["moov_first"]) == (48, 64, 17)
    assert dims(videos["mov"]) == (80, 48, 20)
    assert dims(videos["webm"]) is None  # not ISO-BMFF


def test_the_media_data_is_never_read(videos):
    data = videos["long"]
    reads = []
    assert dims(data, reads) == (64, 48, 240)
    read = sum(end - start for start, end in reads)
    assert len(data) > 4 * HEAD_BYTES and read < len(data) / 2  # the head, mdat's header, the moov
    moov = data.index(b"moov") - 4
    assert all(end <= HEAD_BYTES or start >= moov - 16 for start, end in reads)


def test_cut_or_corrupted_files_are_no_size(videos):
    data = videos["moov_last"]
    assert dims(data[: len(data) // 2]) is None  # the moov (written last) is cut off
    assert dims(b"") is None and dims(b"\x00" * 64) is None
    broken = bytearray(data)
    at = data.index(b"moov") - 4
    broken[at : at + 4] = (10**9).to_bytes(4, "big")  # a moov claiming more than the file
    assert dims(bytes(broken)) is None


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(max_size=400), at=st.integers(0, 3000))
def test_no_bytes_make_it_raise(videos, noise, at):
    data = videos["moov_first"]
    for candidate in (noise, data[:at] + noise + data[at + len(noise) :], b"\x00\x00\x00\x08moov" + noise):
        result = dims(candidate)
        assert result is None or all(isinstance(v, int) and v >= 0 for v in result)


def box(kind, body=b""):
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def test_a_64_bit_box_size_is_followed_and_bombs_are_no_size_read_in_bounded_bytes(videos):
    data = videos["moov_last"]
    mdat = data.index(b"mdat") - 4
    assert data[mdat - 8 : mdat] == box(b"free")  # ffmpeg's room to widen the mdat header
    mdat_bytes = int.from_bytes(data[mdat : mdat + 4], "big")
    wide = data[: mdat - 8] + (1).to_bytes(4, "big") + b"mdat" + (mdat_bytes + 8).to_bytes(8, "big") + data[mdat + 8 :]
    assert dims(wide) == (64, 48, 30)  # the same boxes, the mdat with a 64-bit size
    deep = box(b"trak")
    for _ in range(50):
        deep = box(b"trak", deep)
    many = b"".join(box(b"free") for _ in range(20_000))
    huge = box(b"ftyp", b"isom") + (200 << 20).to_bytes(4, "big") + b"moov"  # claims 200 MiB
    for bomb, size in [(box(b"moov", deep), None), (many + box(b"moov"), None), (huge, 300 << 20)]:
        reads = []
        assert video_dims(lambda a, b, bomb=bomb, reads=reads: reads.append(b - a) or bomb[a:b].ljust(b - a, b"\0"), size or len(bomb)) is None
        assert sum(reads) < 1 << 20  # never the 200 MiB moov; the free boxes' headers one at a time


def test_a_frame_count_past_int32_is_no_size_in_the_index(videos, tmp_path):
    from helpers import write_wds

    from fastgen_dm.index.build import index_shard

    data = bytearray(videos["moov_first"])
    count_at = data.index(b"stsz") + 4 + 8  # version and flags, sample size, then the count
    data[count_at : count_at + 4] = (3_000_000_000).to_bytes(4, "big")
    assert dims(bytes(data)) == (48, 64, 3_000_000_000)
    write_wds(tmp_path / "00000.tar", [{"__key__": "a", "mp4": bytes(data)}, {"__key__": "b", "mp4": videos["moov_first"]}])
    assert index_shard(str(tmp_path / "00000.tar"), sizes_of="mp4").sizes.tolist() == [[0, 0, 0], [48, 64, 17]]


def test_without_a_sample_size_box_the_frames_are_the_sum_of_the_time_to_sample_counts(videos):
    data = videos["long"].replace(b"stsz", b"skip")  # no stsz: the stts entries count the samples
    assert dims(data) == (64, 48, 240)
