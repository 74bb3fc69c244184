"""Video bytes to frames: three backends (decord, torchcodec, PyAV) behind one small interface.

::

    with open_video(data, "torchcodec", timeout_s=30) as video:   # data: the bytes of an mp4/webm/avi/mov
        video.num_frames, video.fps                           # 120, 24.0
        video.get_frames([40, 41, 42])                        # uint8 [3, H, W, 3], RGB

Frame ``i`` is the ``i``-th frame in presentation order, the one sequential decoding yields
``i``-th; every backend returns the same pixels for the same index (the tests compare them
with sequential PyAV decoding, bit for bit). Each backend decodes from the bytes in memory and
seeks to the keyframe before the first wanted frame: it decodes only what the requested clip
needs, and holds only the requested frames.

Frame counts come from the packets actually present (each backend scans the container's packets
at open, without decoding): a header that promises more frames than the file holds does not
count. A file can still hold packets that do not decode (a damaged tail): when a requested frame
cannot be decoded, :meth:`VideoSource.get_frames` lowers ``num_frames`` to that frame's index and
raises :class:`FramesUnavailableError`, so the caller can pick frames again within the real count.

Bounded time: ``timeout_s`` runs each native call in a helper thread and raises
:class:`DecodeTimeoutError` when it takes longer. Python cannot stop a thread that is inside
native code: decord and torchcodec release the GIL while they decode, so the caller gets its
error on time, but a truly stuck call keeps its thread (and one core) busy until it returns, and
the source is unusable afterwards. The PyAV backend also checks the deadline between packets, so
its thread stops soon after the timeout.

Errors: :class:`VideoDecodeError` (a ``ValueError``) for bytes that are not a decodable video (no
bytes, no video stream, a damaged container) and its subclass :class:`FramesUnavailableError`;
:class:`DecodeTimeoutError` (a ``TimeoutError``). Both are bad data to a caller that skips and
counts samples.
"""

from __future__ import annotations

import bisect
import functools
import io
import itertools
import threading
import time
from typing import Any, Callable, Literal, Sequence, TypeVar, get_args

import numpy as np
import torch

Backend = Literal["decord", "torchcodec", "pyav"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: The module each backend imports (to check it is installed before any data is read).
BACKEND_MODULES: dict[str, str] = {"decord": "decord", "torchcodec": "torchcodec", "pyav": "av"}
#: Decoding threads per source: DataLoader workers give the parallelism, one thread each.
_DECODE_THREADS = 1

T = TypeVar("T")


class VideoDecodeError(ValueError):
    """The bytes are not a decodable video, or a requested frame does not decode (bad data)."""


class FramesUnavailableError(VideoDecodeError):
    """Requested frames lie past the frames that really decode.

    Attributes:
        num_frames: The corrected count: frames ``[0, num_frames)`` are the ones to ask for.
    """

    def __init__(self, message: str, num_frames: int) -> None:
        super().__init__(message)
        self.num_frames = num_frames


class DecodeTimeoutError(TimeoutError):
    """A decoding call took longer than its ``timeout_s``; its thread was abandoned."""


def _bounded(fn: Callable[[], T], timeout_s: float | None, what: str) -> T:
    """``fn()``, or :class:`DecodeTimeoutError` after ``timeout_s`` seconds (None: no bound).

    ``fn`` runs in a daemon thread; on timeout that thread is abandoned, not stopped.
    """
    if timeout_s is None:
        return fn()
    result: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # handed to the caller's thread below
            result["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="fastgen-video-decode", daemon=True).start()
    if not done.wait(timeout_s):
        raise DecodeTimeoutError(
            f"{what} took longer than decode_timeout_s={timeout_s}; its thread is abandoned and runs on "
            "until the decoder returns (native code cannot be interrupted)"
        )
    if "error" in result:
        raise result["error"]
    return result["value"]


class VideoSource:
    """One opened video. Not thread-safe; open one per sample.

    Attributes:
        backend: The backend's name.
        num_frames: Frames that can be requested, ``[0, num_frames)``; lowered when a requested
            frame turns out not to decode.
        fps: Average frames per second (informative; frames are addressed by index).
    """

    backend: str = ""

    def __init__(self, num_frames: int, fps: float, timeout_s: float | None) -> None:
        self.num_frames = num_frames
        self.fps = fps
        self.timeout_s = timeout_s
        self._broken: str | None = None

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """The frames at ``indices`` (any order, repeats allowed), uint8 [len(indices), H, W, 3] RGB.

        Raises:
            IndexError: An index outside ``[0, num_frames)``.
            FramesUnavailableError: A requested frame does not decode; ``num_frames`` is lowered.
            DecodeTimeoutError: Decoding took longer than ``timeout_s``.
        """
        if self._broken is not None:
            raise VideoDecodeError(f"this {self.backend} source is unusable: {self._broken}")
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            raise IndexError("get_frames needs at least one index")
        if wanted.min() < 0 or wanted.max() >= self.num_frames:
            raise IndexError(f"frame indices must be in [0, {self.num_frames}), got {wanted.min()}..{wanted.max()}")
        unique, inverse = np.unique(wanted, return_inverse=True)
        try:
            frames = _bounded(lambda: self._decode([int(i) for i in unique]), self.timeout_s, f"{self.backend} decoding")
        except DecodeTimeoutError as err:
            self._broken = str(err)
            raise
        assert frames.shape[0] == len(unique) and frames.dtype == torch.uint8, (frames.shape, frames.dtype)
        return frames if np.array_equal(unique, wanted) else frames[torch.from_numpy(inverse.reshape(-1))]

    def _decode(self, indices: list[int]) -> torch.Tensor:
        """Frames at sorted, unique, in-range ``indices``: uint8 [N, H, W, 3]."""
        raise NotImplementedError

    def _unavailable(self, first_missing: int, cause: BaseException | str) -> FramesUnavailableError:
        count = min(self.num_frames, first_missing)
        message = f"frame {first_missing} of {self.num_frames} does not decode ({cause}); counting the video as {count} frames"
        self.num_frames = count
        return FramesUnavailableError(message, count)

    def _first_failure(self, indices: list[int], decode: Callable[[list[int]], Any]) -> int:
        """The first of ``indices`` (sorted) whose prefix fails to decode, by bisection.

        Assumes that once a frame fails, frames after it fail too (a damaged tail).
        """
        lo, hi = 0, len(indices) - 1  # the prefix indices[:lo] decodes; indices[:hi + 1] fails
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                decode(indices[: mid + 1])
                lo = mid + 1
            except Exception:
                hi = mid
        return indices[lo]

    def close(self) -> None:
        """Release the decoder (also done when the source is garbage collected)."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --- decord --------------------------------------------------------------------------------------


class _DecordSource(VideoSource):
    backend = "decord"

    def __init__(self, data: bytes, timeout_s: float | None) -> None:
        import decord

        self._decord, self._data = decord, data
        self._reader = self._open()
        super().__init__(len(self._reader), float(self._reader.get_avg_fps()), timeout_s)

    def _open(self):
        try:
            return self._decord.VideoReader(io.BytesIO(self._data), ctx=self._decord.cpu(0), num_threads=_DECODE_THREADS)
        except (self._decord.DECORDError, RuntimeError) as err:  # RuntimeError: a container it cannot parse
            raise VideoDecodeError(f"decord cannot open the video: {_first_line(err)}") from None

    def _batch(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(self._reader.get_batch(indices).asnumpy())

    def _decode(self, indices: list[int]) -> torch.Tensor:
        try:
            return self._batch(indices)
        except (self._decord.DECORDError, RuntimeError) as err:
            cause = _first_line(err)

        def probe(prefix: list[int]) -> None:
            self._reader = self._open()  # a failed batch can leave the reader mid-seek
            self._batch(prefix)

        raise self._unavailable(self._first_failure(indices, probe), cause)

    def close(self) -> None:
        self._reader = None


# --- torchcodec ----------------------------------------------------------------------------------


class _TorchcodecSource(VideoSource):
    backend = "torchcodec"

    def __init__(self, data: bytes, timeout_s: float | None, device: torch.device | str = "cpu") -> None:
        from torchcodec.decoders import VideoDecoder

        try:  # "exact" scans every packet once: a frame count and a frame index from the content
            self._decoder: Any = VideoDecoder(  # Any: close() drops it
                data, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=_DECODE_THREADS, device=device
            )
        except (RuntimeError, ValueError) as err:
            raise VideoDecodeError(f"torchcodec cannot open the video: {_first_line(err)}") from None
        meta = self._decoder.metadata
        super().__init__(int(meta.num_frames or 0), float(meta.average_fps or 0.0), timeout_s)

    def _batch(self, indices: list[int]) -> torch.Tensor:
        return self._decoder.get_frames_at(indices=indices).data

    def _decode(self, indices: list[int]) -> torch.Tensor:
        try:
            return self._batch(indices)
        except (RuntimeError, ValueError, IndexError) as err:
            cause = _first_line(err)
        raise self._unavailable(self._first_failure(indices, self._batch), cause)

    def close(self) -> None:
        self._decoder = None


# --- PyAV ----------------------------------------------------------------------------------------


class _PyAVSource(VideoSource):
    """Seeks with PyAV to the keyframe before each wanted run of frames and decodes forward.

    At open, one pass over the packets (no decoding) lists every frame's timestamp and the
    keyframes; frame ``i`` is the ``i``-th smallest timestamp. ``frames_decoded`` counts the
    frames the decoder produced (what the seek saves is visible there).
    """

    backend = "pyav"

    def __init__(self, data: bytes, timeout_s: float | None) -> None:
        import av

        self._av, self._data = av, data
        self.frames_decoded = 0
        self._container = self._open()
        self._stream = self._container.streams.video[0]
        stamps, keyframes = self._scan()
        fps = self._stream.average_rate or self._stream.guessed_rate
        super().__init__(len(stamps), float(fps) if fps else 0.0, timeout_s)
        self._stamps = stamps  # presentation timestamps, ascending: frame i has stamps[i]
        self._index = {ts: i for i, ts in enumerate(stamps)}
        self._keyframes = sorted(self._index[ts] for ts in keyframes) or [0]  # frame indices
        self._deadline = float("inf")

    def _open(self):
        av = self._av
        try:
            container = av.open(io.BytesIO(self._data), mode="r")
        except (av.FFmpegError, ValueError, OSError) as err:
            raise VideoDecodeError(f"PyAV cannot open the video: {_first_line(err)}") from None
        if not container.streams.video:
            container.close()
            raise VideoDecodeError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.codec_context.thread_count = _DECODE_THREADS
        return container

    def _scan(self) -> tuple[list[int], list[int]]:
        """Timestamps of the packets present (sorted) and those of keyframes, without decoding."""
        stamps, keyframes = [], []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:
                    raise VideoDecodeError("a video packet has no timestamp; PyAV cannot address its frames")
                stamps.append(ts)
                if packet.is_keyframe:
                    keyframes.append(ts)
        except self._av.FFmpegError:
            pass  # a damaged tail: the packets before it are the video
        if len(set(stamps)) != len(stamps):
            raise VideoDecodeError("video packets share timestamps; PyAV cannot address its frames")
        return sorted(stamps), keyframes

    def _frames_after_seek(self, keyframe: int):
        """(index, frame) pairs decoded from the keyframe at frame index ``keyframe`` on."""
        try:
            if keyframe > 0:
                self._container.seek(self._stamps[keyframe], stream=self._stream, backward=True, any_frame=False)
        except self._av.FFmpegError:  # a container that cannot seek: decode from the start
            keyframe = 0
        if keyframe == 0:  # a fresh container starts exactly at the first frame
            self._container.close()
            self._container = self._open()
            self._stream = self._container.streams.video[0]
        for packet in self._container.demux(self._stream):
            if time.monotonic() > self._deadline:
                raise DecodeTimeoutError("PyAV decoding passed its deadline")
            for frame in packet.decode():
                self.frames_decoded += 1
                ts = frame.pts if frame.pts is not None else frame.dts
                index = self._index.get(ts)
                if index is not None:
                    yield index, frame

    def _seek(self, target: int):
        """Decode from the last keyframe at or before ``target``: (first (index, frame) or None, the rest).

        A demuxer that indexes by decode time can land one keyframe late for a frame shown just
        before a keyframe; then this backs off one keyframe at a time (frame 0 at the latest).
        """
        k = bisect.bisect_right(self._keyframes, target) - 1  # -1: no keyframe at or before target
        while True:
            start = self._keyframes[k] if k >= 0 else 0
            frames = self._frames_after_seek(start)
            first = next(frames, None)
            if first is None or first[0] <= target or start == 0:
                return first, frames
            k -= 1

    def _decode(self, indices: list[int]) -> torch.Tensor:
        if self.timeout_s is not None:
            self._deadline = time.monotonic() + self.timeout_s
        wanted = set(indices)
        got: dict[int, np.ndarray] = {}
        frames, position = None, -1  # the running decode and the index it last produced
        try:
            for target in indices:
                if target in got:
                    continue
                k = bisect.bisect_right(self._keyframes, target) - 1
                keyframe = self._keyframes[k] if k >= 0 else 0
                if frames is None or target <= position or keyframe > position + 1:
                    first, frames = self._seek(target)
                    pending = [first] if first is not None else []
                else:
                    pending = []
                for index, frame in itertools.chain(pending, frames):  # chain, not yield from: keeps `frames` open
                    position = index
                    if index in wanted and index not in got:
                        got[index] = frame.to_ndarray(format="rgb24")
                    if index >= target:
                        break
                if target not in got:
                    raise self._unavailable(target, "the decoder never produced it")
        except self._av.FFmpegError as err:
            raise self._unavailable(min(set(indices) - set(got)), _first_line(err)) from None
        return torch.from_numpy(np.stack([got[i] for i in indices]))

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:300]


_SOURCES: dict[str, type[VideoSource]] = {"decord": _DecordSource, "torchcodec": _TorchcodecSource, "pyav": _PyAVSource}
assert set(_SOURCES) == set(BACKENDS) == set(BACKEND_MODULES)


def validate_backend(backend: str) -> None:
    """Raise ValueError for an unknown backend and ImportError (naming the ``video`` extra) for one
    that is not installed."""
    if backend not in _SOURCES:
        raise ValueError(f"video backend {backend!r} is unknown; use one of {list(BACKENDS)}")
    import importlib.util

    if importlib.util.find_spec(BACKEND_MODULES[backend]) is None:
        raise ImportError(
            f"video backend {backend!r} needs the {BACKEND_MODULES[backend]!r} package, which is not installed; "
            f"install the video extra: pip install 'fastgen-dm[video]'"
        )


def open_video(
    data: bytes, backend: Backend = "torchcodec", *, timeout_s: float | None = None, device: torch.device | str = "cpu"
) -> VideoSource:
    """Open a video held in memory.

    Args:
        data: The container's bytes (mp4, webm, mkv, avi, mov, ...).
        backend: ``"torchcodec"`` (the fastest), ``"decord"`` or ``"pyav"``; all give the same frames.
        timeout_s: Bound on opening and on each :meth:`VideoSource.get_frames` call, in seconds;
            None for no bound. See the module notes for what a timeout can and cannot stop.
        device: Where frames are decoded and returned: ``"cpu"``, or a CUDA device with the
            ``torchcodec`` backend (NVDEC; hardware decoding is close to, not bit-identical with,
            the CPU's frames, and torchcodec falls back to the CPU for codecs NVDEC lacks).

    Raises:
        ValueError: An unknown backend, or a device other than the CPU with another backend.
        ImportError: The backend's package is not installed (the ``video`` extra).
        VideoDecodeError: Empty bytes, no video stream, no frames, or a container that does not open.
        DecodeTimeoutError: Opening took longer than ``timeout_s``.
    """
    validate_backend(backend)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"open_video needs the video's bytes, got {type(data).__name__}")
    on_cpu = torch.device(device).type == "cpu"
    if not on_cpu and backend != "torchcodec":
        raise ValueError(f"video decoding on {device} needs backend='torchcodec' (NVDEC), got backend={backend!r}")
    if len(data) == 0:
        raise VideoDecodeError("the video member is empty (0 bytes)")
    # each source takes (bytes, timeout_s); the base class's own __init__ takes counts
    make: Callable[..., VideoSource] = _SOURCES[backend] if on_cpu else functools.partial(_TorchcodecSource, device=device)
    source = _bounded(lambda: make(bytes(data), timeout_s), timeout_s, f"{backend} opening")
    if source.num_frames < 1:
        source.close()
        raise VideoDecodeError(f"{backend} finds no video frames in the file")
    return source
