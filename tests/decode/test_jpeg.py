"""JPEG decoding on a device: which JPEGs go there, and the batched decode with per-image errors.

On this CPU-only machine the device is the CPU (libjpeg-turbo through torchcodec); the CUDA
test runs where a GPU is present.
"""

import io

import numpy as np
import PIL.Image
import pytest
import torch

from fastgen_dm.decode.encoded import EncodedJPEG
from fastgen_dm.decode.jpeg import decode_jpegs, device_decodable
from fastgen_dm.decode.image import open_image
from helpers import bogus_huffman_table


def noise(mode="RGB", size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def jpeg(img, **params):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **params)
    return buf.getvalue()


def png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def rotated(img):
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    return jpeg(img, exif=exif.tobytes())


def unrotated_exif(img):
    exif = PIL.Image.Exif()
    exif[0x0112] = 1
    return jpeg(img, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg(noise()), True),
        (jpeg(noise("L")), True),
        (unrotated_exif(noise()), True),
        (jpeg(noise("CMYK")), False),  # nvJPEG has no CMYK
        (jpeg(noise(), progressive=True), False),
        (jpeg(noise())[:-200], False),  # truncated: no EOI marker
        (rotated(noise()), False),  # the device decoder applies EXIF rotation, the CPU path does not
        (png(noise()), False),
    ],
    ids=["rgb", "gray", "exif-orientation-1", "cmyk", "progressive", "truncated", "exif-rotated", "png"],
)
def test_only_jpegs_that_decode_the_same_on_both_sides_go_to_the_device(data, expected):
    assert device_decodable(open_image(data), data) is expected


def test_a_batch_decodes_like_pillow_and_a_bad_image_costs_only_itself():
    images = [noise(seed=i) for i in range(3)] + [noise("L", seed=3)]
    datas = [jpeg(img) for img in images]
    bad = bogus_huffman_table(datas[1])
    assert device_decodable(open_image(bad), bad)  # its header looks fine
    results = decode_jpegs([datas[0], bad, *datas[2:]], "cpu")
    assert isinstance(results[1], RuntimeError) and "Huffman" in str(results[1])
    for result, data in zip([results[0], *results[2:]], [datas[0], *datas[2:]]):
        expected = torch.from_numpy(np.array(PIL.Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert result.dtype == torch.uint8 and torch.equal(result, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_nvjpeg_on_cuda_matches_the_cpu_decode_closely():
    datas = [jpeg(noise(size=(640, 480), seed=i)) for i in range(8)]
    on_gpu = decode_jpegs(datas, "cuda")
    on_cpu = decode_jpegs(datas, "cpu")
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        mse = (gpu.cpu().float() - cpu.float()).pow(2).mean().item()
        assert 10 * np.log10(255**2 / max(mse, 1e-10)) >= 40


def test_without_torchcodecs_image_decoders_torchvisions_decode_the_same(monkeypatch):
    import torchcodec.decoders

    datas = [jpeg(noise(seed=i)) for i in range(3)] + [jpeg(noise("L", seed=3))]
    with_torchcodec = decode_jpegs(datas, "cpu")
    monkeypatch.delattr(torchcodec.decoders, "decode_jpeg")  # torchcodec < 0.16, as on older stacks
    with pytest.warns(DeprecationWarning, match="TorchVision"):  # torchvision 0.29 points to torchcodec
        with_torchvision = decode_jpegs(datas, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(with_torchcodec, with_torchvision))


def test_encoded_payloads_cross_the_transfer_and_pinning_untouched():
    """Lightning's batch transfer and the DataLoader's pinning walk into sequences item by item;
    the payloads must be passed through as they are, not rebuilt from one int per byte."""
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data._utils.pin_memory import pin_memory

    from fastgen_dm.decode.encoded import EncodedVideo

    jpeg_payload, video = EncodedJPEG(jpeg(noise())), EncodedVideo(b"\x00" * 1000, "s3://b/0.tar", "k", 0, 3)
    batch = {"real": [jpeg_payload, torch.zeros(3)], "clip": [video], "fname": ["k"]}
    for moved in (move_data_to_device(batch, torch.device("cpu")), pin_memory(batch) if torch.cuda.is_available() else batch):
        assert moved["real"][0] is jpeg_payload and moved["clip"][0] is video
    assert repr(video) == "EncodedVideo(<1000 bytes>, 's3://b/0.tar', 'k', epoch=0, draw=3)"

