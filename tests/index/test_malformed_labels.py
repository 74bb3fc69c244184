"""Malformed dataset.json, shard_count_file and storage_options: a one-line error naming the file
and the field, never a bare TypeError, a RecursionError or a huge allocation."""

import json
import re
import zipfile

import pytest

from helpers import random_images, write_zip

from fastgen_dm.datamodules.image_folder import ImageFolderDataModule
from fastgen_dm.datamodules.webdataset import WDSDataModule

CASES = [
    (b"not json", "dataset.json is not EDM labels JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "dataset.json is not EDM labels JSON (RecursionError"),
    (b'{"nolabels": 1}', "dataset.json is not EDM labels JSON (KeyError"),
    (b'{"labels": "abc"}', '"labels" must be null or a list of ["<member>", <label>] pairs'),
    (b'{"labels": {"a": 1}}', '"labels" must be null or a list of ["<member>", <label>] pairs'),
    (b'{"labels": [["00000/img00000000.png"]]}', '"labels" must be null or a list of ["<member>", <label>] pairs'),
    (b'{"labels": [[1, 2]]}', '"labels" must be null or a list of ["<member>", <label>] pairs'),
]


def with_labels(path, labels_json: bytes) -> str:
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("dataset.json", labels_json)
    return str(path)


@pytest.mark.parametrize(("labels_json", "message"), CASES)
def test_malformed_dataset_json_is_a_one_line_error(tmp_path, labels_json, message):
    path = with_labels(write_zip(tmp_path / "d.zip", random_images(2, size=4)), labels_json)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        ImageFolderDataModule(path, batch_size=2, num_workers=0).setup("fit")
    assert "\n" not in str(info.value) and path in str(info.value)


@pytest.mark.parametrize("label", [-1, 1.5, True, "3", None, 10**12])
def test_a_label_that_is_not_a_small_non_negative_int_is_named(tmp_path, label):
    rows = [["00000/img00000000.png", 0], ["00000/img00000001.png", label]]
    path = with_labels(write_zip(tmp_path / "d.zip", random_images(2, size=4)), json.dumps({"labels": rows}).encode())
    with pytest.raises(ValueError, match=re.escape(f"has the label {label!r}; labels must be integers in [0, 1,000,000)")):
        ImageFolderDataModule(path, batch_size=2, num_workers=0).setup("fit")


@pytest.mark.parametrize(
    "counts", ['{"00000.tar": -1}', '{"00000.tar": "4"}', '{"00000.tar": 1.5}', '["00000.tar", 4]', '{"00000.tar": {"n": 4}}', "[" * 100_000]
)
def test_a_malformed_shard_count_file_is_a_one_line_error_naming_it(tmp_path, counts):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "00000.tar").write_bytes(b"\0" * 1024)
    (folder / "counts.json").write_text(counts)
    with pytest.raises(ValueError, match=re.escape(f"shard_count_file {folder}/counts.json")) as info:
        WDSDataModule([f"WDS:{folder}"], batch_size=2, shard_count_file="counts.json", index_dir=str(tmp_path / "i")).setup("fit")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options", ["anon=true", ["anon"], {"config_kwargs": "fast"}])
def test_storage_options_must_be_a_mapping(tmp_path, options):
    with pytest.raises(ValueError, match=r"^storage_options must be a dict of fsspec options"):
        WDSDataModule([f"WDS:{tmp_path}"], storage_options=options)
