"""Helpers shared by the tests (fixtures live in conftest.py)."""

import lightning
import numpy as np
import torch

from fastgen_dm.prepare import EDMZipWriter


def write_zip(path, images, labels=None):
    with EDMZipWriter(path) as writer:
        for k, image in enumerate(images):
            writer.add_image(image, None if labels is None else labels[k])
    return str(path)


def random_images(n, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, channels), dtype=np.uint8) for _ in range(n)]


class DestroyProcessGroup(lightning.Callback):
    """Destroy the gloo process group at the end of each spawned rank.

    Lightning leaves a gloo group alive at exit (it registers cleanup only for NCCL), and a
    spawned process that exits with it alive aborts now and then ("terminate called without an
    active exception"), failing a run whose training succeeded. ``teardown`` is the last hook.
    """

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
