"""Raw image transform: modes to RGB, resize + crop geometry, draft decoding, normalization."""

import io
import pickle
import re

import numpy as np
import PIL.Image
import PIL.JpegImagePlugin
import pytest
import torch
from torchvision import transforms as T

from fastgen_dm.prepare.demo import photo_like
from fastgen_dm.transform.image import (
    ImageTransform,
    center_crop_offsets,
    normalization_table,
    normalize_pixels,
    resized_size,
    scale_to_unit,
    to_rgb,
)


def encode(img, fmt, **params):
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def psnr(a, b):
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def pixels_of(data, exact):
    """The transform's uint8 output at the image's own (square) size: no resampling, only conversion."""
    img = PIL.Image.open(io.BytesIO(data))
    assert img.width == img.height
    return ImageTransform(img.width, normalize=False, exact_resize=exact).image(data)


# -- modes -> RGB ------------------------------------------------------------------------------


def uniform(mode, value, size=4):
    return PIL.Image.new(mode, (size, size), value)


def palette_image(transparent_index=None):
    img = PIL.Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((0, 0), 1)
    if transparent_index is not None:
        img.info["transparency"] = transparent_index
    return img


def two_pixel_alpha(mode, opaque, clear):
    """An image whose top-left pixel is ``opaque`` and all others ``clear``."""
    img = PIL.Image.new(mode, (4, 4), clear)
    img.putpixel((0, 0), opaque)
    return img


def sixteen_bit(values, mode="I;16"):
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return PIL.Image.frombytes(mode, (2, 2), np.array(values, dtype).tobytes())


CASES = [
    # (name, encoded bytes, expected pixel (0, 0), expected every other pixel)
    ("L png", encode(uniform("L", 77), "PNG"), (77, 77, 77), (77, 77, 77)),
    ("1 png", encode(two_pixel_alpha("1", 1, 0), "PNG"), (255, 255, 255), (0, 0, 0)),
    ("1 bmp", encode(two_pixel_alpha("1", 1, 0), "BMP"), (255, 255, 255), (0, 0, 0)),
    ("P png", encode(palette_image(), "PNG"), (200, 100, 50), (10, 20, 30)),
    ("P png, index 0 transparent", encode(palette_image(0), "PNG", transparency=0), (200, 100, 50), (255, 255, 255)),
    ("P gif, index 0 transparent", encode(palette_image(0), "GIF", transparency=0), (200, 100, 50), (255, 255, 255)),
    ("RGB png with tRNS", encode(uniform("RGB", (1, 2, 3)), "PNG", transparency=(1, 2, 3)), (255, 255, 255), (255, 255, 255)),
    ("RGBA png", encode(two_pixel_alpha("RGBA", (10, 20, 30, 255), (255, 0, 0, 0)), "PNG"), (10, 20, 30), (255, 255, 255)),
    ("RGBA png, half alpha", encode(uniform("RGBA", (0, 0, 0, 128)), "PNG"), (127, 127, 127), (127, 127, 127)),
    ("RGBA webp", encode(two_pixel_alpha("RGBA", (10, 20, 30, 255), (0, 0, 0, 0)), "WEBP", lossless=True), (10, 20, 30), (255, 255, 255)),
    ("RGBA tiff", encode(two_pixel_alpha("RGBA", (10, 20, 30, 255), (0, 0, 0, 0)), "TIFF"), (10, 20, 30), (255, 255, 255)),
    ("LA png", encode(two_pixel_alpha("LA", (60, 255), (0, 128)), "PNG"), (60, 60, 60), (127, 127, 127)),
    ("CMYK tiff", encode(two_pixel_alpha("CMYK", (255, 0, 0, 0), (0, 0, 0, 0)), "TIFF"), (0, 255, 255), (255, 255, 255)),
    ("CMYK tiff, black", encode(uniform("CMYK", (0, 0, 0, 255)), "TIFF"), (0, 0, 0), (0, 0, 0)),
    ("RGB bmp", encode(uniform("RGB", (9, 99, 199)), "BMP"), (9, 99, 199), (9, 99, 199)),
    ("RGB ppm", encode(uniform("RGB", (9, 99, 199)), "PPM"), (9, 99, 199), (9, 99, 199)),
    ("L pgm", encode(uniform("L", 42), "PPM"), (42, 42, 42), (42, 42, 42)),
    # 16-bit: round(v / 257); Pillow's own convert("L") would clip 1000 to 255
    ("I;16 png", encode(sixteen_bit([65535, 1000, 25700, 0]), "PNG"), (255, 255, 255), None),
    ("I;16 tiff", encode(sixteen_bit([65535, 1000, 25700, 0]), "TIFF"), (255, 255, 255), None),
    ("I;16B tiff", encode(sixteen_bit([65535, 1000, 25700, 0], "I;16B"), "TIFF"), (255, 255, 255), None),
]


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize(("name", "data", "first", "rest"), CASES, ids=[c[0] for c in CASES])
def test_every_mode_becomes_rgb_with_known_values(name, data, first, rest, exact):
    pixels = pixels_of(data, exact)
    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
    assert tuple(pixels[:, 0, 0].tolist()) == first
    if rest is not None:
        assert (pixels[:, 1:, :] == torch.tensor(rest, dtype=torch.uint8).view(3, 1, 1)).all()


def test_sixteen_bit_is_scaled_not_clipped():
    # 2x2 image [[65535, 1000], [25700, 0]]: 1000 / 257 = 3.9 -> 4, 25700 / 257 = 100
    gray = pixels_of(encode(sixteen_bit([65535, 1000, 25700, 0]), "PNG"), exact=True)[0]
    assert gray.tolist() == [[255, 4], [100, 0]]
    img = PIL.Image.fromarray(np.array([[0, 65535], [257, 128]], np.int32))  # mode "I"
    assert np.asarray(to_rgb(img))[..., 0].tolist() == [[0, 255], [1, 0]]


def test_cmyk_and_grayscale_jpegs_convert():
    for mode, value, expected in (("L", 90, (90, 90, 90)), ("CMYK", (0, 0, 0, 0), (255, 255, 255))):
        pixels = pixels_of(encode(uniform(mode, value, 16), "JPEG", quality=100), exact=False)
        assert (pixels.int() - torch.tensor(expected).view(3, 1, 1)).abs().max() <= 2


@pytest.mark.parametrize(
    ("img", "message"),
    [
        (PIL.Image.new("F", (2, 2)), "mode 'F' (32-bit float) image has no defined pixel range"),
        (PIL.Image.fromarray(np.array([[70000]], np.int32)), "mode 'I' image has values in [70000, 70000], outside"),
    ],
)
def test_modes_without_an_8_bit_meaning_raise(img, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        to_rgb(img)


def test_rgb_is_passed_through_without_a_copy():
    img = uniform("RGB", (1, 2, 3))
    assert to_rgb(img) is img


# -- geometry ----------------------------------------------------------------------------------


def test_resized_size_and_crop_offsets_follow_torchvision():
    assert resized_size(640, 480, 256) == (341, 256)
    assert resized_size(480, 640, 256) == (256, 341)
    assert resized_size(300, 300, 512) == (512, 512)
    assert center_crop_offsets(341, 256, 256) == (42, 0)
    assert center_crop_offsets(256, 341, 256) == (0, 42)
    for w, h in [(640, 480), (480, 640), (1001, 757), (37, 500), (500, 37), (7, 5)]:
        for res in (1, 16, 256, 512):
            image = torch.zeros(1, h, w)
            resized = T.Resize(res, antialias=True)(image)
            assert resized_size(w, h, res) == (resized.shape[2], resized.shape[1])


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (97, 31), (31, 97), (7, 5)])
def test_output_is_exactly_input_res_for_either_orientation(w, h, exact):
    data = encode(photo_like(w, h), "PNG")
    for res in (1, 24, 256):
        pixels = ImageTransform(res, normalize=False, exact_resize=exact).image(data)
        assert pixels.shape == (3, res, res) and pixels.dtype == torch.uint8 and pixels.is_contiguous()


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
def test_the_crop_is_centered_on_the_long_side(exact):
    # three vertical stripes 40 | 40 | 40 wide, 60 high: the centered 60x60 crop at res 60 sees
    # 10 columns of the left stripe, the whole middle one and 10 of the right one
    stripes = np.zeros((60, 120, 3), np.uint8)
    stripes[:, :40] = (255, 0, 0)
    stripes[:, 40:80] = (0, 255, 0)
    stripes[:, 80:] = (0, 0, 255)
    for array, crop_axis in ((stripes, 2), (stripes.transpose(1, 0, 2).copy(), 1)):
        pixels = ImageTransform(60, normalize=False, exact_resize=exact).image(encode(PIL.Image.fromarray(array), "PNG"))
        line = pixels.select(3 - crop_axis, 30)  # a line across the stripes
        assert line[:, :10].argmax(0).eq(0).all() and line[:, 10:50].argmax(0).eq(1).all() and line[:, 50:].argmax(0).eq(2).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize(("w", "h", "res"), [(640, 480, 256), (480, 640, 256), (1024, 768, 128), (50, 30, 64)])
def test_exact_path_equals_plain_pillow_and_fastgens_torchvision_transform(fmt, w, h, res):
    data = encode(photo_like(w, h, seed=1), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    rgb = PIL.Image.open(io.BytesIO(data)).convert("RGB")
    new_w, new_h = resized_size(w, h, res)
    left, top = center_crop_offsets(new_w, new_h, res)
    plain = rgb.resize((new_w, new_h), PIL.Image.Resampling.BICUBIC).crop((left, top, left + res, top + res))
    exact = ImageTransform(res, normalize=False, exact_resize=True).image(data)
    assert torch.equal(exact, torch.from_numpy(np.array(plain)).permute(2, 0, 1))
    resize = T.Resize(res, interpolation=T.InterpolationMode.BICUBIC)
    fastgen = T.Compose([resize, T.CenterCrop(res), T.ToTensor(), T.Normalize(0.5, 0.5)])
    assert torch.equal(ImageTransform(res, exact_resize=True).image(data), fastgen(rgb))


# -- the fast path -----------------------------------------------------------------------------


@pytest.fixture
def draft_scales(monkeypatch):
    """The DCT scale of every JPEG draft made (1 = full size)."""
    scales = []
    real = PIL.JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real(self, mode, size)
        scales.append(None if out is None else round(self.decoderconfig[0]))
        return out

    monkeypatch.setattr(PIL.JpegImagePlugin.JpegImageFile, "draft", spy)
    return scales


@pytest.mark.parametrize(
    ("w", "h", "res", "scale"),
    [(640, 480, 256, 1), (640, 480, 128, 2), (1024, 768, 256, 2), (1024, 768, 128, 4), (1001, 757, 64, 8), (757, 1001, 128, 4)],
)
def test_draft_decoding_stays_within_40_db_of_the_full_size_path(w, h, res, scale, draft_scales):
    data = encode(photo_like(w, h, seed=2), "JPEG", quality=95)
    exact = ImageTransform(res, normalize=False, exact_resize=True).image(data)
    assert draft_scales == []  # exact_resize decodes at full size
    fast = ImageTransform(res, normalize=False).image(data)
    assert draft_scales == [scale]  # the smallest DCT scale that still covers the resized size
    assert psnr(fast, exact) >= 40


def test_fast_path_without_draft_is_close_to_pillow():
    data = encode(photo_like(640, 480, seed=3), "PNG")
    for res in (256, 512):
        exact = ImageTransform(res, normalize=False, exact_resize=True).image(data)
        assert psnr(ImageTransform(res, normalize=False).image(data), exact) >= 60


# -- normalization -----------------------------------------------------------------------------


@pytest.mark.parametrize(("mean", "std"), [((0.5,), (0.5,)), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.0,), (1.0,))])
def test_normalize_pixels_equals_torchvision_to_tensor_and_normalize(mean, std):
    pixels = torch.arange(256, dtype=torch.uint8).repeat(3, 2, 1)  # [3, 2, 256]: every value on each channel
    expected = T.Normalize(mean, std)(T.ToTensor()(pixels.permute(1, 2, 0).numpy()))
    assert torch.equal(normalize_pixels(pixels, mean, std), expected)
    batch = pixels.expand(4, 3, 2, 256)
    assert torch.equal(normalize_pixels(batch, mean, std), expected.expand(4, 3, 2, 256))


def test_default_normalization_is_in_unit_range_and_equals_scale_to_unit_on_the_cpu():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256)
    values = normalize_pixels(pixels, (0.5,), (0.5,))
    assert values.min() == -1 and values.max() == 1 and values.dtype == torch.float32
    assert torch.equal(values, scale_to_unit(pixels))
    assert normalization_table((0.5,), (0.5,)).shape == (1, 256)


def test_cpu_and_delayed_normalization_give_the_same_bits():
    data = encode(photo_like(300, 200, seed=4), "JPEG", quality=90)
    for mean, std in (((0.5,), (0.5,)), ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))):
        on_cpu = ImageTransform(64, mean, std, normalize=True).image(data)
        later = normalize_pixels(ImageTransform(64, mean, std, normalize=False).image(data)[None], mean, std)[0]
        assert torch.equal(on_cpu, later)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_normalization_gives_the_cpu_bits():
    pixels = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    for mean, std in (((0.5,), (0.5,)), ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))):
        assert torch.equal(normalize_pixels(pixels.cuda(), mean, std).cpu(), normalize_pixels(pixels, mean, std))


# -- bad input, arguments, pickling --------------------------------------------------------------


def png_with_bad_idat_crc():
    data = bytearray(encode(photo_like(32, 32), "PNG"))
    pos = data.index(b"IDAT") - 4
    length = int.from_bytes(data[pos : pos + 4], "big")
    data[pos + 8 + length] ^= 0xFF  # first CRC byte; the pixel data itself is intact
    return bytes(data)


JPEG = encode(photo_like(64, 48), "JPEG", quality=90)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (JPEG[: len(JPEG) // 2], OSError, "image file is truncated"),
        (b"", PIL.UnidentifiedImageError, "cannot identify image file"),
        (png_with_bad_idat_crc(), ValueError, "broken PNG"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", PIL.UnidentifiedImageError, "cannot identify image file"),
    ],
    ids=["truncated jpeg", "zero bytes", "png bad crc", "eps refused"],
)
def test_damaged_images_raise(data, error, message, exact):
    with pytest.raises(error, match=re.escape(message)):
        ImageTransform(32, exact_resize=exact)({"real": data})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_res": 0}, "input_res must be an integer >= 1 (output side in pixels), got 0; e.g. input_res=512"),
        ({"input_res": 2.5}, "input_res must be an integer >= 1 (output side in pixels), got 2.5"),
        ({"input_res": 8, "std": (0.5, 0.0, 0.5)}, "std must not contain 0 (it divides), got (0.5, 0.0, 0.5); e.g. std=0.5"),
        ({"input_res": 8, "mean": (0.5, 0.5)}, "mean must be one number or 3 (one per RGB channel), got (0.5, 0.5); e.g. mean=0.5"),
        ({"input_res": 8, "mean": float("nan")}, "mean must hold finite numbers, got nan"),
        ({"input_res": 8, "keys": ()}, "keys must name at least one sample key, got ()"),
    ],
)
def test_bad_arguments_name_argument_value_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageTransform(**kwargs)


def test_transform_is_picklable_and_leaves_other_keys_alone():
    transform = ImageTransform(16, [0.4, 0.5, 0.6], 0.5, normalize=True, keys=["real"])
    assert transform.mean == (0.4, 0.5, 0.6) and transform.keys == ("real",)
    clone = pickle.loads(pickle.dumps(transform))
    assert clone == transform
    out = clone({"real": JPEG, "condition": "a cat"})
    assert out["condition"] == "a cat" and out["real"].shape == (3, 16, 16) and out["real"].dtype == torch.float32


def test_scale_to_unit_equals_edms_formula_for_every_value():
    from fastgen_dm.transform.image import scale_to_unit

    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(scale_to_unit(pixels), pixels.to(torch.float32) / 127.5 - 1)
