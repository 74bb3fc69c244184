"""Video backends: the same frames as sequential decoding, counts from the content, seeks, broken files, timeouts."""

import io
import re
import shutil
import subprocess
import threading

import av
import numpy as np
import pytest
import torch

import fastgen_dm.decode.video as video_mod
from fastgen_dm.decode.video import (
    BACKENDS,
    DecodeTimeoutError,
    FramesUnavailableError,
    VideoDecodeError,
    open_video,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg CLI encodes the test videos")

W, H = 64, 48


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


#: A moving colour ramp at 24 fps: every frame differs from its neighbours (N is the frame number).
PATTERN = f"nullsrc=size={W}x{H}:rate=24,geq=r='mod(X*4+N*7,256)':g='mod(Y*5+N*13,256)':b='mod(N*29+X+Y,256)'"


def encode(path, frames, codec_args, extra=()):
    """``frames`` frames of ``PATTERN``, written by the ffmpeg CLI; returns the file's bytes."""
    ffmpeg("-f", "lavfi", "-i", PATTERN, "-frames:v", frames, *codec_args, *extra, path)
    return path.read_bytes()


def encode_vfr(path, frames=40):
    """h264 with B-frames and irregular frame durations (20 to 100 ms), written with PyAV."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1000)  # time base 1 ms
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"g": "10", "bf": "2"}
        pts = 0
        for i in range(frames):
            img = np.zeros((H, W, 3), np.uint8)
            img[:] = ((i * 6) % 256, (i * 37) % 256, 255 - (i * 6) % 256)
            img[(i % 6) * 8 : (i % 6) * 8 + 8, (i % 8) * 8 : (i % 8) * 8 + 8] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = pts
            pts += int(rng.choice([20, 41, 67, 100]))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def zero_tail(data, packets):
    """The file with the payload of its last ``packets`` video packets zeroed: every packet is still
    there (so counted), but they do not decode."""
    data = bytearray(data)
    with av.open(io.BytesIO(bytes(data))) as c:
        spans = sorted((p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size)
    for pos, size in spans[-packets:]:
        data[pos : pos + size] = bytes(size)
    return bytes(data)


def sequential(data):
    """Every frame PyAV decodes from the start, in order, as uint8 [N, H, W, 3] (stops at damage)."""
    frames = []
    with av.open(io.BytesIO(data)) as c:
        try:
            for frame in c.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError:
            pass
    return np.stack(frames)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    h264 = ["-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "12"]  # B-frames (x264 default) and 4 keyframes
    out = {
        "h264.mp4": encode(d / "h264.mp4", 48, h264),
        "vp9.webm": encode(d / "vp9.webm", 36, ["-pix_fmt", "yuv420p", "-c:v", "libvpx-vp9", "-g", "12", "-deadline", "realtime"]),
        "mjpeg.avi": encode(d / "mjpeg.avi", 30, ["-pix_fmt", "yuvj420p", "-c:v", "mjpeg"]),
        "h264.mov": encode(d / "h264.mov", 40, h264),
        "vfr.mp4": encode_vfr(d / "vfr.mp4"),
    }
    long = encode(d / "long.mp4", 240, h264)
    faststart = encode(d / "faststart.mp4", 96, h264, ["-movflags", "+faststart"])
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", d / "audio.mp4")
    broken = {
        "empty": b"",
        "audio-only.mp4": (d / "audio.mp4").read_bytes(),
        "garbage": np.random.default_rng(1).bytes(5000),
        "no-moov.mp4": out["h264.mp4"][: len(out["h264.mp4"]) // 2],  # moov is written last: cut off
    }
    return {"ok": out, "long": long, "faststart": faststart, "broken": broken}


@pytest.fixture(scope="module")
def references(videos):
    return {name: sequential(data) for name, data in videos["ok"].items()}


CONTAINERS = ["h264.mp4", "vp9.webm", "mjpeg.avi", "h264.mov", "vfr.mp4"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CONTAINERS)
def test_frames_match_sequential_decoding_exactly(videos, references, name, backend):
    data, ref = videos["ok"][name], references[name]
    assert all(not np.array_equal(a, b) for a, b in zip(ref[:-1], ref[1:]))  # frames are distinguishable
    rng = np.random.default_rng(0)
    with open_video(data, backend, timeout_s=30) as video:
        assert video.num_frames == len(ref)
        assert video.fps > 0
        for _ in range(4):  # random picks, unsorted, with repeats, then a consecutive clip from a random start
            picks = rng.integers(0, len(ref), size=7).tolist() + [0, len(ref) - 1]
            start = int(rng.integers(0, len(ref) - 8))
            for indices in (picks, list(range(start, start + 8))):
                frames = video.get_frames(indices)
                assert frames.dtype == torch.uint8 and frames.shape == (len(indices), H, W, 3)
                np.testing.assert_array_equal(frames.numpy(), ref[indices], err_msg=f"{name} {backend} {indices}")


def test_fps_of_a_constant_rate_video(videos):
    for backend in BACKENDS:
        with open_video(videos["ok"]["h264.mp4"], backend) as video:
            assert video.fps == pytest.approx(24.0, rel=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_indices_are_refused(videos, backend):
    with open_video(videos["ok"]["h264.mp4"], backend) as video:
        with pytest.raises(IndexError, match=re.escape("frame indices must be in [0, 48), got 0..48")):
            video.get_frames([0, 48])
        with pytest.raises(IndexError, match="at least one index"):
            video.get_frames([])


def test_pyav_seeks_to_the_clip_instead_of_decoding_from_the_start(videos):
    ref = sequential(videos["long"])
    with open_video(videos["long"], "pyav") as video:
        assert video.num_frames == 240
        frames = video.get_frames(range(220, 236))
        np.testing.assert_array_equal(frames.numpy(), ref[220:236])
        # keyframes every 12 frames: at most one GOP before the clip, plus the decoder's reorder delay
        assert video.frames_decoded < 16 + 12 + 8, video.frames_decoded
        decoded = video.frames_decoded
        video.get_frames([3, 130, 200])  # far apart: one seek each
        assert video.frames_decoded - decoded < 3 * (12 + 8)


def test_counts_come_from_the_packets_present_not_the_header(videos):
    """A faststart mp4 cut short: its header (moov, written first) promises 96 frames that are not there."""
    data = videos["faststart"][: len(videos["faststart"]) * 6 // 10]
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].frames == 96  # what the header says
    ref = sequential(data)
    assert len(ref) < 96
    for backend in BACKENDS:
        try:
            video = open_video(data, backend, timeout_s=30)
        except VideoDecodeError:  # decord refuses a file whose packets run past its end
            assert backend == "decord"
            continue
        with video:
            assert video.num_frames < 96
            usable = min(video.num_frames, len(ref)) - 1
            np.testing.assert_array_equal(video.get_frames([0, usable // 2, usable]).numpy(), ref[[0, usable // 2, usable]])
            try:  # the last counted packet is cut: it may not decode; then the count drops
                video.get_frames([video.num_frames - 1])
            except FramesUnavailableError as err:
                assert err.num_frames == video.num_frames < 96


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_that_do_not_decode_lower_the_count(videos, backend):
    """Every packet is present (so counted) but the last 24 do not decode: asking for them never
    hangs; it raises with a lower count, and the frames before still decode exactly."""
    data = zero_tail(videos["faststart"], 24)
    ref = sequential(data)  # 70 or so: decoding stops at the first zeroed packet, before the last reordered frames
    assert 60 < len(ref) <= 72
    with open_video(data, backend, timeout_s=30) as video:
        assert video.num_frames == 96
        with pytest.raises(FramesUnavailableError) as caught:
            video.get_frames([60, 80, 95])
        assert caught.value.num_frames == video.num_frames <= 80
        # decord's decoder reads ahead on a thread, so damage can fail a request that stops
        # short of it, and its lowered count can be conservative; the others find the frame
        if backend != "decord":
            assert video.num_frames >= len(ref)
            usable = [0, len(ref) // 2, len(ref) - 1]
            np.testing.assert_array_equal(video.get_frames(usable).numpy(), ref[usable])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["empty", "audio-only.mp4", "garbage", "no-moov.mp4"])
def test_broken_files_raise_video_decode_error(videos, name, backend):
    with pytest.raises(VideoDecodeError):
        open_video(videos["broken"][name], backend, timeout_s=30)


def test_an_empty_or_unknown_input_says_what_is_wrong(videos):
    with pytest.raises(VideoDecodeError, match=re.escape("the video member is empty (0 bytes)")):
        open_video(b"", "pyav")
    with pytest.raises(VideoDecodeError, match="no video stream"):
        open_video(videos["broken"]["audio-only.mp4"], "pyav")
    with pytest.raises(ValueError, match=re.escape("video backend 'opencv' is unknown; use one of ['decord', 'torchcodec', 'pyav']")):
        open_video(videos["ok"]["h264.mp4"], "opencv")


def test_a_stuck_decode_times_out_and_leaves_its_thread_behind(videos, monkeypatch):
    release = threading.Event()

    def stuck(self, indices):
        release.wait(60)  # a decoder that never returns (until the test lets it go)
        return torch.zeros((len(indices), H, W, 3), dtype=torch.uint8)

    monkeypatch.setattr(video_mod._DecordSource, "_decode", stuck)
    try:
        with open_video(videos["ok"]["h264.mp4"], "decord", timeout_s=0.2) as video:
            with pytest.raises(DecodeTimeoutError, match=r"took longer than decode_timeout_s=0.2"):
                video.get_frames([1, 2])
            with pytest.raises(VideoDecodeError, match="unusable"):  # the abandoned thread may still hold it
                video.get_frames([3])
    finally:
        release.set()


def test_pyav_checks_its_deadline_between_packets(videos):
    """Beyond the guard thread, PyAV's own loop stops at the deadline (so its thread does not run on)."""
    with open_video(videos["long"], "pyav", timeout_s=30) as video:
        video.timeout_s = 1e-9  # passed before the first packet is read
        with pytest.raises(DecodeTimeoutError, match="deadline"):
            video._decode([200])  # the loop itself, without the guard thread
        assert video.frames_decoded == 0
