"""A stored tensor's shape from its file's first bytes: npy headers, torch.save's pickle run without building anything."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_dm.format.tensor_header import tensor_shape


def saved(tensor) -> bytes:
    out = io.BytesIO()
    torch.save(tensor, out)
    return out.getvalue()


def test_shapes_are_read_from_headers_without_loading_the_tensor():
    for shape, dtype in [((4, 32, 32), torch.float32), ((16, 5, 30, 40), torch.bfloat16), ((3,), torch.float16)]:
        assert tensor_shape(saved(torch.zeros(shape, dtype=dtype))[:4096], "pth") == shape
    array = io.BytesIO()
    np.save(array, np.zeros((4, 8, 8), np.float16))
    assert tensor_shape(array.getvalue()[:256], "npy") == (4, 8, 8)
    assert tensor_shape(saved({"a": torch.zeros(2)}), "pth") is None  # not one tensor
    assert tensor_shape(saved(torch.zeros(4, 32, 32))[:100], "pth") is None  # cut before its pickle ends


@settings(max_examples=200, deadline=None)
@given(head=st.binary(max_size=600), cut=st.integers(0, 2000), extension=st.sampled_from(["pth", "npy"]))
def test_no_bytes_make_the_header_reader_raise_or_load_anything(head, cut, extension):
    real = saved(torch.zeros(2, 3, 4))
    for data in (head, real[:cut] + head, b"PK\x03\x04" + head):
        shape = tensor_shape(data, extension)
        assert shape is None or all(isinstance(n, int) for n in shape)




def test_npy_headers_of_both_versions_and_saved_parameters():
    for version in ((1, 0), (2, 0)):
        out = io.BytesIO()
        np.lib.format.write_array(out, np.zeros((2, 3, 5), np.float32, order="F"), version=version)
        assert tensor_shape(out.getvalue()[:512], "npy") == (2, 3, 5)
    assert tensor_shape(saved(torch.nn.Parameter(torch.zeros(4, 6))), "pth") == (4, 6)


class _Runs:
    """A pickle that would run ``touch`` if its global were built."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_a_pickle_naming_any_other_global_is_no_shape_and_runs_nothing(tmp_path):
    target = tmp_path / "ran"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:  # torch.save's layout, a hostile data.pkl
        zf.writestr("archive/data.pkl", pickle.dumps(_Runs(target), protocol=2))
    assert tensor_shape(out.getvalue(), "pth") is None and not target.exists()
    assert tensor_shape(pickle.dumps(torch.zeros(2)), "pth") is None  # legacy (not zip) format: no shape
