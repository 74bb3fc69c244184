"""Tests for fastgen_dm.prepare.imagenet: ImageNet train folders to 64x64 EDM zips.

A small tree of real JPEGs (odd sizes, grayscale, CMYK, one smaller than 64) under three wnids;
both crops are checked against the math re-implemented here with numpy and PIL, as EDM's and
ADM's code write it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from helpers import write_zip

from fastgen_dm.prepare.imagenet import (
    BadImageError,
    center_crop_dhariwal,
    center_crop_edm,
    convert_imagenet,
    list_imagenet_train,
    prepare_imagenet_64,
)

TRAIN = Path("ILSVRC/Data/CLS-LOC/train")
# wnid -> [(file name, (W, H), mode)]; written in this (unsorted) order.
TREE = {
    "n02000002": [("x_300x200.JPEG", (300, 200), "RGB"), ("y_129x129.JPEG", (129, 129), "RGB"), ("e_cmyk.JPEG", (70, 90), "CMYK")],
    "n01000001": [("b_97x61.JPEG", (97, 61), "RGB"), ("a_61x97.JPEG", (61, 97), "RGB"), ("c_gray.JPEG", (80, 50), "L")],
    "n03000003": [
        ("m_64x64.JPEG", (64, 64), "RGB"),
        ("k_40x30.JPEG", (40, 30), "RGB"),
        ("p_513x300.JPEG", (513, 300), "RGB"),
        ("q_icc.JPEG", (90, 70), "RGB+icc"),  # an ICC profile must not reach the PNG
    ],
}
WNIDS = sorted(TREE)


def _picture(size: tuple[int, int], mode: str, seed: int) -> PIL.Image.Image:
    """Gradients plus noise: no two crops of it look alike."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], axis=-1)
    array = np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
    image = PIL.Image.fromarray(array, "RGB")
    return image if mode.startswith("RGB") else image.convert(mode)


def make_tree(root: Path) -> list[tuple[str, int]]:
    """Write the tree; return (path, label) of every image in the expected (sorted) order."""
    seed = 0
    for wnid, files in TREE.items():
        folder = root / TRAIN / wnid
        folder.mkdir(parents=True)
        for name, size, mode in files:
            icc = {"icc_profile": b"not a real profile" * 8} if mode == "RGB+icc" else {}
            _picture(size, mode, seed).save(folder / name, format="JPEG", quality=90, **icc)
            seed += 1
        (folder / "notes.txt").write_text("not an image")
    expected = []
    for label, wnid in enumerate(WNIDS):
        expected += [(str(root / TRAIN / wnid / name), label) for name in sorted(n for n, _, _ in TREE[wnid])]
    return expected


# --- the crops, re-implemented from EDM's and ADM's code ------------------------------------


def edm_center_crop(path: str, res: int) -> np.ndarray:
    img = np.array(PIL.Image.open(path).convert("RGB"))
    crop = np.min(img.shape[:2])
    img = img[(img.shape[0] - crop) // 2 : (img.shape[0] + crop) // 2, (img.shape[1] - crop) // 2 : (img.shape[1] + crop) // 2]
    img = PIL.Image.fromarray(img, "RGB")
    img = img.resize((res, res), PIL.Image.LANCZOS)
    return np.array(img)


def adm_center_crop(path: str, image_size: int) -> np.ndarray:
    pil_image = PIL.Image.fromarray(np.array(PIL.Image.open(path).convert("RGB")))
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=PIL.Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=PIL.Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def read_zip(path: Path) -> tuple[list[str], list[np.ndarray], list[int]]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        images = [np.asarray(PIL.Image.open(io.BytesIO(zf.read(n)))) for n in names[:-1]]
        table = json.loads(zf.read("dataset.json"))["labels"]
    assert names[-1] == "dataset.json"
    assert [n for n, _ in table] == names[:-1]
    return names[:-1], images, [label for _, label in table]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    return root, make_tree(root)


def test_crop_functions_match_edm_and_adm(tree) -> None:
    _, expected = tree
    for path, _ in expected:
        image = PIL.Image.open(path)
        for res in (64, 16):
            edm = center_crop_edm(image, res)
            adm = center_crop_dhariwal(image, res)
            assert edm.mode == adm.mode == "RGB" and edm.size == adm.size == (res, res)
            np.testing.assert_array_equal(np.asarray(edm), edm_center_crop(path, res), err_msg=path)
            np.testing.assert_array_equal(np.asarray(adm), adm_center_crop(path, res), err_msg=path)


def test_crop_geometry() -> None:
    # A 97x61 image with a marked column band: EDM's crop keeps x in [18, 79).
    array = np.zeros((61, 97, 3), np.uint8)
    array[:, 18:79] = 200
    out = np.asarray(center_crop_edm(PIL.Image.fromarray(array), 61))  # 61 -> 61: the crop alone
    assert (out == 200).all()
    # Grayscale converts to three equal channels.
    gray = PIL.Image.fromarray(np.arange(100 * 70, dtype=np.uint8).reshape(70, 100) % 251, "L")
    for crop in (center_crop_edm, center_crop_dhariwal):
        rgb = np.asarray(crop(gray, 32))
        assert rgb.shape == (32, 32, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        np.testing.assert_array_equal(rgb, np.asarray(crop(gray.convert("RGB"), 32)))
    # ADM at 64: 300x200 -> BOX 150x100 -> BICUBIC 96x64 -> x in [16, 80).
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    step = image.resize((150, 100), PIL.Image.BOX).resize((96, 64), PIL.Image.BICUBIC)
    np.testing.assert_array_equal(np.asarray(center_crop_dhariwal(image, 64)), np.asarray(step)[:, 16:80])


def test_listing_order_and_labels(tree) -> None:
    root, expected = tree
    listing = list_imagenet_train(root)
    assert listing.wnids == tuple(WNIDS)
    assert list(zip(listing.files, listing.labels)) == expected
    with pytest.raises(FileNotFoundError, match=re.escape("pass the folder that holds ILSVRC/")):
        list_imagenet_train(root / TRAIN)


def test_zips_hold_both_crops_in_path_order(tree, tmp_path) -> None:
    root, expected = tree
    report = prepare_imagenet_64(root, tmp_path, workers=1, show_progress=False)
    edm_zip = tmp_path / "imagenet-64" / "imagenet-64x64.zip"
    adm_zip = tmp_path / "imagenet-64" / "imagenet-64x64-edmv2.zip"
    assert report.outputs == {"center-crop": edm_zip, "center-crop-dhariwal": adm_zip}
    assert set(report.written) == {edm_zip, adm_zip} and report.images == len(expected) and report.bad == ()
    for zip_path, reference in [(edm_zip, edm_center_crop), (adm_zip, adm_center_crop)]:
        names, images, labels = read_zip(zip_path)
        assert names == [f"00000/img{i:08d}.png" for i in range(len(expected))]
        assert labels == [label for _, label in expected] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
        for (path, _), image in zip(expected, images):
            np.testing.assert_array_equal(image, reference(path, 64), err_msg=f"{zip_path.name} {path}")
        # Byte for byte the zip EDMZipWriter.add_image writes from the expected pixels.
        write_zip(tmp_path / "reference.zip", [reference(path, 64) for path, _ in expected], labels)
        assert zip_path.read_bytes() == (tmp_path / "reference.zip").read_bytes()
    assert sorted(p.name for p in (tmp_path / "imagenet-64").iterdir()) == sorted([edm_zip.name, adm_zip.name])

    # Existing zips are checked and kept; a truncated one is reported; --force rewrites.
    mtime = edm_zip.stat().st_mtime_ns
    again = prepare_imagenet_64(root, tmp_path, workers=1, show_progress=False)
    assert again.written == () and edm_zip.stat().st_mtime_ns == mtime
    good = adm_zip.read_bytes()
    adm_zip.write_bytes(good[:-100])
    with pytest.raises(ValueError, match=r"imagenet-64x64-edmv2\.zip exists but is not a readable zip .*--force"):
        prepare_imagenet_64(root, tmp_path, workers=1, show_progress=False)
    report = prepare_imagenet_64(root, tmp_path, workers=1, force=True, show_progress=False)
    assert adm_zip.read_bytes() == good and set(report.written) == {edm_zip, adm_zip}


def test_workers_give_the_same_bytes(tree, tmp_path) -> None:
    root, _ = tree
    outputs = {}
    for workers in (1, 2):
        outputs[workers] = {
            "center-crop": tmp_path / f"w{workers}" / "a.zip",
            "center-crop-dhariwal": tmp_path / f"w{workers}" / "b.zip",
        }
        convert_imagenet(root, outputs[workers], workers=workers, show_progress=False)
    for crop in outputs[1]:
        assert outputs[1][crop].read_bytes() == outputs[2][crop].read_bytes()


@pytest.fixture
def tree_with_bad_images(tmp_path):
    root = tmp_path / "src"
    expected = make_tree(root)
    garbage = root / TRAIN / "n02000002" / "f_garbage.JPEG"
    garbage.write_bytes(b"this is not a JPEG")
    truncated = root / TRAIN / "n01000001" / "d_truncated.JPEG"
    whole = (root / TRAIN / "n01000001" / "a_61x97.JPEG").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    return root, expected, [str(truncated), str(garbage)]


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_image_fail_stops_and_leaves_nothing(tree_with_bad_images, tmp_path, workers) -> None:
    root, _, bad = tree_with_bad_images
    out = tmp_path / "out"
    with pytest.raises(BadImageError, match=rf"cannot read the image {re.escape(bad[0])} \(.*\); .*--on-bad-image skip"):
        prepare_imagenet_64(root, out, workers=workers, show_progress=False)
    assert not any((out / "imagenet-64").iterdir())


def test_bad_image_skip_leaves_out_and_lists(tree_with_bad_images, tmp_path) -> None:
    root, expected, bad = tree_with_bad_images
    report = prepare_imagenet_64(root, tmp_path / "out", workers=2, on_bad_image="skip", show_progress=False)
    assert [path for path, _ in report.bad] == bad
    assert "truncated" in report.bad[0][1] and "UnidentifiedImageError" in report.bad[1][1]
    assert report.images == len(expected)
    names, images, labels = read_zip(report.outputs["center-crop"])
    assert len(names) == len(expected) and labels == [label for _, label in expected]
    for (path, _), image in zip(expected, images):
        np.testing.assert_array_equal(image, edm_center_crop(path, 64))
    # On a rerun, the zip written with skip is accepted with skip and refused without it.
    assert prepare_imagenet_64(root, tmp_path / "out", on_bad_image="skip", show_progress=False).written == ()
    with pytest.raises(ValueError, match=rf"holds {len(expected)} images, expected {len(expected) + 2}"):
        prepare_imagenet_64(root, tmp_path / "out", show_progress=False)


def test_arguments_are_validated(tree, tmp_path) -> None:
    root, _ = tree
    with pytest.raises(ValueError, match=re.escape("--on-bad-image 'ignore' is unknown; use 'skip' or 'fail'")):
        convert_imagenet(root, {"center-crop": tmp_path / "a.zip"}, on_bad_image="ignore")
    with pytest.raises(ValueError, match=re.escape("--workers must be an int >= 1, got 0")):
        convert_imagenet(root, {"center-crop": tmp_path / "a.zip"}, workers=0)
    with pytest.raises(ValueError, match=re.escape("crop 'centre-crop' is unknown")):
        convert_imagenet(root, {"centre-crop": tmp_path / "a.zip"})


def test_cli(tree_with_bad_images, tmp_path, capsys) -> None:
    from fastgen_dm.cli import prepare as cli

    root, expected, bad = tree_with_bad_images
    args = ["imagenet-64", "--imagenet-source", str(root), "--output-dir", str(tmp_path / "data"), "--workers", "2"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert f"fastgen prepare imagenet-64: error: cannot read the image {bad[0]}" in capsys.readouterr().err
    assert cli.main([*args, "--on-bad-image", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(expected)} images to {tmp_path / 'data' / 'imagenet-64' / 'imagenet-64x64.zip'}" in out
    assert "left out 2 unreadable images:" in out and f"  {bad[1]}: UnidentifiedImageError" in out


def test_datamodules_say_how_to_prepare(tmp_path) -> None:
    from fastgen_dm.datamodules.imagenet import ImageNet64DataModule, ImageNet64EDMv2DataModule

    for cls in (ImageNet64DataModule, ImageNet64EDMv2DataModule):
        dm = cls(dataset_path=str(tmp_path / "missing.zip"), num_workers=0)
        with pytest.raises(FileNotFoundError, match=re.escape("`fastgen prepare imagenet-64 --imagenet-source DIR`")):
            dm.prepare_data()
        with pytest.raises(FileNotFoundError, match="cannot be downloaded for you"):
            dm.setup("fit")
