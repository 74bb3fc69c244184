"""ImageWDSDataModule on shards of real Pillow-encoded images: layout, exactly once, bad media, normalization."""

import io
import json
import re
import tarfile

import lightning
import numpy as np
import PIL.Image
import pytest
import torch
import webdataset

from fastgen_dm import ImageWDSDataModule
from fastgen_dm.prepare import write_demo_media_shards
from fastgen_dm.transform.image import normalize_pixels
from helpers import bogus_huffman_table, fit_probe, flat, global_streams

RES = 24


def image(mode, size, seed):
    rng = np.random.default_rng(seed)
    rgb = PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        values = rng.integers(0, 65536, size[0] * size[1], dtype=np.uint16).astype("<u2")
        return PIL.Image.frombytes("I;16", size, values.tobytes())
    if mode == "P":
        return rgb.quantize(16)
    return rgb.convert(mode)


def encode(img, fmt, **params):
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


# (format, mode, (width, height)): every sample is stored as a ".jpg" member, whatever its format
MEDIA = [
    ("JPEG", "RGB", (64, 48)), ("JPEG", "RGB", (48, 64)), ("JPEG", "L", (40, 40)), ("JPEG", "CMYK", (50, 30)),
    ("PNG", "P", (40, 60)), ("PNG", "RGBA", (33, 47)), ("PNG", "LA", (30, 31)), ("PNG", "I;16", (37, 29)),
    ("WEBP", "RGB", (45, 45)), ("WEBP", "RGBA", (26, 52)), ("BMP", "RGB", (20, 70)), ("TIFF", "RGB", (70, 20)),
    ("TIFF", "CMYK", (24, 24)), ("GIF", "P", (30, 20)), ("PNG", "1", (25, 25)),
]  # fmt: skip


def truncated_jpeg(seed):
    data = encode(image("RGB", (64, 48), seed), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_with_bad_crc(seed):
    data = bytearray(encode(image("RGB", (32, 32), seed), "PNG"))
    pos = data.index(b"IDAT") - 4
    data[pos + 8 + int.from_bytes(data[pos : pos + 4], "big")] ^= 0xFF  # the IDAT chunk's CRC
    return bytes(data)


BAD = {"000005": truncated_jpeg(5), "000011": b"", "000017": png_with_bad_crc(17)}


def write_shards(folder, num, per_shard, bad=None, image_suffix="jpg"):
    """``num`` samples (keys 000000, 000001, ...) of MEDIA cycled, in shards of ``per_shard``."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, num, per_shard):
        with webdataset.TarWriter(str(folder / f"{start // per_shard:05d}.tar")) as sink:
            for i in range(start, min(num, start + per_shard)):
                key = f"{i:06d}"
                fmt, mode, size = MEDIA[i % len(MEDIA)]
                data = bad[key] if bad and key in bad else encode(image(mode, size, i), fmt)
                sink.write({"__key__": key, image_suffix: data, "txt": f"caption {key}".encode()})
    return folder


NUM = 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("images"), NUM, per_shard=15)


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("bad_images"), 20, per_shard=8, bad=BAD)


def make(folder, tmp_path, **kwargs):
    kwargs = {"batch_size": 8, "input_res": RES, "num_workers": 0, "index_dir": str(tmp_path / "index"), **kwargs}
    dm = ImageWDSDataModule([f"WDS:{folder}"], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def keys_of(loader):
    return [key for batch in loader for key in batch["fname"]]


def test_batch_layout_and_device_scaling(shards, tmp_path):
    dm = make(shards, tmp_path, shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    assert list(batch) == ["fname", "shard", "real", "condition", "neg_condition"]
    assert batch["fname"] == [f"{i:06d}" for i in range(8)] and batch["shard"][0].endswith("00000.tar")
    assert batch["real"].shape == (8, 3, RES, RES) and batch["real"].dtype == torch.uint8  # scaled after transfer
    assert batch["condition"] == [f"caption {k}" for k in batch["fname"]]
    assert batch["neg_condition"] == [""] * 8
    scaled = dm.on_after_batch_transfer(batch, 0)["real"]
    assert scaled.dtype == torch.float32 and scaled.shape == (8, 3, RES, RES)
    assert -1 <= scaled.min() < scaled.max() <= 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_sample_of_every_format_once_per_epoch(shards, tmp_path, num_workers):
    keys = keys_of(make(shards, tmp_path, num_workers=num_workers, seed=3).train_dataloader())
    assert sorted(keys) == [f"{i:06d}" for i in range(NUM)] and keys != sorted(keys)
    assert keys == keys_of(make(shards, tmp_path, num_workers=0, seed=3).train_dataloader())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_media_are_skipped_counted_and_written_out(bad_shards, tmp_path, num_workers, caplog):
    skipped_dir = tmp_path / "skipped"
    dm = make(bad_shards, tmp_path, num_workers=num_workers, max_skip_fraction=0.5, skipped_index_dir=str(skipped_dir))
    keys = keys_of(dm.train_dataloader())
    assert sorted(keys) == sorted(f"{i:06d}" for i in range(20) if f"{i:06d}" not in BAD)
    skipped = [key for path in skipped_dir.glob("*.json") for keys in json.loads(path.read_text()).values() for key in keys]
    assert sorted(skipped) == sorted(BAD)
    if num_workers == 0:  # worker processes log in their own process
        for cause in ("OSError", "UnidentifiedImageError", "ValueError: broken PNG"):
            assert cause in caplog.text


def test_too_many_corrupt_media_is_a_clear_error(bad_shards, tmp_path):
    dm = make(bad_shards, tmp_path, max_skip_fraction=0.0)
    with pytest.raises(RuntimeError, match=r"samples were bad \(max_skip_fraction=0.0\)"):
        list(dm.train_dataloader())


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.5), ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))])
def test_cpu_and_device_normalization_are_bit_identical(shards, tmp_path, mean, std):
    on_cpu = make(shards, tmp_path, shuffle=False, norm_mean=mean, norm_std=std, normalize_on_device=False)
    on_device = make(shards, tmp_path, shuffle=False, norm_mean=mean, norm_std=std)
    for cpu_batch, raw_batch in zip(on_cpu.train_dataloader(), on_device.train_dataloader()):
        assert cpu_batch["real"].dtype == torch.float32 and raw_batch["real"].dtype == torch.uint8
        assert torch.equal(on_device.on_after_batch_transfer(raw_batch, 0)["real"], cpu_batch["real"])
        assert torch.equal(on_cpu.on_after_batch_transfer(cpu_batch, 0)["real"], cpu_batch["real"])  # not scaled twice


def test_exact_resize_and_other_image_keys(tmp_path):
    folder = tmp_path / "png"
    folder.mkdir()
    with webdataset.TarWriter(str(folder / "00000.tar")) as sink:
        for i in range(6):
            sink.write({
                "__key__": f"{i:06d}", "png": encode(image("RGB", (40, 30), i), "PNG"),
                "mask.png": encode(image("L", (30, 40), i), "PNG"), "txt": b"x",
            })  # fmt: skip
    key_map = {"real": "png", "control": "mask.png", "condition": "txt"}
    dm = make(folder, tmp_path, key_map=key_map, exact_resize=True, shuffle=False, batch_size=6)
    assert dm.image_keys == ("real", "control") and dm.image_transform.exact_resize
    batch = next(iter(dm.train_dataloader()))
    assert batch["real"].shape == batch["control"].shape == (6, 3, RES, RES)
    source = PIL.Image.open(io.BytesIO(encode(image("RGB", (40, 30), 0), "PNG")))
    expected = source.resize((32, RES), PIL.Image.Resampling.BICUBIC)  # 40x30 -> 32x24, crop from x = 4
    assert torch.equal(batch["real"][0], torch.from_numpy(np.array(expected.crop((4, 0, 4 + RES, RES)))).permute(2, 0, 1))
    control = batch["control"].clone()
    scaled = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(scaled["control"], normalize_pixels(control, (0.5,), (0.5,)))


class _Recorder(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.seen = []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        self.seen.append((batch["real"].dtype, batch["real"].min().item(), batch["real"].max().item()))
        return (self.weight * 0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_a_trainer_sees_scaled_float_pixels(shards, tmp_path):
    dm = ImageWDSDataModule([f"WDS:{shards}"], batch_size=16, input_res=RES, num_workers=0, index_dir=str(tmp_path / "i"))
    model = _Recorder()
    trainer = lightning.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 3 and all(dtype == torch.float32 and -1 <= lo <= hi <= 1 for dtype, lo, hi in model.seen)
    assert dm.state_dict()["epoch"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_res": 0}, "input_res must be an integer >= 1 (output side in pixels), got 0; e.g. input_res=512"),
        ({"norm_std": (0.5, 0, 0.5)}, "norm_std must not contain 0 (it divides), got (0.5, 0, 0.5); e.g. norm_std=0.5"),
        ({"norm_mean": [0.5, 0.5]}, "norm_mean must be one number or 3 (one per RGB channel), got [0.5, 0.5]"),
        ({"key_map": {"real": "latent.pth"}}, "key_map {'real': 'latent.pth'} names no image member; map an output to an image suffix"),
    ],
)
def test_bad_arguments_fail_at_construction_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageWDSDataModule(["WDS:/nowhere"], **kwargs)


def test_defaults_follow_fastgen():
    dm = ImageWDSDataModule(["WDS:/nowhere"])
    assert dm.batch_size == 32 and dm.input_res == 512 and dm.normalize_on_device and not dm.exact_resize
    assert dm.spec.key_map == {"real": "jpg", "condition": "txt"} and dm.presets_map == {"neg_condition": "empty_string"}
    assert dm.norm_mean == dm.norm_std == (0.5,) and dm.spec.raw_keys == ("real",)


# --- JPEG decoding on the device (nvJPEG on CUDA; here the device is the CPU) ---------------------


def test_device_decoding_leaves_jpegs_to_the_device_and_matches_the_exact_path(shards, tmp_path):
    from fastgen_dm.decode.encoded import EncodedJPEG

    on_device = make(shards, tmp_path, shuffle=False, decode_jpeg_on_device=True)
    exact = make(shards, tmp_path, shuffle=False, exact_resize=True, normalize_on_device=False)
    routed = 0
    for raw, expected in zip(on_device.train_dataloader(), exact.train_dataloader()):
        rows = raw["real"] if isinstance(raw["real"], list) else list(raw["real"])
        routed += sum(isinstance(row, EncodedJPEG) for row in rows)
        for row, key in zip(rows, raw["fname"]):  # baseline RGB and L JPEGs go to the device, nothing else
            assert isinstance(row, EncodedJPEG) == (MEDIA[int(key) % len(MEDIA)][:2] in {("JPEG", "RGB"), ("JPEG", "L")})
        batch = on_device.on_after_batch_transfer(raw, 0)
        assert batch["real"].dtype == torch.float32 and batch["real"].shape == expected["real"].shape
        # the same full-size decode and bicubic filter as Pillow's: within one level of 255 (PSNR > 48 dB)
        assert (batch["real"] - expected["real"]).abs().max().item() <= 2 / 255 / 0.5 + 1e-6
    assert routed == 3 * NUM // len(MEDIA) + 1 and on_device.device_bad_data.skipped == 0


def test_a_jpeg_that_fails_on_the_device_is_dropped_counted_and_named(tmp_path, caplog):
    good = encode(image("RGB", (40, 30), 0), "JPEG", quality=90)
    folder = write_shards(tmp_path / "bad", 8, per_shard=8, bad={"000001": bogus_huffman_table(good), "000002": good})
    dm = make(folder, tmp_path, shuffle=False, decode_jpeg_on_device=True, max_skip_fraction=0.5)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["fname"] == ["000000", "000002", "000003", "000004", "000005", "000006", "000007"]
    assert batch["real"].shape == (7, 3, RES, RES) and len(batch["condition"]) == len(batch["neg_condition"]) == 7
    assert dm.device_bad_data.skipped == 1 and dm.device_bad_data.skipped_keys == {batch["shard"][0]: ["000001"]}
    assert "skipping bad sample 000001" in caplog.text and "broken data stream" in caplog.text  # Pillow, the second try


@pytest.mark.parametrize(
    "accelerator", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
)
def test_a_trainer_decodes_jpegs_on_its_device(shards, tmp_path, accelerator):
    dm = ImageWDSDataModule([f"WDS:{shards}"], batch_size=16, input_res=RES, num_workers=2,
                            index_dir=str(tmp_path / "i"), decode_jpeg_on_device=True)  # fmt: skip
    model = _Recorder()
    trainer = lightning.Trainer(accelerator=accelerator, devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 3 and all(dtype == torch.float32 and -1 <= lo <= hi <= 1 for dtype, lo, hi in model.seen)
    assert dm.state_dict()["epoch"] == 1 and dm.device_bad_data.seen == NUM


@pytest.mark.parametrize("kwargs", [{"exact_resize": True}, {"normalize_on_device": False}])
def test_device_decoding_refuses_options_it_cannot_honour(kwargs):
    with pytest.raises(ValueError, match="decode_jpeg_on_device=True resizes on the device"):
        ImageWDSDataModule(["WDS:/nowhere"], decode_jpeg_on_device=True, **kwargs)


def test_ddp_with_decoding_after_the_transfer_delivers_every_good_sample_once(tmp_path):
    folder = tmp_path / "media"
    shards = write_demo_media_shards(folder, "images", num_samples=30, samples_per_shard=10)
    with tarfile.open(shards[1]) as tar:  # one JPEG that parses but does not decode, in the second shard
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shards[1], "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            data = bogus_huffman_table(data) if member.name == "00000013.jpg" else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    dm = ImageWDSDataModule([f"WDS:{folder}"], batch_size=4, input_res=RES, num_workers=1, seed=2, max_skip_fraction=0.5,
                            index_dir=str(tmp_path / "index"), decode_jpeg_on_device=True)  # fmt: skip
    dm.prepare_data()
    fit_probe(dm, tmp_path / "record", devices=2)
    for steps in global_streams(tmp_path / "record").values():
        keys = [i.rsplit("/", 1)[-1] for i in flat(steps)]
        assert sorted(keys) == [f"{i:08d}" for i in range(30) if i != 13]  # each once, across both ranks
