"""Milliseconds per clip of each video backend, against PyAV decoding from the start.

Two h264 videos (default 5 s and 20 s at 24 fps, 832x480, a keyframe every 2 s) are encoded
with the ffmpeg CLI in a temporary folder. From each, the same clips (default 8 of 81 frames,
evenly spaced from the first frame to the last possible start) are decoded by every backend through
``fastgen_dm.decode.video.open_video`` (opening the video for each clip, as the DataModule
does), and by the baseline: PyAV decoding every frame from the start up to the clip's end.
Every backend's frames are checked against the baseline's, bit for bit.

The printed ratio ``long/short`` is a backend's cost per clip on the long video over the short
one: close to 1 when the cost does not grow with the video's length (it seeks), about
``(mean start + clip) / (mean start' + clip)`` when it decodes from the start.

    python benchmarks/bench_video.py [--durations 5,20] [--size 832x480] [--frames 81] [--clips 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from fastgen_dm.decode.video import BACKENDS, open_video


def encode(path: Path, seconds: float, width: int, height: int, fps: int, gop: int) -> bytes:
    """testsrc2 with light temporal noise (a bitrate like camera footage's, not a flat test card), h264 yuv420p."""
    source = f"testsrc2=size={width}x{height}:rate={fps},noise=alls=6:allf=t"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", str(gop), str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


def pyav_from_start(data: bytes, start: int, frames: int) -> np.ndarray:
    """The baseline: decode from frame 0, keep frames [start, start + frames)."""
    out = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for i, frame in enumerate(container.decode(stream)):
            if i >= start:
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == frames:
                    break
    return np.stack(out)


def with_backend(backend: str):
    def decode(data: bytes, start: int, frames: int) -> np.ndarray:
        with open_video(data, backend) as video:
            return video.get_frames(range(start, start + frames)).numpy()

    return decode


def measure(methods: dict, videos: dict, frames: int, repeats: int) -> dict[str, dict[str, float]]:
    """Mean over clips of the fastest of ``repeats`` runs, per method and video, in seconds.

    Each method first decodes one untimed clip (library start-up). Then methods and videos take
    turns clip by clip, in a rotating order, so a busy machine slows them alike. Each clip is
    checked against the baseline's frames.
    """
    names, labels = list(methods), list(videos)
    reference = {label: [pyav_from_start(data, start, frames) for start in starts] for label, (data, starts) in videos.items()}
    for name in names:  # warm-up
        data, starts = videos[labels[0]]
        methods[name](data, starts[0], frames)
    best = {name: {label: [float("inf")] * len(videos[label][1]) for label in labels} for name in names}
    turns = [(label, k) for k in range(max(len(s) for _, s in videos.values())) for label in labels if k < len(videos[label][1])]
    for rep in range(repeats):
        for t, (label, k) in enumerate(turns):
            data, starts = videos[label]
            shift = (t + rep) % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                clip = methods[name](data, starts[k], frames)
                elapsed = time.perf_counter() - t0
                if not np.array_equal(clip, reference[label][k]):
                    raise AssertionError(f"{name}: the clip at frame {starts[k]} of the {label} video differs from sequential decoding")
                best[name][label][k] = min(best[name][label][k], elapsed)
    return {name: {label: statistics.mean(times) for label, times in per.items()} for name, per in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--durations", default="5,20", help="seconds of the short and the long video")
    parser.add_argument("--size", default="832x480", help="WIDTHxHEIGHT of the videos (the clip's size)")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--gop", type=int, default=48, help="frames between keyframes")
    parser.add_argument("--frames", type=int, default=81, help="frames per clip")
    parser.add_argument("--clips", type=int, default=8, help="clips per video")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=2, help="runs per clip; the fastest counts")
    args = parser.parse_args()
    short_s, long_s = (float(s) for s in args.durations.split(","))
    width, height = (int(v) for v in args.size.lower().split("x"))
    backends = [b for b in args.backends.split(",") if b]

    videos = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds in (("short", short_s), ("long", long_s)):
            data = encode(Path(tmp) / f"{label}.mp4", seconds, width, height, args.fps, args.gop)
            total = int(round(seconds * args.fps))
            if total < args.frames:
                raise SystemExit(f"a {seconds:g} s video at {args.fps} fps has {total} frames, fewer than --frames {args.frames}")
            starts = np.linspace(0, total - args.frames, args.clips).round().astype(int).tolist()  # first to last clip
            print(f"{label}: {seconds:g} s, {total} frames {width}x{height}, {len(data) / 1e6:.1f} MB; clip starts {starts}", flush=True)
            videos[label] = (data, starts)
    methods = {"pyav from start (baseline)": pyav_from_start, **{b: with_backend(b) for b in backends}}
    rows = measure(methods, videos, args.frames, args.repeats)

    print(f"\nms per clip of {args.frames} frames (mean over {args.clips} clips of the best of {args.repeats}; frames identical to the baseline's)")
    print(f"{'decoder':28s} {f'{short_s:g} s':>9s} {f'{long_s:g} s':>9s} {'long/short':>11s} {'x faster than baseline (long)':>31s}")
    base_long = rows["pyav from start (baseline)"]["long"]
    for name, row in rows.items():
        print(
            f"{name:28s} {row['short'] * 1e3:9.1f} {row['long'] * 1e3:9.1f} {row['long'] / row['short']:11.2f} "
            f"{base_long / row['long']:31.2f}"
        )
    fastest = min((name for name in rows if name in backends), key=lambda n: rows[n]["short"] + rows[n]["long"])
    print(f"\nfastest backend: {fastest}")


if __name__ == "__main__":
    main()
