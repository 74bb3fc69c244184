"""Tests for fastgen_dm.prepare.cifar10: the official archive to EDM's zip, safely.

The archives are built here in the official layout (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``, ``readme.html``), with 20 images per batch instead of 10000.
The official pickles were written by Python 2's cPickle: bytes keys and the array bytes as
Python-2 ``str`` (BINSTRING), numpy named ``numpy.core.multiarray``. ``_Py2Pickler`` writes
exactly that; Python 3's own protocol-2 pickles (bytes via ``_codecs.encode``) are tested too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import struct
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest

from fastgen_dm.prepare import cifar10
from fastgen_dm.prepare.cifar10 import RestrictedUnpickler, convert_cifar10, prepare_cifar10

PER_BATCH = 20
TOTAL = 5 * PER_BATCH


class _Py2Pickler(pickle._Pickler):
    """Writes the opcodes Python 2's cPickle wrote: bytes as py2 ``str``, numpy as ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None) -> None:
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def _py2_dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _py3_dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


class _RunsCommand:
    """Unpickling this runs ``touch <marker>``: what a malicious batch would hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _batches(seed: int = 0) -> list[tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8), [int(x) for x in rng.integers(0, 10, PER_BATCH)])
        for _ in range(5)
    ]


def write_archive(path, batches, dumps=_py2_dumps, extra: dict | None = None) -> str:
    """Write a cifar-10-python.tar.gz like the official one; return its MD5.

    ``extra`` adds entries to data_batch_3's dict (e.g. a malicious object).
    """
    members = {}
    for k, (data, labels) in enumerate(batches, start=1):
        batch = {
            b"batch_label": f"training batch {k} of 5".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{k}_{i}.png".encode() for i in range(len(labels))],
        }
        if k == 3 and extra:
            batch.update(extra)
        members[f"data_batch_{k}"] = dumps(batch)
    members["test_batch"] = dumps({b"batch_label": b"testing batch 1 of 1", b"labels": [0], b"data": batches[0][0][:1]})
    members["batches.meta"] = dumps(
        {b"num_cases_per_batch": PER_BATCH, b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}
    )
    members["readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=http://www.cs.toronto.edu/~kriz/cifar.html'>"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def edm_expected(batches) -> tuple[list[str], dict[str, bytes], list[list]]:
    """What EDM's dataset_tool writes from these arrays: names, PNG bytes, labels JSON."""
    images = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([labels for _, labels in batches])
    names, pngs, table = [], {}, []
    for idx, (image, label) in enumerate(zip(images, labels)):
        idx_str = f"{idx:08d}"
        name = f"{idx_str[:5]}/img{idx_str}.png"
        buffer = io.BytesIO()
        PIL.Image.fromarray(image, "RGB").save(buffer, format="png", compress_level=0, optimize=False)
        names.append(name)
        pngs[name] = buffer.getvalue()
        table.append([name, int(label)])
    return names, pngs, table


@pytest.fixture
def small_cifar(monkeypatch):
    """Make the module's 50000-image count match the small archives."""
    monkeypatch.setattr(cifar10, "CIFAR10_TRAIN_IMAGES", TOTAL)


@pytest.mark.parametrize("dumps", [_py2_dumps, _py3_dumps], ids=["python2-pickles", "python3-protocol2"])
def test_zip_matches_edm_member_by_member(tmp_path, dumps) -> None:
    batches = _batches()
    md5 = write_archive(tmp_path / "cifar-10-python.tar.gz", batches, dumps)
    # The archive really is in the official encoding: EDM's own read gives str keys and arrays.
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        raw = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_2"), encoding="latin1")
    key = "data" if dumps is _py2_dumps else b"data"
    np.testing.assert_array_equal(raw[key], batches[1][0])

    out = tmp_path / "out" / "cifar10" / "cifar10-32x32.zip"
    assert convert_cifar10(tmp_path / "cifar-10-python.tar.gz", out, expected_md5=md5, expected_images=TOTAL, show_progress=False) == out

    names, pngs, table = edm_expected(batches)
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == names + ["dataset.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        for name in names:
            data = zf.read(name)
            assert data == pngs[name]  # byte-identical to EDM's encoding
            decoded = np.asarray(PIL.Image.open(io.BytesIO(data)))
            np.testing.assert_array_equal(decoded, np.asarray(PIL.Image.open(io.BytesIO(pngs[name]))))
        assert json.loads(zf.read("dataset.json")) == {"labels": table}
    # Pixels, independently: image 25 is row 5 of batch 2, planes R, G, B.
    with zipfile.ZipFile(out) as zf:
        image = np.asarray(PIL.Image.open(io.BytesIO(zf.read("00000/img00000025.png"))))
    row = batches[1][0][5]
    np.testing.assert_array_equal(image[..., 0], row[:1024].reshape(32, 32))
    np.testing.assert_array_equal(image[..., 2], row[2048:].reshape(32, 32))
    assert [p.name for p in out.parent.iterdir()] == ["cifar10-32x32.zip"]  # no temporary left


def test_restricted_unpickler_refuses_other_globals() -> None:
    for payload, refused in [
        (pickle.dumps(_RunsCommand("x"), protocol=2), "system"),
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
        (b"csubprocess\nPopen\n(S'ls'\ntR.", "subprocess.Popen"),
        (b"cnumpy\nload\n(S'x'\ntR.", "numpy.load"),
    ]:
        with pytest.raises(pickle.UnpicklingError, match=rf"refusing to load the global [\w.]*{re.escape(refused)}"):
            RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    # _codecs.encode is admitted for latin1 text only.
    with pytest.raises(pickle.UnpicklingError, match=re.escape("refusing _codecs.encode(str, 'rot13'")):
        RestrictedUnpickler(io.BytesIO(b"c_codecs\nencode\n(X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13tR."), encoding="latin1").load()


def test_forbidden_global_is_refused_before_it_runs(tmp_path) -> None:
    marker = tmp_path / "ran"
    for name, dumps in [("py2.tar.gz", _py2_dumps), ("py3.tar.gz", _py3_dumps)]:
        archive = tmp_path / name
        md5 = write_archive(archive, _batches(), dumps, extra={b"payload": _RunsCommand(str(marker))})
        out = tmp_path / "out" / "cifar10-32x32.zip"
        with pytest.raises(pickle.UnpicklingError, match=r"data_batch_3: refusing to load the global (posix|os|nt)\.system"):
            convert_cifar10(archive, out, expected_md5=md5, expected_images=TOTAL, show_progress=False)
        assert not marker.exists()
        assert not out.parent.exists() or not any(out.parent.iterdir())


def test_wrong_md5_is_refused_before_unpickling(tmp_path) -> None:
    marker = tmp_path / "ran"
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_archive(archive, _batches(), extra={b"payload": _RunsCommand(str(marker))})
    out = tmp_path / "out" / "cifar10-32x32.zip"
    # The official MD5 (the default) does not match: refused with ValueError, not UnpicklingError.
    with pytest.raises(ValueError, match=r"has MD5 [0-9a-f]{32}, but the official CIFAR-10 archive .* has c58f30108f718f92721af3b95e74349a"):
        convert_cifar10(archive, out, expected_images=TOTAL, show_progress=False)
    assert not marker.exists() and not out.exists()


def test_image_count_is_checked(tmp_path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = write_archive(archive, _batches())
    with pytest.raises(ValueError, match=re.escape(f"holds {TOTAL} training images; CIFAR-10 has 50000")):
        convert_cifar10(archive, tmp_path / "out.zip", expected_md5=md5, show_progress=False)
    assert not (tmp_path / "out.zip").exists()


def test_not_cifar_archive_is_reported(tmp_path) -> None:
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("something/else")
        tar.addfile(info, io.BytesIO(b""))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="has no member 'cifar-10-batches-py/data_batch_1'"):
        convert_cifar10(archive, tmp_path / "out.zip", expected_md5=md5, expected_images=TOTAL, show_progress=False)


def test_existing_output_is_checked(tmp_path, monkeypatch, small_cifar) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", write_archive(archive, _batches()))
    out = tmp_path / "cifar10" / "cifar10-32x32.zip"
    prepare_cifar10(out, source=archive, show_progress=False)
    good = out.read_bytes()
    mtime = out.stat().st_mtime_ns

    # A valid zip is kept as is.
    prepare_cifar10(out, source=archive, show_progress=False)
    assert out.stat().st_mtime_ns == mtime

    # Truncated: reported, with --force suggested, and left alone.
    out.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cifar10-32x32\.zip exists but is not a readable zip .*truncated.*--force"):
        prepare_cifar10(out, source=archive, show_progress=False)
    assert len(out.read_bytes()) == len(good) // 2

    # Foreign: another EDM zip (wrong count), a zip without dataset.json, damaged data.
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("00000/img00000000.png", good[:100])
        zf.writestr("dataset.json", json.dumps({"labels": [["00000/img00000000.png", 0]]}))
    with pytest.raises(ValueError, match=rf"exists but holds 1 images, expected {TOTAL}; .*--force"):
        prepare_cifar10(out, source=archive, show_progress=False)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="exists but has no dataset.json"):
        prepare_cifar10(out, source=archive, show_progress=False)
    damaged = bytearray(good)
    damaged[200] ^= 0xFF  # inside the first PNG's data
    out.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="fails its CRC check"):
        prepare_cifar10(out, source=archive, show_progress=False)

    # --force rewrites it.
    prepare_cifar10(out, source=archive, force=True, show_progress=False)
    assert out.read_bytes() == good


def test_download_through_fetch_once(tmp_path, monkeypatch, small_cifar) -> None:
    archive = tmp_path / "src" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    md5 = write_archive(archive, _batches())
    monkeypatch.setattr(cifar10, "CIFAR10_URL", f"file://{archive}")
    out = tmp_path / "data" / "cifar10" / "cifar10-32x32.zip"

    # A wrong MD5 on a download: reported, and the damaged download is not kept.
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(ValueError, match="has MD5"):
        prepare_cifar10(out, show_progress=False)
    assert not out.exists() and not (out.parent / "cifar-10-python.tar.gz").exists()

    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
    prepare_cifar10(out, show_progress=False)
    assert (out.parent / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()  # kept for reruns
    with zipfile.ZipFile(out) as zf:
        assert len(zf.namelist()) == TOTAL + 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["cifar-10-python.tar.gz", "cifar10-32x32.zip"]


def test_datamodule_prepare_data_creates_the_zip(tmp_path, monkeypatch, small_cifar) -> None:
    from fastgen_dm.datamodules.cifar10 import CIFAR10DataModule

    archive = tmp_path / "cifar-10-python.tar.gz"
    batches = _batches(seed=5)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", write_archive(archive, batches))
    monkeypatch.setattr(cifar10, "CIFAR10_URL", f"file://{archive}")
    monkeypatch.setenv("DATA_ROOT_DIR", str(tmp_path / "root"))

    dm = CIFAR10DataModule(batch_size=10, num_workers=0, shuffle=False)
    dm.prepare_data()
    out = tmp_path / "root" / "cifar10" / "cifar10-32x32.zip"
    assert out.is_file()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["real"].shape == (10, 3, 32, 32)
    assert batch["condition"].argmax(1).tolist() == batches[0][1][:10]

    # With s3_path the base class fetches instead of converting.
    dm2 = CIFAR10DataModule(dataset_path=str(tmp_path / "copy.zip"), s3_path=f"file://{out}", num_workers=0)
    dm2.prepare_data()
    assert (tmp_path / "copy.zip").read_bytes() == out.read_bytes()


def test_cli(tmp_path, monkeypatch, capsys, small_cifar) -> None:
    from fastgen_dm.cli import prepare as cli

    archive = tmp_path / "cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", write_archive(archive, _batches()))
    args = ["cifar10", "--source", str(archive), "--output-dir", str(tmp_path / "data")]
    assert cli.main(args) == 0
    assert (tmp_path / "data" / "cifar10" / "cifar10-32x32.zip").is_file()
    assert f"wrote the {TOTAL} CIFAR-10 training images" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert "exists and passed its check (use --force to rewrite it)" in capsys.readouterr().out

    monkeypatch.setattr(cifar10, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--force"])
    assert exit_info.value.code == 2
    assert re.search(r"fastgen prepare cifar10: error: .*has MD5", capsys.readouterr().err)


def test_download_over_http(tmp_path, monkeypatch, small_cifar) -> None:
    """The real path: fsspec's HTTP filesystem, against a server on loopback."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    md5 = write_archive(served / "cifar-10-python.tar.gz", _batches())
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(cifar10, "CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz")
        monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
        out = tmp_path / "data" / "cifar10" / "cifar10-32x32.zip"
        prepare_cifar10(out, show_progress=False)
    finally:
        server.shutdown()
        thread.join()
    assert (out.parent / "cifar-10-python.tar.gz").read_bytes() == (served / "cifar-10-python.tar.gz").read_bytes()
    with zipfile.ZipFile(out) as zf:
        assert len(zf.namelist()) == TOTAL + 1
