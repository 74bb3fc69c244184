"""EDMDenoiser: learns on simple patterns, adapts to shapes and conditions, restores, samples."""

import re
import warnings

import lightning
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fastgen_dm.models import EDMDenoiser

pytestmark = pytest.mark.filterwarnings(
    "ignore:You defined a `validation_step` but have no `val_dataloader`"
)

_COLORS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])


def _square_batches(num_batches, batch_size=32, size=16, seed=0):
    """Zip-family batches: a colored square (color = class) on a black background, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    num_classes = len(_COLORS)
    side = size // 2
    batches = []
    for b in range(num_batches):
        labels = torch.randint(num_classes, (batch_size,), generator=g)
        corners = torch.randint(size - side + 1, (batch_size, 2), generator=g)
        real = torch.full((batch_size, 3, size, size), -1.0)
        for i in range(batch_size):
            y, x = corners[i].tolist()
            real[i, :, y : y + side, x : x + side] = _COLORS[labels[i]][:, None, None]
        condition = F.one_hot(labels, num_classes).float()
        batches.append(
            {
                "real": real,
                "condition": condition,
                "neg_condition": torch.zeros_like(condition),
                "idx": torch.arange(b * batch_size, (b + 1) * batch_size),
            }
        )
    return batches


def _video_batches(num_batches, condition, batch_size=2):
    """WebDataset-family video latent batches [B, C, T, H, W] with the given condition maker."""
    g = torch.Generator().manual_seed(1)
    return [
        {
            "real": torch.randn(batch_size, 4, 3, 8, 8, generator=g),
            "condition": condition(batch_size, g),
            "fname": [f"{b:04d}{i}" for i in range(batch_size)],
            "shard": ["shard-000.tar"] * batch_size,
        }
        for b in range(num_batches)
    ]


class _LossRecorder(lightning.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _trainer(**kwargs):
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return lightning.Trainer(**(options | kwargs))


def _loader(batches):
    # batch_size=None hands each prepared dict batch through unchanged.
    return DataLoader(batches, batch_size=None)


def _small_model(**kwargs):
    return EDMDenoiser(**({"hidden_channels": 32, "num_blocks": 2, "lr": 2e-3} | kwargs))


def test_loss_falls_on_colored_squares():
    lightning.seed_everything(0, verbose=False)
    model = _small_model()
    recorder = _LossRecorder()
    _trainer(max_steps=150, callbacks=[recorder]).fit(model, _loader(_square_batches(25)))
    first, last = recorder.losses[:20], recorder.losses[-20:]
    assert len(recorder.losses) == 150
    assert sum(last) / 20 < 0.6 * sum(first) / 20


def test_lazy_model_materializes_on_first_batch_and_keeps_optimizer_params():
    model = _small_model()
    assert not model.is_materialized
    _trainer(max_steps=2).fit(model, _loader(_square_batches(2, batch_size=4)))
    assert model.is_materialized
    optimizer = model.trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}
    assert all(len(optimizer.state[p]) > 0 for p in model.parameters())


def test_given_shapes_build_every_parameter_in_init():
    model = _small_model(in_channels=3, spatial_dims=2, cond_dim=4)
    assert model.is_materialized
    with warnings.catch_warnings():
        # No "UninitializedParameter" warning from the model summary.
        warnings.simplefilter("error", UserWarning)
        model.configure_optimizers()
    out = model(torch.zeros(2, 3, 8, 8), torch.ones(2), torch.zeros(2, 4))
    assert out.shape == (2, 3, 8, 8)


def test_video_latents_with_token_embeddings():
    def embeddings(batch_size, g):
        return torch.randn(batch_size, 5, 16, generator=g)  # [B, L, D]

    lightning.seed_everything(0, verbose=False)
    model = _small_model(sigma_data=1.0)
    recorder = _LossRecorder()
    batches = _video_batches(3, embeddings)
    _trainer(max_steps=3, callbacks=[recorder]).fit(model, _loader(batches))
    assert len(recorder.losses) == 3 and all(torch.isfinite(torch.tensor(recorder.losses)))
    assert model.net.patchify.weight.shape == (32, 4, 1, 2, 2)  # Conv3d, 4 channels in
    assert model.net.map_condition.in_features == 16
    sample = model.sample((1, 4, 3, 8, 8), condition=torch.randn(1, 5, 16), num_steps=2)
    assert sample.shape == (1, 4, 3, 8, 8)


@pytest.mark.parametrize(
    "condition",
    [
        pytest.param(lambda b, g: torch.zeros(b, 0), id="K=0"),
        pytest.param(lambda b, g: [f"a caption {i}" for i in range(b)], id="captions"),
    ],
)
def test_unconditional_batches(condition):
    model = _small_model()
    batches = _video_batches(2, condition)
    _trainer(max_steps=2).fit(model, _loader(batches))
    assert model.net.map_condition.in_features == 0
    assert model.sample((1, 4, 3, 8, 8), num_steps=2).shape == (1, 4, 3, 8, 8)


def test_batch_without_condition_key():
    batches = [{"real": b["real"]} for b in _square_batches(2, batch_size=4)]
    model = _small_model()
    _trainer(max_steps=2).fit(model, _loader(batches))
    assert model.net.map_condition.in_features == 0


def test_odd_sizes_are_padded_to_the_patch_and_cropped_back():
    model = _small_model()
    out = model(torch.randn(2, 1, 7, 9), torch.ones(2))
    assert out.shape == (2, 1, 7, 9)


def test_validation_loss_is_deterministic():
    model = _small_model()
    loader = _loader(_square_batches(2, batch_size=8))
    trainer = _trainer(max_steps=2)
    trainer.fit(model, loader)
    first = trainer.validate(model, loader, verbose=False)[0]["val/loss"]
    second = trainer.validate(model, loader, verbose=False)[0]["val/loss"]
    assert first == second


def test_test_loss_and_predicted_losses_are_the_validation_loss():
    model = _small_model()
    batches = _square_batches(2, batch_size=8)
    trainer = _trainer()
    val = trainer.validate(model, _loader(batches), verbose=False)[0]["val/loss"]
    test = trainer.test(model, _loader(batches), verbose=False)[0]["test/loss"]
    predictions = trainer.predict(model, _loader(batches))
    assert test == pytest.approx(val)
    assert [p["loss"].shape for p in predictions] == [(8,), (8,)]
    assert torch.cat([p["idx"] for p in predictions]).tolist() == list(range(16))
    assert torch.cat([p["loss"] for p in predictions]).mean().item() == pytest.approx(val, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())  # no backward pass, no optimizer step


def test_checkpoint_restores_into_a_fresh_lazy_model(tmp_path):
    lightning.seed_everything(0, verbose=False)
    model = _small_model()
    loader = _loader(_square_batches(3, batch_size=4))
    trainer = _trainer(max_steps=3)
    trainer.fit(model, loader)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    restored = EDMDenoiser.load_from_checkpoint(path)
    assert restored.is_materialized
    x, sigma, cond = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 2.0]), torch.eye(4)[:2]
    torch.testing.assert_close(restored(x, sigma, cond), model(x, sigma, cond))

    # Resuming training: the optimizer is built after the weights are loaded.
    resumed = _small_model()
    _trainer(max_steps=5).fit(resumed, loader, ckpt_path=path)
    assert resumed.trainer.global_step == 5


def test_condition_width_must_match_the_model():
    model = _small_model(cond_dim=4)
    message = "the condition has 10 features per sample but this model was built for 4"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(torch.zeros(2, 3, 8, 8), torch.ones(2), torch.zeros(2, 10))


def test_bad_condition_shape_names_the_shape():
    model = _small_model()
    batch = {"real": torch.zeros(2, 3, 8, 8), "condition": torch.zeros(3, 4)}
    with pytest.raises(ValueError, match=re.escape("batch['condition'] has shape (3, 4)")):
        model.validation_step(batch, 0)


def test_channel_count_must_match_the_model():
    model = _small_model(in_channels=3)
    message = "the data has 4 channels (shape (1, 4, 8, 8)) but this model was built for 3"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(torch.zeros(1, 4, 8, 8), torch.ones(1))


def test_images_then_videos_is_refused():
    model = _small_model()
    model(torch.zeros(1, 3, 8, 8), torch.ones(1))
    message = "this model was built for 4-D input, got shape (1, 3, 2, 8, 8)"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(torch.zeros(1, 3, 2, 8, 8), torch.ones(1))


def test_sample_is_deterministic_and_leaves_global_rng_alone():
    model = _small_model(in_channels=3, spatial_dims=2, cond_dim=4)
    cond = torch.eye(4)[:2]
    state = torch.get_rng_state()
    a = model.sample((2, 3, 8, 8), condition=cond, num_steps=3, guidance=2.0, seed=7)
    b = model.sample((2, 3, 8, 8), condition=cond, num_steps=3, guidance=2.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 3, 8, 8) and torch.isfinite(a).all()
    assert not torch.equal(a, model.sample((2, 3, 8, 8), condition=cond, num_steps=3, seed=8))


def test_untrained_model_samples_pure_noise_scale():
    # Zero-initialized output layer: D(x) = c_skip * x, so one Euler step from sigma_max
    # scales the start noise by c_skip(80) = 0.25 / (6400 + 0.25).
    model = _small_model()
    out = model.sample((1, 3, 8, 8), num_steps=1, seed=3)
    start = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(3)) * 80.0
    # x - (1 - c_skip) * x cancels almost all of x in float32, hence the loose tolerance.
    torch.testing.assert_close(out, start * 0.25 / (6400 + 0.25), rtol=1e-2, atol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_channels": 0}, "hidden_channels=0 must be > 0"),
        ({"hidden_channels": 33}, "hidden_channels=33 must be even"),
        ({"sigma_data": -1.0}, "sigma_data=-1.0 must be > 0"),
        ({"cond_drop_prob": 1.0}, "cond_drop_prob=1.0 must be in [0, 1)"),
        ({"spatial_dims": 1}, "spatial_dims=1 is unknown; use 2, 3 or None"),
        ({"cond_dim": -1}, "cond_dim=-1 must be >= 0 (0: unconditional) or None"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EDMDenoiser(**kwargs)


def test_works_as_a_lightning_cli_model():
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        EDMDenoiser,
        run=False,
        args=["--model.hidden_channels=16", "--model.spatial_dims=3", "--trainer.logger=false"],
    )
    assert cli.model.hparams.hidden_channels == 16
    assert cli.model.hparams.spatial_dims == 3


def _demo_datamodule(tmp_path, **kwargs):
    from fastgen_dm import DemoDataModule

    options = dict(num_images=32, batch_size=4, num_workers=0, resolution=8)
    return DemoDataModule(dataset_path=str(tmp_path / "demo.zip"), **(options | kwargs))


def test_setup_builds_every_parameter_from_the_datamodule(tmp_path):
    dm = _demo_datamodule(tmp_path)
    dm.prepare_data()
    model = _small_model()
    trainer = _trainer(max_steps=1)
    trainer.fit(model, datamodule=dm)
    assert model.net.patchify.weight.shape[1] == 3 and model.net.map_condition.in_features == 4
    assert model.net.patchify.weight.ndim == 4


def test_two_process_ddp_fit_needs_no_shape_arguments(tmp_path):
    from helpers import DestroyProcessGroup

    dm = _demo_datamodule(tmp_path)
    dm.prepare_data()
    trainer = _trainer(
        devices=2, strategy="ddp_spawn", max_steps=2, callbacks=[DestroyProcessGroup()]
    )
    model = _small_model()
    trainer.fit(model, datamodule=dm)
    # ddp_spawn hands rank 0's weights and metrics back to this process.
    assert trainer.state.status == "finished" and "train/loss" in trainer.callback_metrics
    assert model.is_materialized


def test_two_processes_without_a_datamodule_name_the_fix():
    message = "pass datamodule= to fit, or in_channels, spatial_dims and cond_dim, e.g. in_channels=3"
    model = _small_model()
    model.trainer = _trainer(devices=2, strategy="ddp_spawn")  # the hook alone; nothing is spawned
    with pytest.raises(ValueError, match=re.escape(message)):
        model.setup("fit")


def test_fit_ends_with_the_first_and_last_loss(tmp_path, caplog):
    dm = _demo_datamodule(tmp_path)
    dm.prepare_data()
    with caplog.at_level("INFO"):
        _trainer(max_steps=12).fit(_small_model(), datamodule=dm)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train/loss")]
    assert re.fullmatch(
        r"train/loss \d+\.\d{3} over this run's first 10 steps, \d+\.\d{3} over its last 10 \(global step 12\)", line
    ), line
