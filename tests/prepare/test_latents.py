"""Tests for fastgen_dm.prepare.latents: ImageNet-256 images and SD-VAE latents (EDM2's layout).

A tiny randomly initialized ``AutoencoderKL`` of the SD VAE's family (four down blocks: 256 ->
32) is saved locally and passed as ``--vae``; nothing is downloaded. Five JPEGs of odd sizes
under two wnids make the ImageNet tree.
"""

from __future__ import annotations

import io
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

from fastgen_dm.cli import prepare as prepare_cli  # noqa: E402
from fastgen_dm.prepare.edm_zip import EDMZipWriter  # noqa: E402
from fastgen_dm.prepare.imagenet import center_crop_dhariwal  # noqa: E402
from fastgen_dm.prepare.latents import (  # noqa: E402
    _PartWriter,
    _read_parts,
    check_latent_zip,
    encode_latent_zip,
    load_vae,
    prepare_imagenet_256,
)

TRAIN = Path("ILSVRC/Data/CLS-LOC/train")
# wnid -> [(file name, (W, H), mode)]; 600x520 takes one BOX halving before the bicubic resize.
TREE = {
    "n02000002": [("b_600x520.JPEG", (600, 520), "RGB"), ("a_300x257.JPEG", (300, 257), "L")],
    "n01000001": [("z_270x330.JPEG", (270, 330), "RGB"), ("c_99x77.JPEG", (99, 77), "RGB"), ("d_256x256.JPEG", (256, 256), "RGB")],
}
LABELS = [0, 0, 0, 1, 1]  # sorted wnids, then sorted names
MEMBERS = [f"00000/img-mean-std-{i:08d}.npy" for i in range(5)] + ["dataset.json"]


def _picture(size: tuple[int, int], mode: str, seed: int) -> PIL.Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h)], axis=-1)
    image = PIL.Image.fromarray(np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8), "RGB")
    return image.convert(mode)


def _tiny_vae() -> AutoencoderKL:
    with torch.random.fork_rng():  # the global RNG is left as it was
        torch.manual_seed(0)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=256,
        ).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(ImageNet root, sorted image paths, VAE folder, prepared output dir) shared by the module."""
    root = tmp_path_factory.mktemp("imagenet")
    seed = 0
    for wnid, files in TREE.items():
        (root / TRAIN / wnid).mkdir(parents=True)
        for name, size, mode in files:
            _picture(size, mode, seed).save(root / TRAIN / wnid / name, format="JPEG", quality=90)
            seed += 1
    paths = [str(root / TRAIN / wnid / name) for wnid in sorted(TREE) for name in sorted(n for n, _, _ in TREE[wnid])]
    vae_dir = tmp_path_factory.mktemp("vae")
    _tiny_vae().save_pretrained(vae_dir)
    out = tmp_path_factory.mktemp("out")
    argv = ["imagenet-256", "--imagenet-source", str(root), "--vae", str(vae_dir), "--output-dir", str(out)]
    argv += ["--batch-size", "4", "--devices", "1", "--workers", "1", "--loader-workers", "0"]
    assert prepare_cli.main(argv) == 0
    return root, paths, vae_dir, out


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_cli_writes_images_and_latents_in_edm2_layout(world):
    root, paths, vae_dir, out = world
    images = _members(out / "imagenet-256" / "imagenet-256x256.zip")
    assert list(images)[:-1] == [f"00000/img{i:08d}.png" for i in range(5)]
    for i, path in enumerate(paths):  # the ADM crop at 256, image i is file i
        expected = np.array(center_crop_dhariwal(PIL.Image.open(path), 256))
        np.testing.assert_array_equal(np.array(PIL.Image.open(io.BytesIO(images[f"00000/img{i:08d}.png"]))), expected)

    latents = _members(out / "imagenet-256" / "imagenet_256_sd.zip")
    assert list(latents) == MEMBERS
    assert json.loads(latents["dataset.json"]) == {"labels": [[name, label] for name, label in zip(MEMBERS, LABELS)]}
    vae = load_vae(vae_dir)
    for i in range(5):
        array = np.load(io.BytesIO(latents[MEMBERS[i]]), allow_pickle=False)
        assert array.dtype == np.float32 and array.shape == (8, 32, 32)
        pixels = np.array(PIL.Image.open(io.BytesIO(images[f"00000/img{i:08d}.png"])))
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1  # [-1, 1]
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
        np.testing.assert_allclose(array[:4], posterior.mean[0].numpy(), rtol=0, atol=1e-5)  # mean first
        np.testing.assert_allclose(array[4:], posterior.std[0].numpy(), rtol=0, atol=1e-5)  # then std
        assert (array[4:] > 0).all()
    leftovers = sorted(p.name for p in (out / "imagenet-256").iterdir())
    assert leftovers == ["imagenet-256x256.zip", "imagenet_256_sd.zip"]  # no parts, no staged zips


def test_existing_outputs_are_checked_and_kept_or_forced(world, capsys):
    root, paths, vae_dir, out = world
    latent_zip = out / "imagenet-256" / "imagenet_256_sd.zip"
    before = latent_zip.read_bytes()
    argv = ["imagenet-256", "--imagenet-source", str(root), "--vae", str(vae_dir), "--output-dir", str(out)]
    argv += ["--devices", "1", "--workers", "1", "--loader-workers", "0"]
    assert prepare_cli.main(argv) == 0
    assert capsys.readouterr().out.count("exists and passed its check") == 2

    # A latent zip that lacks a latent is refused, naming --force; --force rewrites both zips.
    with EDMZipWriter(latent_zip, member_prefix="img-mean-std") as writer:
        for label in LABELS[:4]:
            writer.add_array(np.ones((8, 32, 32), np.float32), label)
    with pytest.raises(SystemExit):
        prepare_cli.main(argv)
    assert re.search(r"imagenet_256_sd\.zip exists but holds 4 latents, expected 5 \(one per image\); .*--force", capsys.readouterr().err)
    assert prepare_cli.main(argv + ["--force", "--batch-size", "2"]) == 0
    assert capsys.readouterr().out.count("wrote 5") == 2
    rewritten = _members(latent_zip)
    for name, data in _members_bytes(before).items():  # another batch size: equal up to float rounding
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(io.BytesIO(rewritten[name])), np.load(io.BytesIO(data)), rtol=0, atol=1e-5)
        else:
            assert rewritten[name] == data


def _members_bytes(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_two_spawned_ranks_write_the_same_zip_as_one(world, tmp_path, monkeypatch):
    root, paths, vae_dir, out = world
    image_zip = out / "imagenet-256" / "imagenet-256x256.zip"
    # Bit-equal floats need the same batch composition and thread count on both sides (CPU
    # convolutions round differently with either): one image a batch, one thread a process.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned ranks inherit it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = dict(vae=vae_dir, batch_size=1, accelerator="cpu", num_workers=0, show_progress=False)
        assert encode_latent_zip(image_zip, tmp_path / "one.zip", devices=1, **common) == 5
        assert encode_latent_zip(image_zip, tmp_path / "two.zip", devices=2, strategy="ddp_spawn", **common) == 5
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "two.zip").read_bytes() == (tmp_path / "one.zip").read_bytes()
    assert list(_members(tmp_path / "two.zip")) == MEMBERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zip", "two.zip"]


class _FailingVAE(torch.nn.Module):
    def encode(self, x):
        raise RuntimeError("the VAE broke")


def test_a_failed_encoding_leaves_nothing(world, tmp_path):
    image_zip = world[3] / "imagenet-256" / "imagenet-256x256.zip"
    with pytest.raises(RuntimeError, match="the VAE broke"):
        encode_latent_zip(image_zip, tmp_path / "lat.zip", vae=_FailingVAE(), accelerator="cpu", devices=1, num_workers=0, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_parts_must_cover_every_index_once(tmp_path):
    writer = _PartWriter(str(tmp_path), part_bytes=1)  # one part per batch

    class Rank:
        global_rank = 1

    for index in ([2, 0], [3]):
        latents = 10 * torch.tensor(index, dtype=torch.float32).reshape(-1, 1, 1, 1).repeat(1, 2, 1, 1)  # item i: 10 i
        writer.write_on_batch_end(Rank, None, (torch.tensor(index), latents), None, None, 0)
    with pytest.raises(RuntimeError, match=re.escape("the ranks encoded 3 latents for 4 images (1 missing, 0 repeated)")):
        _read_parts(tmp_path, 4)
    writer.write_on_batch_end(Rank, None, (torch.tensor([1]), torch.full((1, 2, 1, 1), 10.0)), None, None, 0)
    arrays, part, row = _read_parts(tmp_path, 4)
    assert [float(arrays[p][r][0, 0, 0]) for p, r in zip(part, row)] == [0.0, 10.0, 20.0, 30.0]  # in index order
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["part-rank00001-000000.index.npy", "part-rank00001-000000.latents.npy"]


def test_missing_diffusers_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'fastgen-dm[vae]'")):
        load_vae("stabilityai/sd-vae-ft-mse")


def test_bad_arguments_fail_early(world, tmp_path):
    root, paths, vae_dir, out = world
    with pytest.raises(FileNotFoundError, match=r"--vae '/no/such/vae' is not a folder"):
        load_vae("/no/such/vae")
    with pytest.raises(ValueError, match=r"--vae '.*': cannot load an AutoencoderKL from the folder"):
        load_vae(tmp_path)
    image_zip = out / "imagenet-256" / "imagenet-256x256.zip"
    with pytest.raises(ValueError, match=re.escape("--batch-size must be an int >= 1, got 0")):
        encode_latent_zip(image_zip, tmp_path / "x.zip", vae=vae_dir, batch_size=0)
    with pytest.raises(ValueError, match=re.escape("strategy 'ddp' is not supported")):
        encode_latent_zip(image_zip, tmp_path / "x.zip", vae=vae_dir, strategy="ddp")
    with pytest.raises(ValueError, match=re.escape("--precision '16-mixed' is unknown")):
        prepare_imagenet_256(root, tmp_path, vae=vae_dir, precision="16-mixed")
    assert list(tmp_path.iterdir()) == []


def test_check_latent_zip_refuses_damaged_or_foreign_zips(tmp_path):
    good = tmp_path / "good.zip"
    with EDMZipWriter(good, member_prefix="img-mean-std") as writer:
        for label in (3, 1):
            writer.add_array(np.ones((8, 4, 4), np.float32), label)
    check_latent_zip(good, expected_items=2, labels=[3, 1], shape=(8, 4, 4))
    with pytest.raises(ValueError, match=re.escape("does not hold the image zip's labels in order")):
        check_latent_zip(good, expected_items=2, labels=[1, 3])
    with pytest.raises(ValueError, match=re.escape("holds (8, 4, 4) latents, expected (8, 32, 32)")):
        check_latent_zip(good, expected_items=2, shape=(8, 32, 32))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"is not a readable zip .*; delete it or rewrite it with --force"):
        check_latent_zip(truncated, expected_items=2)
    images = tmp_path / "images.zip"
    with EDMZipWriter(images) as writer:
        writer.add_image(np.zeros((4, 4, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=re.escape("member 0 is '00000/img00000000.png', expected '00000/img-mean-std-00000000.npy'")):
        check_latent_zip(images, expected_items=1)
