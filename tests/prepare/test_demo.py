"""Tests for fastgen_dm.prepare.demo: deterministic, balanced, EDM-format demo datasets."""

from __future__ import annotations

import collections
import io
import json
import random
import re
import zipfile

import numpy as np
import PIL.Image
import pytest

from fastgen_dm.prepare import write_demo_latent_zip, write_demo_zip
from fastgen_dm.prepare.demo import _SHAPES


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _labels(members: dict[str, bytes]) -> list[list]:
    return json.loads(members["dataset.json"])["labels"]


def test_demo_zip_layout_shape_and_labels(tmp_path) -> None:
    path = tmp_path / "sub" / "demo.zip"
    assert write_demo_zip(path, num_images=40, resolution=32, num_classes=4) == path
    members = _members(path)
    names = [f"00000/img{i:08d}.png" for i in range(40)]
    assert list(members) == names + ["dataset.json"]
    labels = _labels(members)
    assert [name for name, _ in labels] == names
    assert collections.Counter(label for _, label in labels) == {0: 10, 1: 10, 2: 10, 3: 10}
    for name in names[:4]:
        image = PIL.Image.open(io.BytesIO(members[name]))
        assert image.mode == "RGB"
        array = np.asarray(image)
        assert array.shape == (32, 32, 3) and array.dtype == np.uint8
        assert array.std() > 10  # a shape on a background, not a flat image


def test_demo_zip_is_deterministic(tmp_path) -> None:
    state = random.getstate(), np.random.get_state()[1].copy()
    a = _members(write_demo_zip(tmp_path / "a.zip", num_images=12, seed=3))
    b = _members(write_demo_zip(tmp_path / "b.zip", num_images=12, seed=3))
    c = _members(write_demo_zip(tmp_path / "c.zip", num_images=12, seed=4))
    assert a == b
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert list(a) == list(c) and _labels(a) == _labels(c)
    assert all(a[name] != c[name] for name in a if name != "dataset.json")
    # The global RNGs are neither used nor touched.
    assert random.getstate() == state[0]
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])


def test_demo_zip_prefix_stable(tmp_path) -> None:
    small = _members(write_demo_zip(tmp_path / "s.zip", num_images=5, num_classes=2))
    large = _members(write_demo_zip(tmp_path / "l.zip", num_images=9, num_classes=2))
    assert all(large[name] == data for name, data in small.items() if name != "dataset.json")


@pytest.mark.parametrize(("num_images", "num_classes"), [(30, 1), (37, 7), (50, 20)])
def test_demo_zip_all_classes_present_and_balanced(tmp_path, num_images, num_classes) -> None:
    labels = _labels(_members(write_demo_zip(
        tmp_path / "d.zip", num_images=num_images, resolution=8, num_classes=num_classes
    )))
    counts = collections.Counter(label for _, label in labels)
    assert sorted(counts) == list(range(num_classes))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_demo_zip_classes_differ(tmp_path) -> None:
    """Mean images per class differ: each class is a distinct shape kind or colour family."""
    num_classes = len(_SHAPES) * 2
    path = write_demo_zip(tmp_path / "d.zip", num_images=num_classes * 8, num_classes=num_classes)
    members = _members(path)
    per_class: dict[int, list[np.ndarray]] = collections.defaultdict(list)
    for name, label in _labels(members):
        per_class[label].append(np.asarray(PIL.Image.open(io.BytesIO(members[name])), np.float32))
    hues = {}
    for label, images in per_class.items():
        # Foreground pixels are the most saturated ones; their mean colour shows the family.
        pixels = np.concatenate([im.reshape(-1, 3) for im in images])
        saturation = pixels.max(1) - pixels.min(1)
        hues[label] = pixels[saturation > np.percentile(saturation, 90)].mean(0)
    # Classes c and c + 8 share a shape but not a colour family.
    for c in range(len(_SHAPES)):
        assert np.abs(hues[c] - hues[c + len(_SHAPES)]).max() > 20, c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0}, "num_images must be an int >= 1, got 0"),
        ({"num_images": 2.5}, "num_images must be an int >= 1, got 2.5"),
        ({"resolution": 7}, "resolution must be an int >= 8, got 7"),
        ({"resolution": True}, "resolution must be an int >= 8, got True"),
        ({"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
        (
            {"num_images": 3, "num_classes": 4},
            "num_images must be >= num_classes (4) so that every class is present, got 3",
        ),
    ],
)
def test_demo_zip_argument_errors(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_demo_zip(tmp_path / "d.zip", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_demo_zip_progress_bar(tmp_path, capsys) -> None:
    write_demo_zip(tmp_path / "d.zip", num_images=4, resolution=8, show_progress=True)
    assert "demo images" in capsys.readouterr().err
    write_demo_zip(tmp_path / "d.zip", num_images=4, resolution=8)
    assert capsys.readouterr().err == ""


def test_demo_latent_zip(tmp_path) -> None:
    kwargs = {"num_items": 12, "shape": (8, 4, 4), "num_classes": 3}
    members = _members(write_demo_latent_zip(tmp_path / "lat.zip", **kwargs))
    names = [f"00000/img-mean-std-{i:08d}.npy" for i in range(12)]
    assert list(members) == names + ["dataset.json"]
    assert _labels(members) == [[name, i % 3] for i, name in enumerate(names)]
    arrays = [np.load(io.BytesIO(members[name]), allow_pickle=False) for name in names]
    for array in arrays:
        assert array.shape == (8, 4, 4) and array.dtype == np.float32
        assert (array[4:] > 0).all()  # stds
    assert _members(write_demo_latent_zip(tmp_path / "b.zip", **kwargs)) == members
    other = _members(write_demo_latent_zip(tmp_path / "c.zip", seed=1, **kwargs))
    assert all(other[name] != members[name] for name in names)


def test_demo_latent_zip_defaults(tmp_path) -> None:
    members = _members(write_demo_latent_zip(tmp_path / "lat.zip"))
    assert len(members) == 257
    array = np.load(io.BytesIO(members["00000/img-mean-std-00000255.npy"]), allow_pickle=False)
    assert array.shape == (8, 32, 32)
    assert 0.5 < float(array[:4].std()) * 0.18215 < 2.0  # about unit scale after the VAE factor


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_items": 0}, "num_items must be an int >= 1, got 0"),
        ({"shape": (7, 32, 32)}, "an even channel count (mean and std), got (7, 32, 32)"),
        ({"shape": (8, 32)}, "got (8, 32)"),
        ({"shape": (8, 0, 32)}, "got (8, 0, 32)"),
        ({"shape": "abc"}, "got 'abc'"),
        ({"num_classes": 0}, "num_classes must be an int >= 1, got 0"),
        ({"num_items": 2, "num_classes": 3}, "num_items must be >= num_classes (3)"),
    ],
)
def test_demo_latent_zip_argument_errors(tmp_path, kwargs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        write_demo_latent_zip(tmp_path / "d.zip", **kwargs)
