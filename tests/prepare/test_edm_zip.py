"""Tests for fastgen_dm.prepare.edm_zip: EDM's zip layout, exactly."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np
import PIL.Image
import pytest

from fastgen_dm.prepare import EDMZipWriter, member_name


def _tiny_images(n: int, shape: tuple[int, ...] = (2, 2, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(n)]


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)))


@pytest.mark.parametrize(
    ("index", "prefix", "suffix", "expected"),
    [
        (0, "img", ".png", "00000/img00000000.png"),
        (999, "img", ".png", "00000/img00000999.png"),
        (1000, "img", ".png", "00001/img00001000.png"),
        (1281166, "img", ".png", "01281/img01281166.png"),
        (7, "img-mean-std", ".npy", "00000/img-mean-std-00000007.npy"),
        (7, "lat-", ".npy", "00000/lat-00000007.npy"),
    ],
)
def test_member_name(index: int, prefix: str, suffix: str, expected: str) -> None:
    assert member_name(index, prefix, suffix) == expected


def test_layout_names_order_storage_and_labels(tmp_path) -> None:
    path = tmp_path / "nested" / "out.zip"  # parent folders are created
    images = _tiny_images(1002)
    with EDMZipWriter(path) as writer:
        assert writer.count == 0
        for i, img in enumerate(images):
            assert writer.add_image(img, label=i % 10) == i
        assert writer.count == 1002
    assert writer.path == path

    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [info.filename for info in infos]
        expected = [f"{i:08d}"[:5] + f"/img{i:08d}.png" for i in range(1002)]
        assert names == expected + ["dataset.json"]
        assert names[999:1001] == ["00000/img00000999.png", "00001/img00001000.png"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
        assert json.loads(zf.read("dataset.json")) == {
            "labels": [[name, i % 10] for i, name in enumerate(expected)]
        }
        for i in (0, 999, 1000, 1001):
            np.testing.assert_array_equal(_decode(zf.read(expected[i])), images[i])
    assert os.listdir(path.parent) == ["out.zip"]  # no temporary file left


def test_png_is_encoded_like_edm(tmp_path) -> None:
    img = _tiny_images(1, (4, 5, 3))[0]
    with EDMZipWriter(tmp_path / "a.zip") as writer:
        writer.add_image(img, 3)
    expected = io.BytesIO()
    PIL.Image.fromarray(img, "RGB").save(expected, format="png", compress_level=0, optimize=False)
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert zf.read("00000/img00000000.png") == expected.getvalue()
        assert json.loads(zf.read("dataset.json")) == {"labels": [["00000/img00000000.png", 3]]}


def test_unlabelled_writes_null(tmp_path) -> None:
    with EDMZipWriter(tmp_path / "a.zip") as writer:
        for img in _tiny_images(3):
            writer.add_image(img)
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert zf.namelist()[-1] == "dataset.json"
        assert zf.read("dataset.json") == b'{"labels": null}'


def test_numpy_integer_labels_are_written_as_ints(tmp_path) -> None:
    with EDMZipWriter(tmp_path / "a.zip") as writer:
        writer.add_image(_tiny_images(1)[0], np.int64(6))
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert json.loads(zf.read("dataset.json")) == {"labels": [["00000/img00000000.png", 6]]}


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 1)])
def test_grayscale_round_trips(tmp_path, shape: tuple[int, ...]) -> None:
    img = _tiny_images(1, shape)[0]
    with EDMZipWriter(tmp_path / "g.zip") as writer:
        writer.add_image(img, 0)
    with zipfile.ZipFile(tmp_path / "g.zip") as zf:
        data = zf.read("00000/img00000000.png")
    assert PIL.Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(_decode(data), img.reshape(3, 4))


def test_pil_images_are_accepted(tmp_path) -> None:
    rgb, gray = _tiny_images(1)[0], _tiny_images(1, (2, 2))[0]
    with EDMZipWriter(tmp_path / "a.zip") as writer:
        writer.add_image(PIL.Image.fromarray(rgb, "RGB"), 0)
        writer.add_image(rgb, 1)
    with EDMZipWriter(tmp_path / "b.zip") as writer:
        writer.add_image(PIL.Image.fromarray(gray, "L"))
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        np.testing.assert_array_equal(_decode(zf.read("00000/img00000000.png")), rgb)
        assert zf.read("00000/img00000000.png") == zf.read("00000/img00000001.png")
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        np.testing.assert_array_equal(_decode(zf.read("00000/img00000000.png")), gray)


def test_arrays_round_trip_as_npy(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((8, 4, 4)).astype(np.float32) for _ in range(3)]
    with EDMZipWriter(tmp_path / "lat.zip", member_prefix="img-mean-std") as writer:
        for i, array in enumerate(arrays):
            assert writer.add_array(array, label=i) == i
    with zipfile.ZipFile(tmp_path / "lat.zip") as zf:
        names = [f"00000/img-mean-std-{i:08d}.npy" for i in range(3)]
        assert zf.namelist() == names + ["dataset.json"]
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        for name, array in zip(names, arrays):
            loaded = np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
            assert loaded.dtype == np.float32
            np.testing.assert_array_equal(loaded, array)
        labels = json.loads(zf.read("dataset.json"))["labels"]
        assert labels == [[name, i] for i, name in enumerate(names)]


def test_same_content_gives_same_bytes(tmp_path) -> None:
    for name in ("a.zip", "b.zip"):
        with EDMZipWriter(tmp_path / name) as writer:
            for img in _tiny_images(3):
                writer.add_image(img, 1)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_exception_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "out.zip"
    with pytest.raises(KeyError, match="boom"):
        with EDMZipWriter(path) as writer:
            writer.add_image(_tiny_images(1)[0], 0)
            assert any(p.name.startswith("out.zip.tmp-") for p in tmp_path.iterdir())
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_exception_keeps_an_existing_file(tmp_path) -> None:
    path = tmp_path / "out.zip"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with EDMZipWriter(path) as writer:
            writer.add_image(_tiny_images(1)[0])
            raise RuntimeError
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_success_replaces_an_existing_file(tmp_path) -> None:
    path = tmp_path / "out.zip"
    path.write_bytes(b"old")
    with EDMZipWriter(path) as writer:
        writer.add_image(_tiny_images(1)[0])
    assert zipfile.is_zipfile(path)
    assert list(tmp_path.iterdir()) == [path]


def test_mixed_labelled_and_unlabelled_is_an_error(tmp_path) -> None:
    img = _tiny_images(1)[0]
    message = "label is None at index 1, but earlier items were labelled; label every item or none"
    with pytest.raises(ValueError, match=re.escape(message)):
        with EDMZipWriter(tmp_path / "a.zip") as writer:
            writer.add_image(img, 0)
            writer.add_image(img)
    message = "label is 2 at index 2, but earlier items were unlabelled"
    with pytest.raises(ValueError, match=re.escape(message)):
        with EDMZipWriter(tmp_path / "b.zip") as writer:
            writer.add_image(img)
            writer.add_image(img)
            writer.add_image(img, 2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("img", "error", "message"),
    [
        (np.zeros((2, 2, 3), np.float32), ValueError, "must be a uint8 array, got dtype float32"),
        (
            np.zeros((2, 2, 4), np.uint8),
            ValueError,
            "img must have shape (H, W, 3), (H, W, 1) or (H, W), got (2, 2, 4)",
        ),
        (np.zeros(4, np.uint8), ValueError, "got (4,)"),
        (PIL.Image.new("RGBA", (2, 2)), ValueError, "got mode 'RGBA'; pass img.convert('RGB')"),
        ([[0]], TypeError, "img must be a numpy array or a PIL Image, got list"),
    ],
)
def test_bad_images_are_refused(tmp_path, img, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        with EDMZipWriter(tmp_path / "a.zip") as writer:
            writer.add_image(img)


@pytest.mark.parametrize("label", [-1, 1.0, True, "3"])
def test_bad_labels_are_refused(tmp_path, label) -> None:
    message = f"label must be an int >= 0 or None, got {label!r} (index 0)"
    with pytest.raises(ValueError, match=re.escape(message)):
        with EDMZipWriter(tmp_path / "a.zip") as writer:
            writer.add_image(_tiny_images(1)[0], label)


def test_items_must_match(tmp_path) -> None:
    message = "item at index 1 is png (3, 3, 3) uint8, but earlier items are png (2, 2, 3) uint8"
    with pytest.raises(ValueError, match=re.escape(message)):
        with EDMZipWriter(tmp_path / "a.zip") as writer:
            writer.add_image(_tiny_images(1, (2, 2, 3))[0])
            writer.add_image(_tiny_images(1, (3, 3, 3))[0])
    with pytest.raises(ValueError, match=re.escape("item at index 1 is npy")):
        with EDMZipWriter(tmp_path / "b.zip") as writer:
            writer.add_image(_tiny_images(1)[0])
            writer.add_array(np.zeros((2, 2, 3), np.uint8))
    message = "array must not hold Python objects, got dtype object"
    with pytest.raises(ValueError, match=re.escape(message)):
        with EDMZipWriter(tmp_path / "c.zip") as writer:
            writer.add_array(np.array([None]))


@pytest.mark.parametrize("prefix", ["", "a/b", "..", 3])
def test_bad_member_prefix_is_refused(tmp_path, prefix) -> None:
    with pytest.raises(ValueError, match=re.escape(f"got {prefix!r}")):
        EDMZipWriter(tmp_path / "a.zip", member_prefix=prefix)


def test_items_only_inside_the_with_block(tmp_path) -> None:
    writer = EDMZipWriter(tmp_path / "a.zip")
    with pytest.raises(RuntimeError, match="only inside its 'with' block"):
        writer.add_image(_tiny_images(1)[0])
    with writer:
        pass
    with pytest.raises(RuntimeError, match="can be entered only once"):
        with writer:
            pass
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:  # an empty dataset is still a valid zip
        assert zf.namelist() == ["dataset.json"]
