"""What a GPU changes for the data path: copies, normalization, JPEG and video decoding, loader scaling.

One run on a machine with one NVIDIA GPU (written for an H100 or H200 with 16 cores; under five
minutes there, ``--quick`` much less). Without a GPU every CUDA row prints "skipped: no CUDA
device" and the CPU rows still run, so the script can be checked anywhere. Each section is
guarded: one that fails prints its error and the next one runs. Timings are medians of several
runs after an untimed warm-up, with ``torch.cuda.synchronize()`` before and after each timed GPU
run. Each ratio is taken against a baseline measured in the same run.

Sections and their rows:
    h2d        Host-to-device copy of a batch as the video family delivers it
               ([2, 3, 81, 480, 832]: 194 MB as uint8), as uint8 and as float32, from pageable
               and from pinned memory: GB/s, pinned over pageable, and float32 time over uint8
               time (uint8 moves a quarter of the bytes). Also what ``pin_memory()`` itself costs
               (a host copy, done by the DataLoader's pin thread).
    normalize  ``normalize_pixels`` on a uint8 [64, 3, 512, 512] batch: images/s on one CPU core
               (the baseline) and on the GPU (input already there), and whether both give the
               same bits.
    jpeg       Decoding 512 distinct 640x480 quality-90 photograph-like JPEGs: Pillow
               (``open`` + ``convert("RGB")``) on one core is the baseline; the ``decode_jpeg``
               that ``decode_jpeg_on_device`` uses (torchcodec's, else torchvision's) on the CPU,
               one image at a time; on the GPU (nvJPEG), in batches of
               64 and 256. Images/s and ratio to the baseline; mean |GPU - Pillow| of one image.
    video      One 81-frame clip (frames 20..100) of a 5 s, 24 fps, 832x480 h264 mp4 with a
               keyframe every 2 s: torchcodec ``VideoDecoder`` (opened per clip, exact seek,
               NHWC) on one CPU thread (the baseline) and on the GPU (NVDEC). ms per clip, CPU
               time over GPU time, torchcodec's CPU-fallback status, and the mean |CPU - GPU| of
               the frames (hardware decoding is not bit-exact).
    loader     ImageWDSDataModule (batch 64, input_res 256, CPU decoding in the workers) over
               WebDataset shards of 640x480 JPEGs, for 1, 2, 4, 8, 16 workers (capped at the
               CPU count): samples/s once every worker has delivered its first batch, and the
               speed-up over the first worker count. With a GPU, ``pin_memory`` is on and each
               batch is copied to the GPU and normalized there (``on_after_batch_transfer``),
               as in training; without one the loop takes the uint8 batches as they come.
               With a GPU, also ``decode_jpeg_on_device=True`` (nvJPEG after the copy) at the
               first and last worker counts, against CPU decoding with as many workers.

    python benchmarks/bench_gpu.py [--quick] [--json PATH] [--sections h2d,normalize,jpeg,video,loader]
                                   [--workers 1,2,4]

``--quick``: a [1, 3, 21, 480, 832] copy, a batch of 16 to normalize, 128 JPEGs (so GPU batches of
64 and 128), 2048 loader samples, and fewer repetitions. ``--workers`` replaces the loader's
worker counts; the first one is the baseline of its speed-up column.

Packages are imported inside the sections that use them, so one missing on the GPU machine
(torchcodec, PyAV, webdataset) fails only those sections.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for bench_images.write_shards

NO_CUDA = "skipped: no CUDA device"
GB = 1e9


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and repetitions; ``--quick`` takes the smaller set."""

    h2d_shape: tuple[int, ...]
    norm_batch: int
    jpegs: int
    video_repeats: int
    loader_samples: int
    loader_repeats: int
    repeats: int = 5  # timed runs of each CPU and copy measurement
    gpu_repeats: int = 20  # timed runs of each short GPU kernel measurement
    jpeg_batches: tuple[int, ...] = (64, 256)


FULL = Sizes(
    h2d_shape=(2, 3, 81, 480, 832),
    norm_batch=64,
    jpegs=512,
    video_repeats=5,
    loader_samples=8192,
    loader_repeats=3,
)
QUICK = Sizes(
    h2d_shape=(1, 3, 21, 480, 832),
    norm_batch=16,
    jpegs=128,
    video_repeats=3,
    loader_samples=2048,
    loader_repeats=2,
    repeats=3,
)


class Skipped(Exception):
    """The whole section cannot run here (its reason is printed)."""


class Report:
    """Rows and checks of every section, printed as they come and kept for the JSON file."""

    def __init__(self, json_path: str | None, env: dict[str, Any], args: dict[str, Any]) -> None:
        self.json_path = json_path
        self.data: dict[str, Any] = {"env": env, "args": args, "sections": {}}
        self.current: dict[str, Any] = {}

    def start(self, name: str, title: str) -> None:
        self.current = {"title": title, "status": "running", "rows": [], "checks": {}}
        self.data["sections"][name] = self.current
        print(f"\n== {title} ==", flush=True)
        print(f"  {'row':50s} {'value':>12s}  {'unit':10s} ratio", flush=True)

    def row(self, label: str, value: float | None, unit: str = "", ratio: str = "") -> None:
        """One measurement; ``value`` None means it could not run here (no GPU)."""
        self.current["rows"].append({"label": label, "value": value, "unit": unit, "ratio": ratio})
        shown = f"{_fmt(value):>12s}  {unit:10s} {ratio}" if value is not None else f"{NO_CUDA}"
        print(f"  {label:50s} {shown}".rstrip(), flush=True)

    def check(self, label: str, value: Any) -> None:
        """A correctness result or a status string; None means it could not run here."""
        self.current["checks"][label] = value
        print(f"  {'check: ' + label:50s} {NO_CUDA if value is None else value}", flush=True)

    def finish(self, status: str, seconds: float, error: str | None = None) -> None:
        self.current.update(status=status, seconds=round(seconds, 2))
        if error:
            self.current["error"] = error
        print(f"  [{status}, {seconds:.1f} s]", flush=True)
        self.save()

    def save(self) -> None:
        """Rewritten after every section, so a run cut short still leaves what it measured."""
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(self.data, indent=2) + "\n")


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def timed(fn: Callable[[], Any], repeats: int, cuda: bool = False, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()  # nothing queued earlier is counted
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()  # the work queued by fn is counted in full
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch's intra-op threads set to ``n`` inside the block: one thread gives a per-core figure."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def jpeg_bytes(seed: int, width: int, height: int) -> bytes:
    """One distinct photograph-like JPEG at quality 90 (top level, so pool processes can run it)."""
    from fastgen_dm.prepare.demo import photo_like

    buf = io.BytesIO()
    photo_like(width, height, seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_jpegs(count: int, width: int, height: int) -> list[bytes]:
    """``count`` distinct JPEGs, made on every core (one photo_like takes about 0.1 s)."""
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(functools.partial(jpeg_bytes, width=width, height=height), range(count)))


# -- sections ---------------------------------------------------------------------------------


def section_h2d(report: Report, sizes: Sizes, cuda: bool, workers: list[int]) -> None:
    if not cuda:
        raise Skipped(NO_CUDA)
    uint8 = torch.randint(0, 256, sizes.h2d_shape, dtype=torch.uint8)
    seconds: dict[tuple[str, str], float] = {}
    for dtype, host in (("uint8", uint8), ("float32", uint8.float())):
        name = f"{dtype} {host.nbytes / 1e6:.0f} MB"
        pinned = host.pin_memory()
        pageable_s = timed(functools.partial(host.to, "cuda"), sizes.repeats, cuda=True)
        pinned_s = timed(functools.partial(pinned.to, "cuda", non_blocking=True), sizes.repeats, cuda=True)
        seconds[dtype, "pageable"], seconds[dtype, "pinned"] = pageable_s, pinned_s
        report.row(f"{name} from pageable memory", host.nbytes / pageable_s / GB, "GB/s")
        speedup = f"{pageable_s / pinned_s:.2f}x pageable"
        report.row(f"{name} from pinned memory", host.nbytes / pinned_s / GB, "GB/s", speedup)
        pin_s = timed(host.pin_memory, sizes.repeats)
        report.row(f"{name} pin_memory() (host copy)", host.nbytes / pin_s / GB, "GB/s")
    for memory in ("pageable", "pinned"):
        ratio = seconds["float32", memory] / seconds["uint8", memory]
        report.check(f"float32 time / uint8 time, {memory}", f"{ratio:.2f} (4 would be pure bandwidth)")


def section_normalize(report: Report, sizes: Sizes, cuda: bool, workers: list[int]) -> None:
    from fastgen_dm.transform.image import normalize_pixels

    mean, std = (0.5,), (0.5,)
    pixels = torch.randint(0, 256, (sizes.norm_batch, 3, 512, 512), dtype=torch.uint8)
    with torch_threads(1):
        cpu_s = timed(lambda: normalize_pixels(pixels, mean, std), sizes.repeats)
        cpu_out = normalize_pixels(pixels, mean, std)
    cpu_rate = sizes.norm_batch / cpu_s
    report.row("CPU, 1 thread (baseline)", cpu_rate, "images/s", "1.00x")
    if not cuda:
        report.row("GPU (input already on the GPU)", None)
        report.check("GPU output == CPU output, bit for bit", None)
        return
    on_gpu = pixels.cuda()
    gpu_s = timed(lambda: normalize_pixels(on_gpu, mean, std), sizes.gpu_repeats, cuda=True)
    gpu_rate = sizes.norm_batch / gpu_s
    report.row("GPU (input already on the GPU)", gpu_rate, "images/s", f"{gpu_rate / cpu_rate:.1f}x")
    same = torch.equal(normalize_pixels(on_gpu, mean, std).cpu(), cpu_out)
    report.check("GPU output == CPU output, bit for bit", same)


def section_jpeg(report: Report, sizes: Sizes, cuda: bool, workers: list[int]) -> None:
    import PIL.Image

    from fastgen_dm.decode.jpeg import jpeg_decoder

    library, decode = jpeg_decoder()  # what decode_jpeg_on_device uses: torchcodec, else torchvision
    start = time.perf_counter()
    jpegs = make_jpegs(sizes.jpegs, 640, 480)
    kb = sum(map(len, jpegs)) / len(jpegs) / 1e3
    print(
        f"  made {len(jpegs)} JPEGs 640x480 q90, {kb:.0f} KB each, in {time.perf_counter() - start:.1f} s", flush=True
    )
    encoded = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]  # the decoders' input
    n = len(jpegs)

    def pillow() -> None:
        for j in jpegs:
            PIL.Image.open(io.BytesIO(j)).convert("RGB")  # convert() forces the decode

    with torch_threads(1):
        base = n / timed(pillow, sizes.repeats)
        report.row("Pillow, 1 core (baseline)", base, "images/s", "1.00x")
        rate = n / timed(lambda: [decode([e], "cpu") for e in encoded], sizes.repeats)
        report.row(f"{library} decode_jpeg, CPU, one at a time", rate, "images/s", f"{rate / base:.2f}x")

    def on_gpu(chunks: list[list[torch.Tensor]]) -> None:
        for chunk in chunks:
            decode(chunk, "cuda")

    for batch in sizes.jpeg_batches:
        batch = min(batch, n)
        label = f"{library} decode_jpeg, GPU, batches of {batch}"
        if not cuda:
            report.row(label, None)
            continue
        chunks = [encoded[i : i + batch] for i in range(0, n, batch)]
        rate = n / timed(functools.partial(on_gpu, chunks), sizes.repeats, cuda=True)
        report.row(label, rate, "images/s", f"{rate / base:.1f}x")
    if cuda:
        gpu = decode(encoded[:1], "cuda")[0].cpu().permute(1, 2, 0)
        pil = torch.from_numpy(np.asarray(PIL.Image.open(io.BytesIO(jpegs[0])).convert("RGB")))
        report.check("mean |GPU - Pillow| of one image (0..255)", f"{(gpu.float() - pil.float()).abs().mean():.3f}")
    else:
        report.check("mean |GPU - Pillow| of one image (0..255)", None)


def panning_mp4(seconds: float, width: int, height: int, fps: int, gop: int) -> bytes:
    """A photograph-like scene panning 2 px a frame, with fresh brightness noise in every frame
    (about bench_video's bitrate, like camera footage's), as an h264 mp4 in memory. Encoded with
    PyAV rather than bench_video's ffmpeg CLI, which the GPU machine may lack."""
    from fastgen_dm.prepare.demo import photo_like

    from fastgen_dm.prepare.demo_wds import h264_mp4

    count = round(seconds * fps)
    scene = np.asarray(photo_like(width + 2 * count, height, seed=0), dtype=np.int16)
    rng = np.random.default_rng(0)
    noise = (rng.integers(-6, 7, (height, width, 1), dtype=np.int16) for _ in range(count))
    frames = ((scene[:, 2 * i : 2 * i + width] + n).clip(0, 255).astype(np.uint8) for i, n in enumerate(noise))
    return h264_mp4(frames, fps=fps, gop=gop, qp=25)  # qp 25: about 1 MB for 5 s, bench_video's bitrate


def section_video(report: Report, sizes: Sizes, cuda: bool, workers: list[int]) -> None:
    from torchcodec.decoders import VideoDecoder

    clip = list(range(20, 20 + 81))  # starts mid-GOP: the exact seek decodes from the keyframe at 0
    data = panning_mp4(5, 832, 480, fps=24, gop=48)
    print(f"  video: 5 s, 120 frames 832x480, {len(data) / 1e6:.1f} MB; clip frames {clip[0]}..{clip[-1]}", flush=True)

    def decode(device: str):
        """Open the video and decode the clip, as the DataModule does for every clip."""
        threads = {"num_ffmpeg_threads": 1} if device == "cpu" else {}
        decoder = VideoDecoder(data, device=device, seek_mode="exact", dimension_order="NHWC", **threads)
        return decoder, decoder.get_frames_at(indices=clip).data

    with torch_threads(1):
        cpu_s = timed(lambda: decode("cpu"), sizes.video_repeats)
    report.row("CPU, 1 ffmpeg thread (baseline)", cpu_s * 1e3, "ms/clip", "1.00x")
    if not cuda:
        report.row("GPU (NVDEC)", None)
        report.check("torchcodec cpu_fallback", None)
        report.check("mean |CPU - GPU| of the frames (0..255)", None)
        return
    gpu_s = timed(lambda: decode("cuda"), sizes.video_repeats, cuda=True)
    report.row("GPU (NVDEC)", gpu_s * 1e3, "ms/clip", f"{cpu_s / gpu_s:.1f}x faster")
    decoder, gpu_frames = decode("cuda")
    report.check("torchcodec cpu_fallback", str(getattr(decoder, "cpu_fallback", "no such attribute")))
    diff = (gpu_frames.cpu().float() - decode("cpu")[1].float()).abs()
    report.check("mean |CPU - GPU| of the frames (0..255)", f"{diff.mean():.3f} (max {diff.max():.0f})")


def section_loader(report: Report, sizes: Sizes, cuda: bool, workers: list[int]) -> None:
    from bench_images import write_shards

    from fastgen_dm import ImageWDSDataModule

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "shards"
        start = time.perf_counter()
        urls = write_shards(folder, sizes.loader_samples, 640, 480)
        seconds = time.perf_counter() - start
        print(f"  wrote {sizes.loader_samples} 640x480 JPEGs in {len(urls)} shards in {seconds:.1f} s", flush=True)

        def datamodule(num_workers: int, on_device: bool = False) -> ImageWDSDataModule:
            dm = ImageWDSDataModule(
                [f"WDS:{folder}"], batch_size=64, input_res=256, num_workers=num_workers,
                pin_memory=True, index_dir=str(Path(tmp) / "index"), decode_jpeg_on_device=on_device,
            )  # fmt: skip
            dm.prepare_data()
            dm.setup("fit")
            return dm

        report.check("DataLoader pin_memory", datamodule(workers[0]).train_dataloader().pin_memory)
        report.check("batches copied to GPU, normalized there", cuda)
        # Worker counts take turns, one epoch each per round, so drift slows them alike.
        rates: dict[int, list[float]] = {w: [] for w in workers}
        for _ in range(sizes.loader_repeats):
            for w in workers:
                rates[w].append(steady_rate(datamodule(w), max(w, 1), cuda))
        base = statistics.median(rates[workers[0]])
        for w in workers:
            rate = statistics.median(rates[w])
            speedup = rate / base
            linear = f", {speedup * workers[0] / w:.0%} of linear" if workers[0] and w else ""  # 0: in process
            report.row(f"workers={w}", rate, "samples/s", f"{speedup:.2f}x workers={workers[0]}{linear}")
        # nvJPEG after the transfer: workers only read headers, so few of them should keep up
        for w in sorted({workers[0], workers[-1]}):
            rate = steady_rate(datamodule(w, on_device=True), max(w, 1), cuda) if cuda else None
            ratio = f"{rate / statistics.median(rates[w]):.2f}x CPU decode, same workers" if rate else ""
            report.row(f"decode_jpeg_on_device, workers={w}", rate, "samples/s", ratio)


def steady_rate(dm: Any, warm_batches: int, cuda: bool) -> float:
    """Samples/s of one epoch after its first ``warm_batches`` batches (one from each worker:
    start-up, file opening and first decodes are left out). With a GPU each batch is copied and
    normalized (and, with ``decode_jpeg_on_device``, decoded) there, as in training."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    counted, start = 0, 0.0
    for i, batch in enumerate(dm.train_dataloader()):
        if cuda:  # as Lightning does: every tensor, however nested, then the DataModule's hook
            batch = dm.on_after_batch_transfer(move_data_to_device(batch, torch.device("cuda")), 0)
        if i == warm_batches - 1:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        elif i >= warm_batches:
            counted += len(batch["fname"])
    if cuda:
        torch.cuda.synchronize()
    if not counted:
        raise RuntimeError(f"the epoch has no batches after the first {warm_batches}; raise the sample count")
    return counted / (time.perf_counter() - start)


SECTIONS = {
    "h2d": ("1. host-to-device copy", section_h2d),
    "normalize": ("2. normalize_pixels, uint8 -> float32", section_normalize),
    "jpeg": ("3. JPEG decode, 640x480 quality 90", section_jpeg),
    "video": ("4. video decode, 81-frame clip of 832x480 h264", section_video),
    "loader": ("5. ImageWDSDataModule workers (CPU decode), batch 64, input_res 256", section_loader),
}


def environment(cuda: bool) -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "device": torch.cuda.get_device_name() if cuda else "no CUDA device",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": version("torchvision"),
        "torchcodec": version("torchcodec"),
        "av": version("av"),
        "pillow": version("pillow"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": affinity,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write every row to this JSON file")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--workers", help="comma-separated worker counts of the loader section (default 1,2,4,8,16 up to the CPU count)"
    )
    args = parser.parse_args()
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    cpus = os.cpu_count() or 1
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [w for w in (1, 2, 4, 8, 16) if w <= cpus]
    sizes = QUICK if args.quick else FULL
    cuda = torch.cuda.is_available()

    env = environment(cuda)
    for key, value in env.items():
        print(f"{key:14s} {value}")
    report = Report(args.json, env, {"quick": args.quick, "sections": names, "workers": workers})
    wall = time.perf_counter()
    for name in names:
        title, run = SECTIONS[name]
        report.start(name, title)
        start = time.perf_counter()
        try:
            run(report, sizes, cuda, workers)
            report.finish("ok", time.perf_counter() - start)
        except Skipped as why:
            print(f"  {why}")
            report.finish("skipped", time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 - report it and go on: one broken section must not cost the others
            traceback.print_exc(file=sys.stdout)
            report.finish("error", time.perf_counter() - start, f"{type(error).__name__}: {error}")
    report.data["wall_s"] = round(time.perf_counter() - wall, 1)
    report.save()
    statuses = {name: report.data["sections"][name]["status"] for name in names}
    print(f"\ndone in {report.data['wall_s']:.1f} s: " + ", ".join(f"{n} {s}" for n, s in statuses.items()))
    if args.json:
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
