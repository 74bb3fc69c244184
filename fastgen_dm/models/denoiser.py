"""A small, readable EDM denoiser that adapts to whatever batch a DataModule delivers.

It is a reference model for examples, notebooks and tests, not a competitive one. It follows the
preconditioning, noise distribution and loss weighting of Karras et al. 2022 ("Elucidating the
Design Space of Diffusion-Based Generative Models"), on top of a tiny patch-based residual
convolution network.

Shapes it accepts (``batch["real"]``):

- ``[B, C, H, W]`` images or image latents: 2-D convolutions;
- ``[B, C, T, H, W]`` videos or video latents: 3-D convolutions.

The channel count, the convolution rank and the condition width come from the data unless
``in_channels``, ``spatial_dims`` and ``cond_dim`` are all given, in which case every parameter
exists right after ``__init__``. Inside a Trainer with a DataModule, ``setup`` takes them from
the DataModule's first batch, so every parameter exists before ``DistributedDataParallel`` wraps
the model (it refuses uninitialized parameters) and before a checkpoint's weights are loaded:
``fit`` and resume work on any number of processes without shape arguments. Elsewhere (loaders
passed to ``Trainer.fit``, a model called by hand) the parameters are lazy and materialize on
the first forward pass.

How lazy parameters meet the optimizer: Lightning calls ``configure_optimizers`` before the first
batch. The optimizer is built over the (still uninitialized) lazy parameters; the first forward pass
materializes those same ``Parameter`` objects in place, so the optimizer holds the real tensors
from its first ``step``. Adam creates its state on the first step, so nothing is lost.
Checkpoints restore into a lazy model without a batch: loading a state dict materializes the
parameters from the stored shapes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import lightning
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

__all__ = ["EDMDenoiser"]

# The sampler's noise range and schedule curvature, as in EDM's `edm_sampler`.
_SIGMA_MIN = 0.002
_SIGMA_MAX = 80.0
_RHO = 7.0

# Steps averaged for the first and last training loss reported at the end of ``fit``.
_REPORTED_STEPS = 10

# Validation noise levels: this many quantiles of the training lognormal, assigned to samples
# round-robin, so `val/loss` covers the whole training range deterministically.
_NUM_VAL_SIGMAS = 8

_CONV_FUNCTIONS = {
    (2, False): F.conv2d,
    (3, False): F.conv3d,
    (2, True): F.conv_transpose2d,
    (3, True): F.conv_transpose3d,
}


class _LazyConvNd(LazyModuleMixin, nn.Module):
    """A convolution that is 2-D for ``[B, C, H, W]`` input and 3-D for ``[B, C, T, H, W]``.

    The weight's rank records which: ``[out, in, k, k]`` or ``[out, in, kt, k, k]`` (``[in, out,
    ...]`` when transposed). Nothing else is inferred, so a module restored from a checkpoint
    knows its rank without seeing a batch. Strides apply to H and W only; the time axis keeps
    stride 1 and "same" padding.

    Args:
        out_channels: Output channels; None to take them from ``forward``'s ``out_channels``
            argument on the first call (used by the output layer, whose width is the data's).
        kernel_size: Spatial kernel size. Odd kernels with stride 1 pad to keep the size; a
            kernel equal to the stride cuts (or, transposed, pastes) non-overlapping patches.
        temporal_kernel_size: Kernel size along T for 3-D input (odd).
        stride: Spatial stride.
        transposed: Use a transposed convolution (patch size up instead of down).
        zero_init: Start with zero weight and bias, so the layer first outputs zeros.
        in_channels: Input channels; None to infer them from the first input.
        spatial_dims: 2 or 3; None to infer from the first input.
    """

    def __init__(
        self,
        out_channels: int | None,
        kernel_size: int,
        *,
        temporal_kernel_size: int = 1,
        stride: int = 1,
        transposed: bool = False,
        zero_init: bool = False,
        in_channels: int | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__()
        assert stride == 1 and kernel_size % 2 == 1 or kernel_size == stride
        assert temporal_kernel_size % 2 == 1
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.temporal_kernel_size = temporal_kernel_size
        self.stride = stride
        self.transposed = transposed
        self.zero_init = zero_init
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()
        if None not in (in_channels, out_channels, spatial_dims):
            self._materialize(in_channels, out_channels, spatial_dims)

    def initialize_parameters(self, x: torch.Tensor, out_channels: int | None = None) -> None:
        """Materialize the weight from the first input (called by ``LazyModuleMixin``)."""
        if self.has_uninitialized_params():
            out = self.out_channels if self.out_channels is not None else out_channels
            assert out is not None, "out_channels must come from __init__ or the first call"
            self._materialize(x.shape[1], out, x.ndim - 2)

    def _materialize(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        kernel = (self.kernel_size,) * 2
        if spatial_dims == 3:
            kernel = (self.temporal_kernel_size, *kernel)
        channels = (in_channels, out_channels) if self.transposed else (out_channels, in_channels)
        with torch.no_grad():
            self.weight.materialize((*channels, *kernel))
            self.bias.materialize((out_channels,))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default convolution init (uniform in +-1/sqrt(fan_in)), or zeros."""
        if self.has_uninitialized_params():
            return
        if self.zero_init:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)
            return
        fan_in = self.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, out_channels: int | None = None) -> torch.Tensor:
        spatial_dims = self.weight.ndim - 2
        if x.ndim - 2 != spatial_dims:
            raise ValueError(
                f"this model was built for {spatial_dims + 2}-D input, got shape {tuple(x.shape)}; "
                "a model handles either images [B, C, H, W] or videos [B, C, T, H, W], not both"
            )
        stride: tuple[int, ...] = (self.stride,) * 2
        padding: tuple[int, ...] = (0, 0) if self.stride > 1 else (self.kernel_size // 2,) * 2
        if spatial_dims == 3:
            stride = (1, *stride)
            padding = (self.temporal_kernel_size // 2, *padding)
        conv = _CONV_FUNCTIONS[(spatial_dims, self.transposed)]
        return conv(x, self.weight, self.bias, stride=stride, padding=padding)


class _LazyLinear(LazyModuleMixin, nn.Module):
    """A linear map whose input width comes from the first input; width 0 leaves just the bias.

    Unlike ``torch.nn.LazyLinear`` it accepts zero input features without warning, which is how
    an unconditional model sees its (empty) condition, so the bias stays a trained parameter.

    Args:
        out_features: Output width.
        in_features: Input width; None to infer it from the first input.
    """

    def __init__(self, out_features: int, in_features: int | None = None) -> None:
        super().__init__()
        self.out_features = out_features
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()
        if in_features is not None:
            self._materialize(in_features)

    def initialize_parameters(self, x: torch.Tensor) -> None:
        """Materialize the weight from the first input (called by ``LazyModuleMixin``)."""
        if self.has_uninitialized_params():
            self._materialize(x.shape[-1])

    def _materialize(self, in_features: int) -> None:
        with torch.no_grad():
            self.weight.materialize((self.out_features, in_features))
            self.bias.materialize((self.out_features,))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(in_features) (PyTorch's default); zero bias."""
        if self.has_uninitialized_params():
            return
        bound = 1.0 / math.sqrt(max(self.weight.shape[1], 1))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    @property
    def in_features(self) -> int | None:
        """The input width, or None before the first input."""
        return None if self.has_uninitialized_params() else self.weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B, C] -> [B, C, 1, 1] (ndim 4) or [B, C, 1, 1, 1] (ndim 5), to broadcast per channel."""
    return v.reshape(*v.shape, *([1] * (ndim - 2)))


class _Block(nn.Module):
    """Residual block: norm, conv, norm, per-channel scale and shift from the embedding, conv."""

    def __init__(self, channels: int, emb_channels: int, spatial_dims: int | None) -> None:
        super().__init__()
        groups = math.gcd(channels, 8)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = _LazyConvNd(
            channels, 3, temporal_kernel_size=3, in_channels=channels, spatial_dims=spatial_dims
        )
        self.modulation = nn.Linear(emb_channels, 2 * channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        # Zero init makes each block the identity at first, which keeps early training stable.
        self.conv2 = _LazyConvNd(
            channels,
            3,
            temporal_kernel_size=3,
            zero_init=True,
            in_channels=channels,
            spatial_dims=spatial_dims,
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = _channel_view(self.modulation(emb), h.ndim).chunk(2, dim=1)
        y = self.conv1(F.silu(self.norm1(h)))
        y = self.norm2(y) * (1 + scale) + shift
        return h + self.conv2(F.silu(y))


class _Network(nn.Module):
    """The raw network F(x, c_noise, condition): patchify, residual blocks, unpatchify.

    Working on patch_size x patch_size patches keeps it fast on a CPU: for 32x32 input and
    patch size 2 the blocks run at 16x16.
    """

    def __init__(
        self,
        hidden_channels: int,
        num_blocks: int,
        patch_size: int,
        in_channels: int | None,
        spatial_dims: int | None,
        cond_dim: int | None,
    ) -> None:
        super().__init__()
        emb_channels = 2 * hidden_channels
        self.patch_size = patch_size
        self.patchify = _LazyConvNd(
            hidden_channels,
            patch_size,
            stride=patch_size,
            in_channels=in_channels,
            spatial_dims=spatial_dims,
        )
        # Fourier features of c_noise = ln(sigma) / 4, which spans about [-1.6, 1.1]; these
        # frequencies resolve that range finely. Fixed, so not saved in checkpoints.
        num_freqs = hidden_channels // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(64.0), num_freqs))
        self.register_buffer("noise_freqs", freqs, persistent=False)
        self.map_noise = nn.Linear(2 * num_freqs, emb_channels)
        self.map_condition = _LazyLinear(emb_channels, in_features=cond_dim)
        self.map_emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_channels), nn.SiLU())
        self.blocks = nn.ModuleList(
            _Block(hidden_channels, emb_channels, spatial_dims) for _ in range(num_blocks)
        )
        self.norm_out = nn.GroupNorm(math.gcd(hidden_channels, 8), hidden_channels)
        # Zero init: the network first predicts zeros, so D(x) starts as c_skip * x.
        self.unpatchify = _LazyConvNd(
            in_channels,
            patch_size,
            stride=patch_size,
            transposed=True,
            zero_init=True,
            in_channels=hidden_channels,
            spatial_dims=spatial_dims,
        )

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        height, width = x.shape[-2:]
        # Pad H and W up to a multiple of the patch size; the output is cropped back below.
        pad_h, pad_w = -height % self.patch_size, -width % self.patch_size
        h = self.patchify(F.pad(x, (0, pad_w, 0, pad_h)))
        angles = c_noise[:, None] * self.noise_freqs[None, :]
        emb = self.map_noise(torch.cat([angles.cos(), angles.sin()], dim=1))
        emb = self.map_emb(emb + self.map_condition(condition))
        for block in self.blocks:
            h = block(h, emb)
        out = self.unpatchify(F.silu(self.norm_out(h)), out_channels=x.shape[1])
        return out[..., :height, :width]


def _condition_from(value: Any, batch_size: int) -> torch.Tensor | None:
    """Turn ``batch["condition"]`` into ``[B, D]``, or None when the batch is unconditional.

    One-hot ``[B, K]`` and embeddings ``[B, D]`` pass through; ``[B, L, D]`` token embeddings
    are averaged over L. Missing, ``[B, 0]`` and raw captions (a list of strings, which this
    model cannot encode) mean unconditional.
    """
    if value is None or isinstance(value, (str, Sequence)):
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"batch['condition'] must be a tensor or a list of strings, got {type(value).__name__}"
        )
    if value.ndim == 3:
        value = value.mean(dim=1)
    if value.ndim != 2 or value.shape[0] != batch_size:
        raise ValueError(
            f"batch['condition'] has shape {tuple(value.shape)}; expected [B, K] one-hot, [B, D] "
            f"or [B, L, D] embeddings with B = {batch_size} (the batch size of batch['real'])"
        )
    return value if value.shape[1] > 0 else None


# The loader each stage runs, so ``setup`` can look at the batches that stage will train on.
_STAGE_LOADERS = {
    "fit": "train_dataloader",
    "validate": "val_dataloader",
    "test": "test_dataloader",
    "predict": "predict_dataloader",
}


def _first_batch(datamodule: Any, stage: str) -> dict[str, Any] | None:
    """The first batch of ``stage``'s loader of ``datamodule``, or None when there is none.

    A fastgen-dm loader's stream is iterated in this process (no workers start, and the
    DataModule's position is left alone); any other loader is iterated once.
    """
    from fastgen_dm.streams import PlannedDataLoader

    make_loader = getattr(datamodule, _STAGE_LOADERS.get(stage, ""), None)
    if make_loader is None:
        return None
    try:
        loader = make_loader()
    except NotImplementedError:  # LightningDataModule's stub for a stage it lacks
        return None
    batches = iter(loader.dataset if isinstance(loader, PlannedDataLoader) else loader)
    batch = next(batches, None)
    del batches  # shuts down any worker processes now
    return batch if isinstance(batch, dict) and "real" in batch else None


def _validate_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be > 0")


def _validate_probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} must be in [0, 1)")


class EDMDenoiser(lightning.LightningModule):
    """An EDM-preconditioned denoiser for images, videos and their latents.

    D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise, condition), trained at
    sigma ~ lognormal(p_mean, p_std) with loss weight (sigma^2 + sigma_data^2) / (sigma *
    sigma_data)^2, as in Karras et al. 2022. Shapes come from the first batch unless given; see
    the module docstring for how that meets ``configure_optimizers``.

    Conditions (``batch["condition"]``): one-hot ``[B, K]``, embeddings ``[B, D]`` or ``[B, L,
    D]`` (mean over L) are projected into the noise embedding, which scales and shifts every
    channel of every block. ``[B, 0]``, a missing key or raw captions (list of strings) train an
    unconditional model. During training each sample's condition is zeroed with probability
    ``cond_drop_prob``, so ``sample(..., guidance=g)`` can do classifier-free guidance.

    Randomness comes from torch's default generator, so ``lightning.seed_everything`` makes
    training reproducible; validation, test, predict and sampling use their own seeded generators.

    Args:
        hidden_channels: Width of the network (channels per patch position). Default 64.
        num_blocks: Number of residual blocks. Default 4.
        sigma_data: Standard deviation of the data, in data units. 0.5 suits pixels in [-1, 1];
            set it to the latents' standard deviation when training on latents. Default 0.5.
        p_mean: Mean of ln(sigma) during training. Default -1.2.
        p_std: Standard deviation of ln(sigma) during training. Default 1.2.
        lr: Adam learning rate. Default 2e-4.
        cond_drop_prob: Probability of training a sample without its condition (for
            classifier-free guidance), in [0, 1). Default 0.1.
        patch_size: Side of the square patches the network works on; H and W are padded up to a
            multiple of it. 1 works at full resolution (slow). Default 2.
        in_channels: Channels of ``batch["real"]``; None to take them from the first batch.
        spatial_dims: 2 for ``[B, C, H, W]`` batches, 3 for ``[B, C, T, H, W]``; None to take
            it from the first batch.
        cond_dim: Width of the condition after averaging over tokens (K classes or D features),
            0 for unconditional; None to take it from the first batch. Give all of
            ``in_channels``, ``spatial_dims`` and ``cond_dim`` to have every parameter exist
            after ``__init__`` (needed for DDP when ``fit`` gets loaders instead of a DataModule).
    """

    def __init__(
        self,
        hidden_channels: int = 64,
        num_blocks: int = 4,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        lr: float = 2e-4,
        cond_drop_prob: float = 0.1,
        patch_size: int = 2,
        in_channels: int | None = None,
        spatial_dims: Literal[2, 3] | None = None,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in [
            ("hidden_channels", hidden_channels),
            ("patch_size", patch_size),
            ("sigma_data", sigma_data),
            ("lr", lr),
        ]:
            _validate_positive(name, value)
        if num_blocks < 0:
            raise ValueError(f"num_blocks={num_blocks!r} must be >= 0")
        if p_std < 0:
            raise ValueError(f"p_std={p_std!r} must be >= 0")
        _validate_probability("cond_drop_prob", cond_drop_prob)
        if hidden_channels % 2:
            raise ValueError(f"hidden_channels={hidden_channels!r} must be even")
        if spatial_dims not in (None, 2, 3):
            raise ValueError(f"spatial_dims={spatial_dims!r} is unknown; use 2, 3 or None")
        if cond_dim is not None and cond_dim < 0:
            raise ValueError(f"cond_dim={cond_dim!r} must be >= 0 (0: unconditional) or None")
        self.save_hyperparameters()
        self.sigma_data = sigma_data
        self.p_mean = p_mean
        self.p_std = p_std
        self.lr = lr
        self.cond_drop_prob = cond_drop_prob
        self.net = _Network(
            hidden_channels, num_blocks, patch_size, in_channels, spatial_dims, cond_dim
        )
        # Detached losses of this process's first and latest steps, for the report at the end.
        self._first_losses: list[torch.Tensor] = []
        self._last_losses: deque[torch.Tensor] = deque(maxlen=_REPORTED_STEPS)

    # -- the denoiser -----------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise ``x`` (clean data plus noise of std ``sigma``).

        Args:
            x: Noisy data, ``[B, C, H, W]`` or ``[B, C, T, H, W]``.
            sigma: Noise level per sample, ``[B]`` (or a scalar tensor).
            condition: ``[B, D]`` condition, or None for unconditional (zeros).

        Returns:
            The denoised estimate D(x; sigma), same shape as ``x``.
        """
        self._check_channels(x)
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        condition = self._fit_condition(condition, x.shape[0], x)
        s = _channel_view(sigma[:, None], x.ndim)
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip * x + c_out * self.net(c_in * x, c_noise, condition)

    def _check_channels(self, x: torch.Tensor) -> None:
        patchify = self.net.patchify
        expected = self.hparams.in_channels
        if not patchify.has_uninitialized_params():
            expected = patchify.weight.shape[1]
        if expected is not None and x.shape[1] != expected:
            raise ValueError(
                f"the data has {x.shape[1]} channels (shape {tuple(x.shape)}) but this model was "
                f"built for {expected} (in_channels, or the first batch's channels)"
            )

    def _fit_condition(
        self, condition: torch.Tensor | None, batch_size: int, like: torch.Tensor
    ) -> torch.Tensor:
        """Match the condition to the width the model was built with.

        No condition becomes zeros, the same "no condition" that condition dropout trains.
        """
        width = self.net.map_condition.in_features
        if condition is None:
            return like.new_zeros(batch_size, width or 0)
        if width is not None and condition.shape[1] != width:
            raise ValueError(
                f"the condition has {condition.shape[1]} features per sample but this model "
                f"was built for {width} (cond_dim, or the width of the first condition it saw)"
            )
        return condition.to(like.dtype)

    def _loss(
        self,
        batch: dict[str, Any],
        sigma: torch.Tensor,
        noise: torch.Tensor,
        condition: torch.Tensor | None,
    ) -> torch.Tensor:
        """EDM's weighted denoising loss of each sample, averaged over its elements: ``[B]``."""
        real = batch["real"]
        s = _channel_view(sigma[:, None], real.ndim)
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        denoised = self(real + noise * s, sigma, condition)
        return (weight * (denoised - real) ** 2).flatten(1).mean(dim=1)

    # -- Lightning hooks --------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Build every parameter now, from the data: DDP wraps the model before the first batch
        # and refuses lazy parameters, and a resumed run loads its weights before that too.
        if self.is_materialized:
            return
        batch = _first_batch(self.trainer.datamodule, stage)
        if batch is not None:
            self.materialize_from(batch)
        elif self.trainer.world_size > 1 and stage == "fit" and self.trainer.ckpt_path is None:
            raise ValueError(
                f"EDMDenoiser cannot infer its shapes on {self.trainer.world_size} processes "
                "without a DataModule (DDP needs every parameter before the first batch); pass "
                "datamodule= to fit, or in_channels, spatial_dims and cond_dim, e.g. "
                "in_channels=3, spatial_dims=2, cond_dim=4 for 3-channel images of 4 classes"
            )

    @torch.no_grad()
    def materialize_from(self, batch: dict[str, Any]) -> None:
        """Give every lazy parameter its shape from one batch (one sample of it is run)."""
        real = batch["real"][:1].to(self.device, torch.float32)
        condition = _condition_from(batch.get("condition"), batch["real"].shape[0])
        if condition is not None:
            condition = condition[:1].to(self.device)
        self(real, torch.ones(1, device=self.device), condition)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        real = batch["real"]
        batch_size = real.shape[0]
        condition = _condition_from(batch.get("condition"), batch_size)
        if condition is not None and self.cond_drop_prob > 0:
            keep = torch.rand(batch_size, device=real.device) >= self.cond_drop_prob
            condition = condition * keep[:, None].to(condition.dtype)
        sigma = (torch.randn(batch_size, device=real.device) * self.p_std + self.p_mean).exp()
        loss = self._loss(batch, sigma, torch.randn_like(real), condition).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if len(self._first_losses) < _REPORTED_STEPS:
            self._first_losses.append(loss.detach())
        self._last_losses.append(loss.detach())
        return loss

    def on_train_end(self) -> None:
        # One line that shows whether training worked, without opening the logs. Through
        # Lightning's logger, which has a handler in spawned DDP processes too.
        if self._first_losses:
            first = torch.stack(self._first_losses).mean().item()
            last = torch.stack(list(self._last_losses)).mean().item()
            rank_zero_info(
                f"train/loss {first:.3f} over this run's first {len(self._first_losses)} steps, "
                f"{last:.3f} over its last {len(self._last_losses)} (global step {self.trainer.global_step})"
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._eval_losses(batch, batch_idx).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["real"].shape[0], sync_dist=True)
        return loss

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._eval_losses(batch, batch_idx).mean()
        self.log("test/loss", loss, batch_size=batch["real"].shape[0], sync_dist=True)
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Each sample's denoising loss, as validation computes it: lower is better modelled.

        Returns:
            ``{"loss": float32 [B]}``, plus the batch's ``idx`` [B] when it has one, so losses can
            be matched to items (e.g. to find the data the model fits worst).
        """
        out = {"loss": self._eval_losses(batch, batch_idx)}
        if isinstance(batch.get("idx"), torch.Tensor):
            out["idx"] = batch["idx"]
        return out

    def _eval_losses(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Each sample's loss at fixed sigmas and noise, for validation, test and predict: ``[B]``."""
        real = batch["real"]
        batch_size = real.shape[0]
        condition = _condition_from(batch.get("condition"), batch_size)
        sigma = self._validation_sigmas(batch_size, real.device)
        # Same noise for the same batch index in every run, so curves and runs are comparable.
        generator = torch.Generator(device=real.device).manual_seed(batch_idx)
        noise = torch.randn(real.shape, generator=generator, device=real.device, dtype=real.dtype)
        return self._loss(batch, sigma, noise, condition)

    def _validation_sigmas(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Quantiles (i + 0.5) / 8 of the training lognormal, repeated over the batch."""
        q = (torch.arange(_NUM_VAL_SIGMAS, dtype=torch.float64) + 0.5) / _NUM_VAL_SIGMAS
        grid = (self.p_mean + self.p_std * math.sqrt(2) * torch.erfinv(2 * q - 1)).exp()
        return grid.repeat(math.ceil(batch_size / _NUM_VAL_SIGMAS))[:batch_size].float().to(device)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Lazy parameters may still be uninitialized here; they are materialized in place by the
        # first forward pass, and Adam only creates its state at the first step.
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    # -- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int],
        condition: torch.Tensor | None = None,
        num_steps: int = 18,
        guidance: float = 1.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """Generate samples with EDM's deterministic Heun sampler (no churn).

        The noise levels run from sigma_max = 80 to sigma_min = 0.002 with rho = 7, then to 0; the
        last step is a plain Euler step. The result depends only on the weights, the arguments
        and the device.

        Args:
            shape: Output shape including the batch, e.g. ``(16, 3, 32, 32)`` or
                ``(2, 16, 8, 32, 32)``.
            condition: ``[B, K]`` one-hot, ``[B, D]`` or ``[B, L, D]`` embeddings; None for
                unconditional samples.
            num_steps: Number of noise levels before 0 (network evaluations: 2 * num_steps - 1,
                doubled when guiding). Default 18.
            guidance: Classifier-free guidance weight: 1 uses the conditional denoiser only,
                g > 1 extrapolates from the unconditional one. Default 1.
            seed: Seed of the initial noise (a local generator; global RNG untouched).

        Returns:
            Samples of ``shape``, in data units (pixels roughly in [-1, 1]).
        """
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps!r} must be >= 1")
        shape = tuple(shape)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        # Drawn on the CPU so that a seed gives the same start on every device.
        x = torch.randn(shape, generator=generator).to(self.device)
        cond = _condition_from(condition, shape[0])
        if cond is not None:
            cond = cond.to(self.device)
        ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
        lo, hi = _SIGMA_MIN ** (1 / _RHO), _SIGMA_MAX ** (1 / _RHO)
        sigmas = torch.cat([(hi + ramp * (lo - hi)) ** _RHO, torch.zeros(1, dtype=torch.float64)])
        x = x * sigmas[0].item()
        for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            slope = (x - self._guided(x, sigma, cond, guidance)) / sigma
            x_next = x + (sigma_next - sigma) * slope
            if sigma_next > 0:
                denoised_next = self._guided(x_next, sigma_next, cond, guidance)
                slope_next = (x_next - denoised_next) / sigma_next
                x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
            x = x_next
        return x

    def _guided(
        self, x: torch.Tensor, sigma: float, condition: torch.Tensor | None, guidance: float
    ) -> torch.Tensor:
        """D(x; sigma), with classifier-free guidance when a condition and guidance != 1."""
        sigma_t = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
        if condition is None or guidance == 1.0:
            return self(x, sigma_t, condition)
        # One pass over [conditional; unconditional] halves the Python overhead.
        both = self(
            torch.cat([x, x]),
            torch.cat([sigma_t, sigma_t]),
            torch.cat([condition, torch.zeros_like(condition)]),
        )
        cond_out, uncond_out = both.chunk(2)
        return uncond_out + guidance * (cond_out - uncond_out)

    @property
    def is_materialized(self) -> bool:
        """Whether every parameter has its shape (after the first batch, or given shapes)."""
        return not any(isinstance(p, UninitializedParameter) for p in self.parameters())
