"""Worker memory over a long run of video clips: does a DataLoader worker's RSS grow?

Encodes a few short h264 videos with ffmpeg, writes them to shards, and reads ``--clips`` clips
through ``VideoWDSDataModule`` (shards repeated with ``num_shards``), sampling the workers'
peak RSS every ``--every`` clips. Prints the series and the growth from the first sample after
warm-up to the end. Example:

    python benchmarks/soak_video.py --clips 2000 --workers 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

import psutil

from fastgen_dm import VideoWDSDataModule


def write_shards(folder: Path, videos: int) -> None:
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i in range(videos):
            path = folder / f"v{i}.mp4"
            subprocess.run(
                ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x96:rate=24", "-frames:v",
                 str(48 + 8 * i), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "12", str(path)],
                check=True,
            )  # fmt: skip
            tar.add(path, arcname=f"{i:06d}.mp4")
            text = folder / f"v{i}.txt"
            text.write_text(f"clip {i}")
            tar.add(text, arcname=f"{i:06d}.txt")


def workers_rss_mb() -> float:
    children = psutil.Process(os.getpid()).children(recursive=True)
    return max((c.memory_info().rss for c in children), default=0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="torchcodec", choices=["decord", "torchcodec", "pyav"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        write_shards(folder, videos=16)
        dm = VideoWDSDataModule(
            [f"WDS:{folder}"], batch_size=4, sequence_length=16, img_size=(96, 64), backend=args.backend,
            num_workers=args.workers, num_shards=max(1, args.clips // 16), index_dir=str(Path(tmp) / "index"),
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        series, clips = [], 0
        for batch in dm.train_dataloader():
            clips += len(batch["fname"])
            if clips // args.every > len(series) - 1 or not series:
                series.append((clips, workers_rss_mb()))
            if clips >= args.clips:
                break
        print(f"{args.backend}, {args.workers} workers: peak worker RSS (MiB) by clips read")
        for n, mb in series:
            print(f"  {n:6d} clips  {mb:7.1f}")
        base = series[1][1] if len(series) > 1 else series[0][1]
        print(f"growth after warm-up: {series[-1][1] - base:+.1f} MiB over {series[-1][0] - series[min(1, len(series) - 1)][0]} clips")


if __name__ == "__main__":
    main()
