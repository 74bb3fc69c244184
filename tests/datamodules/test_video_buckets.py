"""Raw-video buckets: sizes and frame counts from the mp4 boxes, clips cut to their bucket at every step."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest
from helpers import write_wds

from fastgen_dm.datamodules.videos import VideoWDSDataModule
from fastgen_dm.format.mp4 import HEAD_BYTES
from fastgen_dm.index.build import index_shard
from fastgen_dm.plan.buckets import aspect_buckets
from fastgen_dm.storage import ByteCounter

PATTERN = "nullsrc=size={w}x{h}:rate=24,geq=r='mod(X*4+N*7+{s},256)':g='mod(Y*5+N*13,256)':b='mod(N*29+X+Y,256)'"
# (width, height, frames): wide and long, wide and short, tall
VIDEOS = [(64, 48, 20), (64, 48, 10), (48, 64, 12)]
TARGETS = [[48, 64, 16], [48, 64, 8], [64, 48, 8]]  # (height, width, frames)


def encode(path, width, height, frames, shift):
    pattern = PATTERN.format(w=width, h=height, s=shift)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", pattern, "-frames:v", str(frames),
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", str(path)], check=True)  # fmt: skip
    return path.read_bytes()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_buckets")
    videos = [encode(root / f"v{k}.mp4", *dims, 30 * k) for k, dims in enumerate(VIDEOS)]
    samples = [{"__key__": f"{n:04d}", "mp4": videos[n % 3], "txt": f"video {n}".encode()} for n in range(18)]
    (root / "shards").mkdir()
    write_wds(root / "shards" / "00000.tar", samples)
    return root / "shards"


def test_the_index_holds_each_videos_size_and_frames_without_reading_its_media(shards):
    plain, sized = ByteCounter(), ByteCounter()
    index_shard(str(shards / "00000.tar"), counter=plain)
    index = index_shard(str(shards / "00000.tar"), counter=sized, sizes_of="mp4")
    assert index.sizes.tolist() == [list(VIDEOS[n % 3]) for n in range(18)]
    assert sized.bytes_read - plain.bytes_read <= 18 * 4096 + 18 * 2 * 2048  # the head and the moov of each


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_step_is_one_bucket_of_clips_cut_to_it(shards, tmp_path, num_workers):
    dm = VideoWDSDataModule(
        datatags=[f"WDS:{shards}"], batch_size=2, buckets=TARGETS, index_dir=str(tmp_path / "index"),
        num_workers=num_workers, backend="pyav", shuffle=False,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    delivered = Counter()
    for batch in dm.train_dataloader():
        height, width, frames = TARGETS[batch["bucket"]]
        assert list(batch["real"].shape) == [2, 3, frames, height, width]
        assert batch["cropping_params"]["crop_w"].tolist() == [width] * 2
        delivered.update(int(k) % 3 for k in batch["fname"])
    # the long wide videos fill 16-frame clips, the short ones 8-frame clips, the tall ones theirs
    assert delivered == {0: 6, 1: 6, 2: 6}


def test_buckets_exclude_device_decoding_and_need_frame_counts(shards, tmp_path):
    with pytest.raises(ValueError, match="^buckets cut each clip to its bucket in the workers: use decode_on_device=False with buckets$"):
        VideoWDSDataModule(datatags=["WDS:x"], buckets=TARGETS, decode_on_device=True)
    with pytest.raises(ValueError, match=r"^buckets=\[\[1, 2, 3, 4\]\]: give \[\[height, width\(, frames\)\], \.\.\.\]"):
        VideoWDSDataModule(datatags=["WDS:x"], buckets=[[1, 2, 3, 4]])
    dm = VideoWDSDataModule(datatags=[f"WDS:{shards}"], batch_size=2, buckets={"ratios": 3, "pixels": 64 * 48, "multiple": 16, "frames": [8]}, index_dir=str(tmp_path / "i"))
    assert dm.bucket_targets.tolist() == aspect_buckets(3, 64 * 48, multiple=16, frames=[8]).tolist()
    assert VideoWDSDataModule(datatags=["WDS:x"], buckets=[[48, 64]], sequence_length=12).bucket_targets.tolist() == [[48, 64, 12]]


def test_a_video_whose_moov_follows_its_media_is_sized_from_its_head_and_moov_alone(tmp_path):
    noise = "nullsrc=size=128x96:rate=24,geq=r='random(1)*255':g='mod(Y*5+N*13,256)':b='mod(N*29+X+Y,256)'"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", noise, "-frames:v", "120",
                    "-pix_fmt", "yuv420p", "-c:v", "libx264", str(tmp_path / "v.mp4")], check=True)  # fmt: skip
    video = (tmp_path / "v.mp4").read_bytes()
    moov_at = video.index(b"moov") - 4
    moov_bytes = int.from_bytes(video[moov_at : moov_at + 4], "big")
    assert moov_at > len(video) // 2  # ffmpeg writes the moov last unless told to move it
    write_wds(tmp_path / "00000.tar", [{"__key__": f"{k:02d}", "mp4": video, "txt": b"x"} for k in range(8)])
    plain, sized = ByteCounter(), ByteCounter()
    index_shard(str(tmp_path / "00000.tar"), counter=plain)
    index = index_shard(str(tmp_path / "00000.tar"), counter=sized, sizes_of="mp4")
    assert index.sizes.tolist() == [[128, 96, 120]] * 8 and index.sizes_of == "mp4"
    per_video = (sized.bytes_read - plain.bytes_read) / 8
    # the first 4 KiB, the header of the mdat past them, the moov: 5.6 KB of a 470 KB video
    assert per_video <= HEAD_BYTES + 16 + moov_bytes and per_video < len(video) / 50


def test_fastgen_index_sizes_mp4_writes_an_index_video_buckets_read(shards, tmp_path, capsys):
    import shutil

    from fastgen_dm.cli.main import main

    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    assert main(["index", "--sizes", "mp4", f"WDS:{folder}"]) == 0
    dm = VideoWDSDataModule(datatags=[f"WDS:{folder}"], batch_size=2, buckets=TARGETS, num_workers=0, backend="pyav", index_dir=str(tmp_path / "i"))
    dm.setup("fit")  # no prepare_data: the location's own index has the sizes
    assert {batch["bucket"] for batch in dm.train_dataloader()} == {0, 1, 2}
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--sizes", "txt", f"WDS:{folder}"])
    assert exit_info.value.code == 2
    assert "videos: m4v, mov, mp4" in capsys.readouterr().err


def test_show_draws_one_batch_per_clip_bucket(shards, tmp_path, capsys):
    import json

    from fastgen_dm.cli.main import main

    code = main([
        "show", "--data", "VideoWDSDataModule", "--data.datatags", json.dumps([f"WDS:{shards}"]), "--data.buckets", json.dumps(TARGETS),
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.backend", "pyav", "--data.index_dir", str(tmp_path / "index"),
        "--per-bucket", "--out", str(tmp_path / "b.png"),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and all(f"bucket {b}: real [2, 3, {t}, {h}, {w}]" in printed for b, (h, w, t) in enumerate(TARGETS))


def test_an_index_of_another_members_sizes_is_a_one_line_error_naming_the_rebuild(shards, tmp_path):
    import shutil

    from fastgen_dm.cli.main import main

    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    assert main(["index", "--sizes", "latent.pth", f"WDS:{folder}"]) == 0  # three columns, of a member these shards lack
    dm = VideoWDSDataModule(datatags=[f"WDS:{folder}"], batch_size=2, buckets=TARGETS, num_workers=0, index_dir=str(tmp_path / "i"))
    message = f"{folder}/00000.tar: the index holds the sizes of its 'latent.pth' members, and these buckets need those of 'mp4'; run `fastgen index --sizes mp4 WDS:{folder}` again"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dm.setup("fit")
