"""The raw-video family: clip choice, resize/crop, FastGen's batch, exactly once, bad videos, scaling."""

import io
import json
import pickle
import re
import shutil
import subprocess
import threading

import av
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from helpers import write_wds

import fastgen_dm.decode.video as video_mod
from fastgen_dm import VideoWDSDataModule
from fastgen_dm.batch.constants import preset
from fastgen_dm.transform.image import scale_to_unit
from fastgen_dm.transform.video import (
    EncodedVideo,
    VideoClipTransform,
    VideoTooShortError,
    clip_indices,
    clip_seed,
    cover_size,
    resize_crop,
)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg CLI encodes the test videos")

W, H = 64, 48
LENGTH, SIZE = 8, (40, 32)  # clips of 8 frames, cropped to 40x32: resized to 43x32, crop_x0 = 1
PARAMS = {"resize_w": 43, "resize_h": 32, "crop_x0": 1, "crop_y0": 0, "crop_w": 40, "crop_h": 32}


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def encode(path, frames, shift=0):
    """An h264 mp4 of a moving colour ramp (every frame distinct; ``shift`` makes another video)."""
    pattern = f"nullsrc=size={W}x{H}:rate=24,geq=r='mod(X*4+N*7+{shift},256)':g='mod(Y*5+N*13,256)':b='mod(N*29+X+Y,256)'"
    ffmpeg("-f", "lavfi", "-i", pattern, "-frames:v", frames, "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "12", path)
    return path.read_bytes()


def sequential(data):
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    good = [encode(d / f"v{k}.mp4", frames, shift=40 * k) for k, frames in enumerate([30, 41, 24])]
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", d / "audio.mp4")
    broken = {
        "empty": b"",
        "audio_only": (d / "audio.mp4").read_bytes(),
        "truncated": good[0][: len(good[0]) // 2],  # the moov box (written last) is cut off
    }
    return {"good": good, "short": encode(d / "short.mp4", 5, shift=99), "broken": broken}


def samples_of(media):
    """Two shards: 9 good samples (3 distinct videos), 3 broken ones and a short one, in an order
    where every batch of 2 (unshuffled) keeps a good sample (a batch that loses all is repeated)."""
    good = [{"__key__": f"good{i}", "mp4": media["good"][i % 3], "txt": f"caption {i}".encode()} for i in range(9)]
    bad = {name: {"__key__": f"bad_{name}", "mp4": data, "txt": b"x"} for name, data in media["broken"].items()}
    short = {"__key__": "short", "mp4": media["short"], "txt": b"short one"}
    first = [good[0], bad["empty"], good[1], good[2], bad["audio_only"], good[3], good[4]]
    second = [good[5], bad["truncated"], good[6], good[7], short, good[8]]
    return first, second


@pytest.fixture(scope="module")
def shards(media, tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_shards")
    for n, samples in enumerate(samples_of(media)):
        write_wds(folder / f"{n:06d}.tar", samples)
    return folder


def make(folder, tmp_path, **kwargs):
    kwargs = {
        "sequence_length": LENGTH, "img_size": SIZE, "num_workers": 0, "index_dir": str(tmp_path / "index"),
        "max_skip_fraction": 0.5, "skipped_index_dir": str(tmp_path / "skipped"), **kwargs,
    }  # fmt: skip
    dm = VideoWDSDataModule([f"WDS:{folder}"], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def skipped_keys(tmp_path):
    """The keys every ignore index written under ``tmp_path / "skipped"`` lists."""
    return sorted(k for path in (tmp_path / "skipped").glob("*.json") for keys in json.loads(path.read_text()).values() for k in keys)


def param_rows(params):
    """FastGen's ``cropping_params`` (a dict of int64 [B] tensors) as B dicts, checking the layout."""
    assert list(params) == ["resize_w", "resize_h", "crop_x0", "crop_y0", "crop_w", "crop_h"]
    assert all(v.dtype == torch.int64 and v.dim() == 1 for v in params.values())
    return [dict(zip(params, values)) for values in zip(*(v.tolist() for v in params.values()))]


def expected_clip(data, seed, epoch, url, key):
    """What the clip of one sample must be: its seeded start, frames from sequential decoding, resize, crop."""
    ref = sequential(data)
    indices = clip_indices(len(ref), LENGTH, rng=np.random.default_rng(clip_seed(seed, epoch, url, key)))
    return resize_crop(torch.from_numpy(ref[indices]), SIZE)[0]


# --- the DataModule ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["decord", "torchcodec", "pyav"])
def test_batches_hold_seeded_clips_once_each_and_bad_videos_are_skipped_and_counted(shards, media, tmp_path, backend):
    dm = make(shards, tmp_path, backend=backend, seed=3, shuffle=False)
    batches = list(dm.train_dataloader())
    by_key = {s["__key__"]: s for pair in samples_of(media) for s in pair}
    seen = []
    for batch in batches:
        n = len(batch["fname"])
        assert batch["real"].dtype == torch.uint8 and batch["real"].shape == (n, 3, LENGTH, SIZE[1], SIZE[0])
        assert param_rows(batch["cropping_params"]) == [PARAMS] * n
        assert batch["cropping_params"]["crop_x0"].shape == (n,)
        assert batch["neg_condition"] == [preset("neg_prompt_wan")] * n
        assert batch["neg_condition"][0].startswith("Bright tones, overexposed, static, blurred details, subtitles")
        for i, (url, key) in enumerate(zip(batch["shard"], batch["fname"])):
            assert batch["condition"][i] == by_key[key]["txt"].decode()
            torch.testing.assert_close(batch["real"][i], expected_clip(by_key[key]["mp4"], 3, 0, url, key), rtol=0, atol=0)
            seen.append(key)
    assert sorted(seen) == [f"good{i}" for i in range(9)]  # each once; the short one skipped (short_video="skip")
    assert skipped_keys(tmp_path) == ["bad_audio_only", "bad_empty", "bad_truncated", "short"]


def test_short_video_pad_repeats_the_last_frame(shards, tmp_path):
    dm = make(shards, tmp_path, short_video="pad", backend="pyav")
    clips = {k: clip for b in dm.train_dataloader() for k, clip in zip(b["fname"], b["real"])}
    assert "short" in clips and len(clips) == 10
    assert skipped_keys(tmp_path) == ["bad_audio_only", "bad_empty", "bad_truncated"]
    short = clips["short"]  # 5 frames: [0, 1, 2, 3, 4, 4, 4, 4]
    assert all(torch.equal(short[:, 4], short[:, t]) for t in (5, 6, 7))
    assert not torch.equal(short[:, 3], short[:, 4])


def test_scaling_on_the_cpu_equals_scaling_after_the_transfer(shards, tmp_path):
    on_device = make(shards, tmp_path / "a", normalize_on_device=True, backend="pyav")
    on_cpu = make(shards, tmp_path / "b", normalize_on_device=False, backend="pyav")
    assert on_device.device_scaled_keys == ("real",)
    for raw, scaled in zip(on_device.train_dataloader(), on_cpu.train_dataloader()):
        assert raw["real"].dtype == torch.uint8 and scaled["real"].dtype == torch.float32
        moved = on_device.on_after_batch_transfer(raw, 0)  # what Lightning calls after the copy to the device
        assert torch.equal(moved["real"], scaled["real"])  # bit for bit
        assert moved["real"].min() >= -1 and moved["real"].max() <= 1


def test_clips_are_the_same_for_any_number_of_workers(shards, tmp_path):
    def clips(workers):
        dm = make(shards, tmp_path / str(workers), num_workers=workers, seed=5, backend="pyav")
        return {k: c for b in dm.train_dataloader() for k, c in zip(b["fname"], b["real"])}

    one, two = clips(0), clips(2)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_each_video_key_gets_its_own_cropping_params(media, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    write_wds(folder / "000000.tar", [{"__key__": f"s{i}", "mp4": media["good"][i], "ref.mp4": media["good"][2 - i], "txt": b"t"} for i in range(3)])
    dm = make(folder, tmp_path, key_map={"real": "mp4", "first": "ref.mp4", "condition": "txt"}, video_keys=("real", "first"), backend="pyav")
    batch = next(iter(dm.train_dataloader()))
    assert "cropping_params" not in batch
    assert param_rows(batch["real_cropping_params"]) == param_rows(batch["first_cropping_params"]) == [PARAMS] * 2
    assert batch["first"].shape == batch["real"].shape == (2, 3, LENGTH, SIZE[1], SIZE[0])
    assert dm.device_scaled_keys == ("real", "first")


def test_a_header_that_over_reports_frames_never_hangs(media, tmp_path):
    """An mp4 whose last 20 of 41 packets are zeroed: every backend counts 41 frames, about 20 decode."""
    data = bytearray(media["good"][1])
    with av.open(io.BytesIO(bytes(data))) as c:
        spans = sorted((p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size)
    for pos, size in spans[-20:]:
        data[pos : pos + size] = bytes(size)
    folder = tmp_path / "damaged"
    folder.mkdir()
    write_wds(folder / "000000.tar", [{"__key__": f"d{i}", "mp4": bytes(data), "txt": b"t"} for i in range(6)])
    for backend in ("decord", "torchcodec", "pyav"):
        dm = make(folder, tmp_path / backend, backend=backend, decode_timeout_s=20, max_skip_fraction=1.0, batch_size=6)
        try:
            delivered = [k for b in dm.train_dataloader() for k in b["fname"]]
        except RuntimeError as err:  # every clip of the only batch skipped (decord can be that strict)
            assert backend == "decord" and "every sample of the first batch" in str(err)
            continue
        if backend != "decord":  # clips are chosen again within the frames that decode
            assert len(delivered) == 6


def test_a_stuck_decode_is_skipped_and_counted(shards, tmp_path, monkeypatch):
    release = threading.Event()
    real_decode = video_mod._PyAVSource._decode

    def decode(self, indices):
        if self.num_frames == 41:  # the videos made from media["good"][1] hang
            release.wait(60)
        return real_decode(self, indices)

    monkeypatch.setattr(video_mod._PyAVSource, "_decode", decode)
    try:
        dm = make(shards, tmp_path, backend="pyav", decode_timeout_s=0.5, shuffle=False, batch_size=4)
        delivered = sorted(k for b in dm.train_dataloader() for k in b["fname"])
    finally:
        release.set()
    assert delivered == ["good0", "good2", "good3", "good5", "good6", "good8"]  # every batch kept one: no repeats
    assert skipped_keys(tmp_path) == ["bad_audio_only", "bad_empty", "bad_truncated", "good1", "good4", "good7", "short"]


def test_resampled_mode_gives_a_video_drawn_again_another_clip_and_repeats_with_the_seed(shards, tmp_path):
    """The endless stream draws videos again and again: each draw is seeded by its draw number."""

    def draws(folder):
        dm = make(shards, folder, backend="pyav", resampled=True, shuffle_buffer_bytes=1)
        stream = iter(dm.train_dataloader())
        batches = [next(stream) for _ in range(12)]
        assert all(b["real"].shape[1:] == (3, LENGTH, SIZE[1], SIZE[0]) for b in batches)
        return [(key, clip) for b in batches for key, clip in zip(b["fname"], b["real"])]

    first, again = draws(tmp_path / "a"), draws(tmp_path / "b")
    assert [k for k, _ in first] == [k for k, _ in again] and all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))
    clips_by_key: dict[str, list[torch.Tensor]] = {}
    for key, clip in first:
        clips_by_key.setdefault(key, []).append(clip)
    repeated = [clips for clips in clips_by_key.values() if len(clips) > 1]
    assert repeated and any(not torch.equal(clips[0], other) for clips in repeated for other in clips[1:])


def device_clips(dm):
    """{key: (clip, cropping params)} of one epoch decoded after the transfer (here: on the CPU)."""
    out = {}
    for raw in dm.train_dataloader():
        assert all(isinstance(v, EncodedVideo) for v in raw["real"]) and "cropping_params" not in raw  # workers only read
        batch = dm.on_after_batch_transfer(raw, 0)
        params = param_rows(batch["cropping_params"])
        assert batch["real"].dtype == torch.float32 and len(params) == len(batch["fname"])
        out.update((k, (c, p)) for k, c, p in zip(batch["fname"], batch["real"], params))
    return out


def test_decoding_after_the_transfer_gives_the_workers_clips_and_counts_bad_videos(shards, tmp_path):
    in_workers = make(shards, tmp_path / "a", backend="torchcodec", seed=3, num_workers=2)
    expected = {k: (c, p) for b in in_workers.train_dataloader() for k, c, p in zip(b["fname"], b["real"], param_rows(b["cropping_params"]))}
    on_device = make(shards, tmp_path / "b", backend="torchcodec", seed=3, num_workers=2, decode_on_device=True)
    got = device_clips(on_device)
    assert got.keys() == expected.keys() and len(got) == 9
    for key, (clip, params) in got.items():  # the same frames (seeded by origin, not by process), bit for bit
        assert torch.equal(clip, scale_to_unit(expected[key][0])) and params == expected[key][1] == PARAMS
    bad = sorted(k for keys in on_device.device_bad_data.skipped_keys.values() for k in keys)
    assert bad == ["bad_audio_only", "bad_empty", "bad_truncated", "short"] and on_device.device_bad_data.seen == 13
    assert skipped_keys(tmp_path / "b") == bad  # written as an ignore index, like the workers' skips


def test_a_batch_that_loses_every_sample_after_the_transfer_repeats_the_last_good_one(shards, tmp_path, caplog):
    dm = make(shards, tmp_path / "a", backend="torchcodec", decode_on_device=True, batch_size=1, shuffle=False)
    raw = iter(dm.train_dataloader())
    first = dm.on_after_batch_transfer(next(raw), 0)
    second = dm.on_after_batch_transfer(next(raw), 0)  # bad_empty, alone in its batch
    assert first["fname"] == second["fname"] == ["good0"] and torch.equal(first["real"], second["real"])
    assert "repeating the previous batch" in caplog.text and dm.device_bad_data.skipped_keys[second["shard"][0]] == ["bad_empty"]
    starts_bad = make(shards, tmp_path / "b", backend="torchcodec", decode_on_device=True, batch_size=1, shuffle=False, sampler_start_idx=1)
    with pytest.raises(RuntimeError, match="every sample of the first batch failed to decode on the device; first: bad_empty"):
        starts_bad.on_after_batch_transfer(next(iter(starts_bad.train_dataloader())), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (NVDEC)")
def test_nvdec_clips_are_the_cpu_clips_up_to_hardware_rounding(shards, tmp_path):
    on_cpu = make(shards, tmp_path / "a", backend="torchcodec", seed=3)
    expected = {k: c for b in on_cpu.train_dataloader() for k, c in zip(b["fname"], b["real"])}
    dm = make(shards, tmp_path / "b", backend="torchcodec", seed=3, decode_on_device=True)
    for raw in dm.train_dataloader():
        values, failures = dm.decode_rows(raw, torch.device("cuda"))
        for row, clip in enumerate(values["real"]):
            if row not in failures:
                assert clip.device.type == "cuda"
                mse = (clip.cpu().float() - expected[raw["fname"][row]].float()).pow(2).mean().item()
                assert 10 * np.log10(255**2 / max(mse, 1e-10)) >= 35  # a one-frame shift scores 9-21 dB here


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decode_on_device": True, "backend": "pyav"}, "decode_on_device=True decodes with torchcodec's CUDA decoder and scales on the device"),
        ({"decode_on_device": True, "backend": "torchcodec", "normalize_on_device": False}, "normalize_on_device=True (got False)"),
        ({"sequence_length": 0}, "sequence_length must be an integer >= 1 (frames per clip), got 0"),
        ({"img_size": (832,)}, "img_size must be (width, height) in pixels, two integers >= 1, got (832,)"),
        ({"decoder_type": "random"}, "decoder_type 'random' is unknown; use one of ['segment', 'full', 'uniform']"),
        ({"backend": "opencv"}, "video backend 'opencv' is unknown; use one of ['decord', 'torchcodec', 'pyav']"),
        ({"short_video": "drop"}, "short_video 'drop' is unknown; use one of ['skip', 'pad']"),
        ({"decoder_type": "uniform", "frame_stride": 2}, "decoder_type='uniform' spaces frames over the whole video; frame_stride=2 conflicts"),
        ({"decode_timeout_s": 0}, "decode_timeout_s must be > 0 seconds or None (no bound), got 0"),
        ({"video_keys": ("clip",)}, "video_keys ['clip'] are not key_map outputs (['condition', 'real'])"),
    ],
)
def test_bad_arguments_fail_at_construction_and_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VideoWDSDataModule(["WDS:/nowhere"], **kwargs)


def test_fastgen_defaults():
    dm = VideoWDSDataModule(["WDS:/nowhere"])
    assert (dm.batch_size, dm.num_workers, dm.sequence_length, dm.img_size) == (2, 2, 81, (832, 480))
    assert dm.spec.key_map == {"real": "mp4", "condition": "txt"} and dm.presets_map == {"neg_condition": "neg_prompt_wan"}
    assert (dm.decoder_type, dm.backend, dm.short_video, dm.frame_stride, dm.normalize_on_device) == ("segment", "torchcodec", "skip", 1, True)


# --- clip choice and geometry (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    "num_frames, length, kwargs, expected",
    [
        (10, 4, {"decoder_type": "full", "frame_stride": 2}, [0, 2, 4, 6]),
        (10, 4, {"decoder_type": "uniform"}, [0, 3, 6, 9]),
        (10, 7, {"decoder_type": "full", "frame_stride": 2, "short_video": "pad"}, [0, 2, 4, 6, 8, 8, 8]),
        (3, 5, {"decoder_type": "segment", "short_video": "pad"}, [0, 1, 2, 2, 2]),
        (3, 5, {"decoder_type": "uniform", "short_video": "pad"}, [0, 1, 2, 2, 2]),
        (5, 5, {"decoder_type": "segment"}, [0, 1, 2, 3, 4]),
    ],
)
def test_clip_indices(num_frames, length, kwargs, expected):
    rng = np.random.default_rng(0)
    assert clip_indices(num_frames, length, rng=rng, **kwargs).tolist() == expected


def test_segment_starts_cover_every_position_and_follow_the_seed():
    starts = {int(clip_indices(10, 4, frame_stride=2, rng=np.random.default_rng(s))[0]) for s in range(200)}
    assert starts == {0, 1, 2, 3}  # span 7 in 10 frames
    a = clip_indices(500, 81, rng=np.random.default_rng(clip_seed(0, 0, "s3://b/000001.tar", "k")))
    assert a.tolist() == clip_indices(500, 81, rng=np.random.default_rng(clip_seed(0, 0, "s3://b/000001.tar", "k"))).tolist()
    others = [clip_seed(0, 1, "s3://b/000001.tar", "k"), clip_seed(0, 0, "s3://b/000002.tar", "k"), clip_seed(1, 0, "s3://b/000001.tar", "k"),
              clip_seed(0, 0, "s3://b/000001.tar", "k", draw=0), clip_seed(0, 0, "s3://b/000001.tar", "k", draw=1)]  # fmt: skip
    assert all(clip_indices(500, 81, rng=np.random.default_rng(s))[0] != a[0] for s in others)


def test_a_short_video_under_skip_is_bad_data_with_a_clear_message():
    with pytest.raises(VideoTooShortError, match=re.escape("the video has 5 frames; a clip of sequence_length=4 with frame_stride=2 spans 7")):
        clip_indices(5, 4, frame_stride=2, rng=np.random.default_rng(0))
    assert issubclass(VideoTooShortError, ValueError)


def test_cover_size_keeps_the_aspect_and_covers_the_target():
    assert cover_size(1280, 720, (832, 480)) == (853, 480)
    assert cover_size(480, 640, (832, 480)) == (832, 1109)
    assert cover_size(64, 48, (32, 32)) == (43, 32)
    assert cover_size(832, 480, (832, 480)) == (832, 480)


def test_resize_crop_is_torchvisions_bicubic_resize_then_a_center_crop():
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8))
    clip, params = resize_crop(frames, (32, 32))
    assert params == {"resize_w": 43, "resize_h": 32, "crop_x0": 5, "crop_y0": 0, "crop_w": 32, "crop_h": 32}
    assert clip.dtype == torch.uint8 and clip.shape == (3, 3, 32, 32)  # (C, T, H, W)
    resized = TF.resize(frames.permute(0, 3, 1, 2), [32, 43], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(clip, resized[:, :, :, 5:37].permute(1, 0, 2, 3))  # FastGen's resize, bit for bit
    fast, fast_params = resize_crop(frames, (32, 32), exact=False)
    assert fast_params == params and (fast.int() - clip.int()).abs().float().mean() < 2
    same, same_params = resize_crop(frames, (64, 48))  # already the size: no resampling
    assert torch.equal(same, frames.permute(3, 0, 1, 2)) and same_params["resize_w"] == 64


def test_the_transform_is_picklable_and_seeds_by_origin(media):
    transform = VideoClipTransform(sequence_length=LENGTH, img_size=SIZE, backend="pyav")
    copy = pickle.loads(pickle.dumps(transform))
    assert copy == transform
    video = EncodedVideo(media["good"][1], "file:///x/000000.tar", "k1", 0)
    a, b = copy({"real": video})["real"], transform({"real": video})["real"]
    assert torch.equal(a, b)
    assert torch.equal(a, expected_clip(media["good"][1], 0, 0, "file:///x/000000.tar", "k1"))
    scaled = VideoClipTransform(sequence_length=LENGTH, img_size=SIZE, backend="pyav", scale=True)({"real": video})
    assert torch.equal(scaled["real"], scale_to_unit(a)) and scaled["cropping_params"] == PARAMS


@pytest.mark.parametrize("decoder_type, stride, expected", [("full", 2, range(0, 16, 2)), ("uniform", 1, [0, 6, 11, 17, 23, 29, 34, 40])])
def test_full_and_uniform_clips(media, decoder_type, stride, expected):
    transform = VideoClipTransform(sequence_length=LENGTH, img_size=SIZE, backend="torchcodec", decoder_type=decoder_type, frame_stride=stride)
    ref = sequential(media["good"][1])  # 41 frames
    clip = transform({"real": media["good"][1]})["real"]
    assert torch.equal(clip, resize_crop(torch.from_numpy(ref[list(expected)]), SIZE)[0])


def test_the_default_backend_is_torchcodec_and_a_missing_one_names_the_video_extra(shards, monkeypatch):
    import importlib.util

    assert VideoWDSDataModule([f"WDS:{shards}"]).backend == "torchcodec"
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "decord" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=re.escape("video backend 'decord' needs the 'decord' package, which is not installed; install the video extra: pip install 'fastgen-dm[video]'")):
        VideoWDSDataModule([f"WDS:{shards}"], backend="decord")
