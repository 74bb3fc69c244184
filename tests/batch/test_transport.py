"""A worker's batch crosses as one reused shared buffer and arrives with the same values."""

from __future__ import annotations

import io
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import fastgen_dm.batch.transport as transport
from fastgen_dm.batch.transport import BatchPacker, PackedBatch, unpack_batch


def cross(packed: PackedBatch) -> PackedBatch:
    """What the worker's queue does: pickle with torch's reductions, unpickle on the other side."""
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(packed)
    return pickle.loads(buffer.getvalue())


def sample_batch(step: int) -> dict:
    return {
        "real": torch.arange(3 * 4 * 5, dtype=torch.uint8).view(3, 4, 5) + step,
        "condition": torch.full((3, 7), float(step)),
        "mask": torch.tensor([True, False, step % 2 == 0]),
        "empty": torch.zeros(3, 0),
        "scalar": torch.tensor(step, dtype=torch.int64),
        "cropping_params": {"crop_x0": torch.tensor([step, 1, 2]), "crop_w": torch.tensor([8, 8, 8])},
        "fname": [f"k{step}", "b", "c"],
        "caption": None,
    }


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        elif isinstance(value, dict):
            assert_same(got[key], value)
        else:
            assert got[key] == value


def test_values_survive_the_ring_across_many_batches():
    packer = BatchPacker(slots=3)
    for step in range(10):
        assert_same(unpack_batch(cross(packer.pack(sample_batch(step)))), sample_batch(step))


def test_a_ring_buffer_crosses_once_then_its_slot_is_named():
    packer = BatchPacker(slots=2)
    for step in range(4):
        packed = packer.pack(sample_batch(step))
        if step < 2:
            assert packed.buffer is not None
        else:  # slots 0 and 1 again: their buffers are already on the other side
            assert packed.buffer is None and len(pickle.dumps((packed.layout, packed.ring))) < 2000
        assert_same(unpack_batch(cross(packed)), sample_batch(step))


def test_a_larger_batch_gets_a_larger_slot_buffer():
    packer = BatchPacker(slots=1)
    unpack_batch(cross(packer.pack({"x": torch.zeros(4)})))
    big = {"x": torch.arange(10_000, dtype=torch.float32)}
    packed = packer.pack(big)
    assert packed.buffer is not None
    assert_same(unpack_batch(cross(packed)), big)


def test_a_slot_reused_before_it_was_read_is_an_error():
    packer = BatchPacker(slots=1)
    early = cross(packer.pack(sample_batch(0)))
    packer.pack(sample_batch(1))  # the worker got ahead: same slot
    with pytest.raises(RuntimeError, match="reused ring slot 0"):
        unpack_batch(early)


def test_a_batch_above_the_ring_limit_is_shared_without_a_copy(monkeypatch):
    monkeypatch.setattr(transport, "RING_MAX_BYTES", 100)
    batch = sample_batch(5)
    packed = BatchPacker(slots=2).pack(batch)
    assert packed.ring is None
    arrived = cross(packed)
    got = unpack_batch(arrived)
    assert_same(got, batch)
    assert got["real"].untyped_storage().data_ptr() == arrived.buffer.untyped_storage().data_ptr()


class Batches(IterableDataset):
    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        packer = BatchPacker(slots=4)
        for step in range(info.id, 40, info.num_workers):
            yield packer.pack(sample_batch(step))


@pytest.mark.parametrize("persistent", [False, True])
def test_real_workers_deliver_every_batch_intact(persistent):
    loader = DataLoader(Batches(), batch_size=None, num_workers=2, prefetch_factor=2, persistent_workers=persistent)
    for _ in range(2):
        got = [unpack_batch(packed) for packed in loader]
        assert len(got) == 40
        for step, batch in enumerate(got):
            assert_same(batch, sample_batch(step))


def test_the_pinning_thread_copies_a_ring_batch_out_once(monkeypatch):
    """What DataLoader's pin_memory thread does with a PackedBatch (a clone stands in for pinning: no CUDA here)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    copies = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: copies.append(self.numel()) or self.clone())
    packer = BatchPacker(slots=2)
    arrived = cross(packer.pack(sample_batch(3)))
    pinned = pin_memory(arrived)
    assert isinstance(pinned, PackedBatch) and pinned.ring is None and len(copies) == 1
    packer.pack(sample_batch(4))
    packer.pack(sample_batch(5))  # the worker reuses the slot: the pinned copy is the batch's own
    assert_same(unpack_batch(pinned), sample_batch(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned memory)")
def test_cuda_pinned_batches_from_persistent_workers_arrive_intact():
    loader = DataLoader(Batches(), batch_size=None, num_workers=2, pin_memory=True, persistent_workers=True)
    for _ in range(2):
        got = [unpack_batch(packed) for packed in loader]
        assert all(batch["real"].is_pinned() for batch in got)
        for step, batch in enumerate(got):
            assert_same(batch, sample_batch(step))
