"""The one image opener: whitelisted formats (Ghostscript never starts), the bomb limit, named errors.

Ghostscript is installed on the test machines (``make install`` adds Debian's ``ghostscript``).
A ``gs`` wrapper first on PATH records every start before running the real one; a positive
control shows Pillow starting it for EPS bytes outside the opener, and every other test shows
the same bytes reaching no ``gs`` through each family, each tool and ``prepare``.
"""

import io
import json
import os
import re
import shlex
import shutil
import struct
import zipfile
import zlib

import numpy as np
import PIL.EpsImagePlugin
import PIL.Image
import pytest
import webdataset
from helpers import random_images, write_zip

from fastgen_dm import ImageFolderDataModule, ImageWDSDataModule
from fastgen_dm.cli.main import main
from fastgen_dm.decode import decode_image, decoder_for, open_image
from fastgen_dm.format import IMAGE_EXTENSIONS, IMAGE_FORMATS, is_image_name
from fastgen_dm.index import scan_edm
from fastgen_dm.prepare.zip_check import check_edm_zip

#: A complete EPS that Ghostscript renders: an 8x8 blue square.
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 1 setrgbcolor 0 0 8 8 rectfill\nshowpage\n%%EOF\n"


def encode(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_header_only(width, height):
    """A PNG that declares ``width`` x ``height`` RGB pixels and holds one row: a decompression bomb's header."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1))) + chunk(b"IEND", b"")


@pytest.fixture
def gs_runs(tmp_path, monkeypatch):
    """The file a ``gs`` wrapper first on PATH appends to whenever it starts (absent: it never ran)."""
    record = tmp_path / "gs-started"
    real = shutil.which("gs")
    folder = tmp_path / "spy-bin"
    folder.mkdir()
    wrapper = folder / "gs"
    run_real = f'exec {shlex.quote(real)} "$@"\n' if real else "exit 1\n"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(record))}\n{run_real}')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(PIL.EpsImagePlugin, "gs_binary", None)  # Pillow remembers which gs it found
    return record


def run(*args):
    try:
        return main([str(a) for a in args])
    except SystemExit as exit_info:
        return exit_info.code


# -- the format list ----------------------------------------------------------------------------


def test_one_extension_list_derived_from_the_format_whitelist():
    assert IMAGE_EXTENSIONS == {e for exts in IMAGE_FORMATS.values() for e in exts}
    assert {"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm"} <= IMAGE_EXTENSIONS
    assert not {"eps", "ps", "pdf", "epsf", "svg"} & IMAGE_EXTENSIONS
    assert is_image_name("00000/img00000000.PNG") and is_image_name("n01/x.JPEG")
    assert not is_image_name("00000/page.eps") and not is_image_name("png") and not is_image_name("a.png/readme")


def test_pillows_decompression_bomb_limit_is_left_on():
    import fastgen_dm.cli.main  # noqa: F401  (imports the tools, the families and prepare)

    assert PIL.Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # Pillow's default


# -- the opener ---------------------------------------------------------------------------------


def test_positive_control_pillow_alone_starts_gs_for_eps_bytes(gs_runs):
    with PIL.Image.open(io.BytesIO(EPS)) as img:  # no format whitelist: what the package never does
        assert img.format == "EPS"
        try:
            img.load()
        except OSError:
            pass  # without a real Ghostscript the wrapper exits 1; it has started all the same
    assert gs_runs.exists()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM"])
def test_every_whitelisted_format_opens(fmt):
    pixels = random_images(1, size=6)[0]
    with open_image(encode(PIL.Image.fromarray(pixels), fmt)) as img:
        assert img.format in (fmt, "MPO") and img.size == (6, 6)


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (EPS, "d.zip: 00000/img00000001.png", "cannot identify image file 'd.zip: 00000/img00000001.png': not an image in an allowed format (JPEG, PNG"),
        (EPS, None, "cannot identify image file: not an image in an allowed format"),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "x.jpg", "cannot identify image file 'x.jpg': not an image"),
        (b"", "empty.png", "cannot identify image file 'empty.png'"),
    ],
    ids=["eps named", "eps unnamed", "pdf", "empty"],
)
def test_other_formats_are_refused_unopened_with_the_name(gs_runs, data, name, message):
    with pytest.raises(PIL.UnidentifiedImageError, match=re.escape(message)):
        decode_image(data, name=name)
    assert not gs_runs.exists()


def test_a_file_path_opens_and_an_eps_file_named_jpeg_is_refused(gs_runs, tmp_path):
    good, bad = tmp_path / "good.JPEG", tmp_path / "bad.JPEG"
    good.write_bytes(encode(PIL.Image.new("RGB", (5, 4)), "JPEG"))
    bad.write_bytes(EPS)
    with open_image(good) as img:
        assert img.size == (5, 4)
    with pytest.raises(PIL.UnidentifiedImageError, match=re.escape(f"cannot identify image file {str(bad)!r}")):
        open_image(bad)
    assert not gs_runs.exists()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, the opener raises
@pytest.mark.parametrize(("width", "height"), [(10_000, 10_000), (30_000, 30_000)], ids=["over the limit", "over twice the limit"])
def test_a_decompression_bomb_is_refused_from_its_header(width, height):
    # 10000^2 is where Pillow only warns; 30000^2 is where Pillow raises itself
    with pytest.raises(PIL.Image.DecompressionBombError, match=r"^bomb\.png: .*pixels"):
        decode_image(png_header_only(width, height), name="bomb.png")


def test_the_decoder_table_uses_the_opener(gs_runs):
    assert decoder_for("jpg")(encode(PIL.Image.new("L", (3, 2)))).shape == (2, 3, 1)
    with pytest.raises(PIL.UnidentifiedImageError, match="not an image in an allowed format"):
        decoder_for("jpg")(EPS)
    assert not gs_runs.exists()


# -- every family, tool and prepare: EPS bytes never reach gs ------------------------------------


def eps_zip(path, eps_member="00000/img00000002.png", eps_file=True):
    """Six labelled PNGs with EPS bytes in ``eps_member`` (a .png name), and ``00000/page.eps`` unless not ``eps_file``."""
    write_zip(path, random_images(6, size=8), labels=[0, 1, 0, 1, 0, 1])
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members[eps_member] = EPS
    with zipfile.ZipFile(path, "w") as zf:
        if eps_file:
            zf.writestr("00000/page.eps", EPS)
        for name, data in members.items():  # dataset.json stays last, as EDM writes it
            zf.writestr(name, data)
    return path


def test_zip_family_eps_member_is_no_item_and_eps_bytes_are_a_counted_skip(gs_runs, tmp_path):
    path = str(eps_zip(tmp_path / "eps.zip"))
    assert "00000/page.eps" not in scan_edm(path).members
    skipped = tmp_path / "skipped"
    dm = ImageFolderDataModule(path, batch_size=8, num_workers=0, shuffle=False, max_skip_fraction=0.5, skipped_index_dir=str(skipped))
    dm.setup("fit")
    ids = [i for batch in dm.train_dataloader() for i in batch["idx"].tolist()]
    assert ids == [0, 1, 3, 4, 5]
    assert [json.loads(p.read_text()) for p in skipped.glob("*.json")] == [{"eps.zip": ["00000/img00000002.png"]}]
    assert not gs_runs.exists()


def test_zip_family_eps_first_item_is_a_named_error_in_setup(gs_runs, tmp_path):
    path = str(eps_zip(tmp_path / "first.zip", eps_member="00000/img00000000.png"))
    dm = ImageFolderDataModule(path, batch_size=8, num_workers=0)
    with pytest.raises(PIL.UnidentifiedImageError, match=re.escape(f"cannot identify image file '{path}: 00000/img00000000.png'")):
        dm.setup("fit")
    assert not gs_runs.exists()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_raw_image_family_eps_in_a_jpg_member_is_a_counted_skip(gs_runs, tmp_path, num_workers):
    folder = tmp_path / "shards"
    folder.mkdir()
    with webdataset.TarWriter(str(folder / "00000.tar")) as sink:
        for i in range(6):
            data = EPS if i == 3 else encode(PIL.Image.fromarray(random_images(1, size=16, seed=i)[0]), "JPEG")
            sink.write({"__key__": f"{i:06d}", "jpg": data, "txt": b"caption"})
    skipped = tmp_path / "skipped"
    dm = ImageWDSDataModule([f"WDS:{folder}"], batch_size=2, input_res=8, num_workers=num_workers, shuffle=False,
                            index_dir=str(tmp_path / "index"), max_skip_fraction=0.5, skipped_index_dir=str(skipped))  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    keys = [key for batch in dm.train_dataloader() for key in batch["fname"]]
    assert sorted(keys) == ["000000", "000001", "000002", "000004", "000005"]
    assert [json.loads(p.read_text()) for p in skipped.glob("*.json") if json.loads(p.read_text())] == [{"00000.tar": ["000003"]}]
    assert not gs_runs.exists()


def test_verify_reports_eps_bytes_as_a_bad_member(gs_runs, tmp_path, capsys):
    path = eps_zip(tmp_path / "eps.zip")
    code = run("verify", "--data", "ImageFolderDataModule", "--data.dataset_path", path, "--data.num_workers", "1",
               "--data.batch_size", "4", "--out", tmp_path / "ignore.json", "--no-progress")  # fmt: skip
    assert code == 1
    assert "ImageFolderDataModule: 5 samples ok, 1 bad, 6 planned" in capsys.readouterr().out
    assert json.loads((tmp_path / "ignore.json").read_text()) == {"eps.zip": ["00000/img00000002.png"]}
    assert not gs_runs.exists()


def test_prepare_imagenet_leaves_out_eps_bytes_in_a_jpeg_file(gs_runs, tmp_path, capsys):
    wnid = tmp_path / "imagenet" / "ILSVRC/Data/CLS-LOC/train" / "n01000001"
    wnid.mkdir(parents=True)
    for i in range(3):
        (wnid / f"img{i}.JPEG").write_bytes(encode(PIL.Image.fromarray(random_images(1, size=70, seed=i)[0]), "JPEG"))
    (wnid / "img1.JPEG").write_bytes(EPS)
    (wnid / "page.eps").write_bytes(EPS)  # not an image name: not listed
    code = run("prepare", "imagenet-64", "--imagenet-source", tmp_path / "imagenet", "--output-dir", tmp_path / "out",
               "--workers", "1", "--on-bad-image", "skip")  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "wrote 2 images to" in out and "left out 1 unreadable images:" in out
    assert re.search(r"img1\.JPEG: UnidentifiedImageError: cannot identify image file .*img1\.JPEG", out)
    assert not gs_runs.exists()


def test_checking_an_existing_zip_refuses_eps_bytes_in_its_first_image(gs_runs, tmp_path):
    path = eps_zip(tmp_path / "eps.zip", eps_member="00000/img00000000.png", eps_file=False)
    with pytest.raises(ValueError, match=r"its first image '00000/img00000000\.png' cannot be read \(cannot identify image file"):
        check_edm_zip(path, resolution=8)
    assert not gs_runs.exists()


def test_folder_dataset_eps_named_png_is_a_counted_skip(gs_runs, tmp_path):
    folder = tmp_path / "folder" / "00000"
    folder.mkdir(parents=True)
    for i, pixels in enumerate(random_images(4, size=8)):
        (folder / f"img{i:08d}.png").write_bytes(EPS if i == 2 else encode(PIL.Image.fromarray(pixels)))
    dm = ImageFolderDataModule(str(folder.parent), batch_size=4, num_workers=0, shuffle=False, max_skip_fraction=0.5)
    dm.setup("fit")
    assert [i for batch in dm.train_dataloader() for i in batch["idx"].tolist()] == [0, 1, 3]
    assert not gs_runs.exists()


def test_decoded_pixels_are_unchanged(tmp_path):
    pixels = random_images(1, size=9)[0]
    np.testing.assert_array_equal(decode_image(encode(PIL.Image.fromarray(pixels))), pixels)
