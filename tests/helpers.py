"""Helpers shared by the tests (fixtures live in conftest.py)."""

import io
import json
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import lightning
import numpy as np
import torch
import webdataset

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


class RecordBuckets(lightning.Callback):
    """Each rank's (epoch, batch index, bucket, shape of ``real``) per training batch, one JSON line each."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"buckets{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, batch["bucket"], list(batch["real"].shape)]) + "\n")


def global_streams(record_dir: Path) -> dict[int, list[list]]:
    """From LoaderProbe's records, per epoch: the global steps, each the ranks' batches joined in rank order."""
    per_rank = {}
    for path in sorted(record_dir.glob("rank*.jsonl")):
        per_rank[int(path.stem[4:])] = [json.loads(line) for line in path.read_text().splitlines()]
    steps: dict[int, dict[int, list[list[int]]]] = defaultdict(lambda: defaultdict(list))
    for rank, records in per_rank.items():
        for record in records:
            steps[record["epoch"]][rank].append(record["ids"])
    out = {}
    for epoch, ranks in steps.items():
        counts = {len(b) for b in ranks.values()}
        assert len(counts) == 1, f"ranks consumed different numbers of batches in epoch {epoch}: {counts}"
        out[epoch] = [sum((ranks[r][k] for r in sorted(ranks)), []) for k in range(counts.pop())]
    return out


def flat(steps):
    """The samples of a list of steps, in order."""
    return [i for step in steps for i in step]


def write_tar(path, members, fmt=tarfile.USTAR_FORMAT):
    """Write ``members`` ((name, bytes) or (name, None) for a directory) in order; returns str path."""
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return str(path)


def write_wds(path, samples):
    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


LATENT_SHARD_SAMPLES = 230  # the latent_shards fixture: 4 shards of 50 and a last one of 30, uneven on purpose


def make_wds(folder, tmp_path, cls, **kwargs):
    """A WebDataset DataModule over ``folder``, prepared and set up (batch 16, no workers unless given)."""
    kwargs = {"batch_size": 16, "num_workers": 0, "index_dir": str(tmp_path / "index"), **kwargs}
    dm = cls(datatags=[f"WDS:{folder}"], **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def latent_samples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "__key__": f"a/b/{k:06d}",
            "latent.pth": rng.bytes(int(rng.integers(1, 3000))),
            "txt_emb.pth": rng.bytes(int(rng.integers(0, 700))),
            "json": json.dumps({"k": k}).encode(),
        }
        for k in range(n)
    ]


def webdataset_samples(url):
    return [
        (s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
        for s in webdataset.WebDataset(url, shardshuffle=False, empty_check=False)
    ]


def fit_probe(dm, record_dir, devices, ckpt_path=None, callbacks=(), **trainer_kwargs):
    """Two epochs of LoaderProbe over ``dm`` on CPU (gloo ``ddp_spawn`` when ``devices > 1``), recording ids."""
    from fastgen_dm.models import LoaderProbe

    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **{"enable_checkpointing": False, **trainer_kwargs, "callbacks": [DestroyProcessGroup(), *callbacks]},
    )
    trainer.fit(LoaderProbe(record_dir=str(record_dir)), datamodule=dm, ckpt_path=ckpt_path)


def bogus_huffman_table(jpeg: bytes) -> bytes:
    """A JPEG whose header parses but whose Huffman table (DHT) is invalid: every decoder rejects it."""
    at = jpeg.index(b"\xff\xc4")
    return jpeg[: at + 5] + bytes([255] * 16) + jpeg[at + 21 :]


def corrupt_member(path, member):
    """Cut ``member`` of the zip at ``path`` to 40 bytes (a truncated PNG), keeping the others."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = members[member][:40]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
