"""airbench94's network (Keller Jordan, github.com/KellerJordan/cifar10-airbench), rewritten.

airbench94 reaches 94% on CIFAR-10 in about 3.3 s on an A100. The network is small and plain:

    whiten (2x2 conv, 3 -> 24, frozen, set from the data) -> GELU (model.activation: or SiLU)
    3 x [conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU]   (64, 256, 256 channels)
    global max-pool -> linear (no bias) -> x 1/9

Spatial sizes for a 32x32 input: 31 (the unpadded 2x2 conv) -> 15 -> 7 -> 3 -> 1.

Its Network hooks (cifar_lightning/models/network.py) are how the LightningModule drives it:
  * data_init_size / init_from_data: before the first training step, the whitening layer is set
    from 5000 normalised, un-augmented training images (airbench's count), once: a resumed
    checkpoint carries the whitening weights, and data_init_size is then 0;
  * on_train_epoch_start: the whitening bias trains for the first `whiten_bias_epochs` epochs;
  * param_groups: with norm_bias_lr_scale != 1, the batch-norm biases form a group of their own
    at that many times the learning rate (airbench's bias_scaler: 64); with whiten_bias_lr_scale
    set, the whitening bias forms another, whose learning rate falls linearly to zero over its
    `whiten_bias_epochs` (airbench94_muon's grouping). Without it, the whitening bias trains in
    the first group on the run's schedule until it freezes (airbench94's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifar_lightning.models.network import Network

WHITENING_IMAGES = 5000  # images init_from_data whitens with (airbench's count)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    # No bias: every conv is followed by a batch norm, which has its own.
    conv = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
    # Identity ("dirac") init of the first c_in filters on top of the default init: at the start
    # each conv passes its input through (plus noise from the other filters), an implicit
    # residual connection that lets this plain, residual-free net train fast.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: conv.in_channels])
    return conv


def batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    # eps=1e-12 as airbench, in effect none: the normalisation is exact.
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    # No learned scale (airbench's choice, one parameter set fewer to tune and decay): the
    # weight stays at its initial 1. The shift (bias) is learned.
    bn.weight.requires_grad_(False)
    return bn


ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}  # airbench: GELU; hiverge's record line: SiLU


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float, activation: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = batch_norm(c_out, bn_momentum)
        self.conv2 = conv3x3(c_out, c_out)
        self.norm2 = batch_norm(c_out, bn_momentum)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        # Pool straight after the first conv: the BN and GELU then run on a quarter of the pixels.
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(Network):
    def __init__(
        self,
        widths: Sequence[int] = (64, 256, 256),
        num_classes: int = 10,
        whiten_bias_epochs: int = 3,
        scaling: float = 1 / 9,
        *,
        bn_momentum: float = 0.4,
        whiten_eps: float = 5e-4,
        norm_bias_lr_scale: float = 1.0,
        whiten_bias_lr_scale: float | None = None,
        activation: str = "gelu",
        head_std: float | None = None,
        zero_whiten_bias: bool = True,
    ) -> None:
        """widths: output channels of the conv groups. whiten_bias_epochs: epochs during which
        the whitening layer's bias trains (then it is frozen). scaling: multiplies the logits.
        bn_momentum: PyTorch's convention, running = (1 - m) * running + m * batch; airbench's
        "batchnorm_momentum: 0.6" is the other (Keras) convention and passes 1 - 0.6 = 0.4 to
        PyTorch. whiten_eps: added to the patch-covariance eigenvalues before 1/sqrt.
        norm_bias_lr_scale: the batch-norm biases' learning rate relative to the other
        parameters' (airbench: BN biases learn 64x faster), weight decay scaled down by the same
        factor (see param_groups). whiten_bias_lr_scale: None, the whitening bias is one of the
        other parameters; a number, it is a group of its own at that lr scale whose learning rate
        decays linearly to zero over whiten_bias_epochs. activation: "gelu" (airbench) or
        "silu", after the whitening layer and every batch norm. head_std: None, the head keeps
        PyTorch's default init; a number, its initial weights are rescaled to exactly that
        standard deviation (airbench94_muon: std 1 at a 1/256 output scale, i.e. 9/256 at
        fastnet's 1/9). zero_whiten_bias: the whitening bias starts at zero (airbench94);
        false keeps PyTorch's default draw, uniform in +-1/sqrt(12) (airbench94_muon)."""
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation: unknown activation {activation!r}; use one of "
                f"{sorted(ACTIVATIONS)}"
            )
        widths = [int(w) for w in widths]
        self.whiten_bias_epochs = whiten_bias_epochs
        self.whiten_eps = whiten_eps
        self.scaling = scaling
        self.norm_bias_lr_scale = norm_bias_lr_scale
        self.whiten_bias_lr_scale = whiten_bias_lr_scale

        # 2x2 patches of 3 channels have 12 dimensions; each gets a +v and a -v filter, so that
        # the GELU after it keeps both signs of every whitened direction.
        k = 2
        self.whiten = nn.Conv2d(3, 2 * 3 * k * k, k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set by init_whitening, never trained
        if zero_whiten_bias:  # drawn by nn.Conv2d either way: the later draws do not move
            nn.init.zeros_(self.whiten.bias)
        # Whether init_whitening has run; in the state dict, so a loaded checkpoint says so too.
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))

        self.act = ACTIVATIONS[activation]()
        groups, c_in = [], self.whiten.out_channels
        for c_out in widths:
            groups.append(ConvGroup(c_in, c_out, bn_momentum, activation))
            c_in = c_out
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        if head_std is not None:
            # The default draw, rescaled: no extra random numbers, so the other layers' initial
            # weights are the same draw with or without it.
            with torch.no_grad():
                self.head.weight.mul_(head_std / self.head.weight.std())

    @torch.no_grad()
    def init_whitening(self, images: Tensor, chunk_size: int = 1000) -> None:
        """Set the first conv to whiten the 2x2 patches of `images`.

        images: float (N, 3, H, W), normalised as the training inputs are (a few thousand
        un-augmented training images are plenty: the covariance is only 12x12). Each filter is an
        eigenvector v of the patch covariance C scaled by 1/sqrt(lambda + eps), so the outputs
        are decorrelated with unit variance (lambda / (lambda + eps), to be exact) on these
        patches. As airbench, C is the second moment of the patches, not mean-centred: the
        inputs are normalised to zero mean per channel, and the learned bias takes up the rest.
        """
        weight = self.whiten.weight
        k = weight.shape[-1]
        dim = weight.shape[1] * k * k
        # Accumulated in float64 over chunks: the patches of 5000 images would take ~230 MB at
        # once, and a float32 sum over millions of patches loses digits.
        second_moment = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
        count = 0
        for chunk in images.split(chunk_size):
            # unfold orders each patch as (channel, row, col), the layout of a conv filter.
            patches = F.unfold(chunk.double(), k).transpose(1, 2).reshape(-1, dim)
            second_moment += patches.T @ patches
            count += len(patches)
        second_moment /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)  # ascending, in columns
        # Largest eigenvalue first (airbench's order): channel i carries the i-th direction.
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = eigenvectors.T / (eigenvalues[:, None] + self.whiten_eps).sqrt()
        filters = filters.reshape(dim, *weight.shape[1:])
        # copy_ keeps the weight's dtype, device and memory format (channels_last included).
        weight.copy_(torch.cat([filters, -filters]))
        self.whitened.fill_(True)

    @property
    def data_init_size(self) -> int:
        # bool() of a device tensor syncs, once per fit.
        return 0 if bool(self.whitened) else WHITENING_IMAGES

    def init_from_data(self, images: Tensor) -> None:
        self.init_whitening(images)

    def on_train_epoch_start(self, epoch: int) -> None:
        """At the start of each training epoch (0-based): the whitening bias trains for the
        first `whiten_bias_epochs` epochs, then stays fixed. A parameter without requires_grad
        gets no gradient, and PyTorch optimizers skip parameters whose grad is None (Lightning
        zeroes gradients to None), so neither the update nor weight decay touches it."""
        self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)

    def param_groups(self) -> list[dict[str, Any]]:
        groups = [{"params": [], "lr_scale": 1.0}]
        moved = {}  # id(parameter) -> the group it leaves the first one for
        if self.norm_bias_lr_scale != 1.0:
            # The batch-norm biases at a scaled lr (airbench's grouping).
            norm = {"params": [], "lr_scale": self.norm_bias_lr_scale}
            biases = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
            moved.update((id(b), norm) for b in biases)
            groups.append(norm)
        if self.whiten_bias_lr_scale is not None:
            # airbench94_muon: the whitening bias at the biases' lr, decaying to zero over the
            # epochs it trains (the Classifier turns decay_epochs into steps).
            whiten = {"params": [], "lr_scale": self.whiten_bias_lr_scale,
                      "decay_epochs": self.whiten_bias_epochs}  # fmt: skip
            moved[id(self.whiten.bias)] = whiten
            groups.append(whiten)
        for p in self.parameters():
            if p.requires_grad:
                moved.get(id(p), groups[0])["params"].append(p)
        return groups

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.whiten(x))
        x = self.groups(x)
        # Global max-pool (airbench: MaxPool2d(3) over the final 3x3), taken in float32: under
        # torch.compile with bf16 autocast on CPU, inductor's backward of a bf16 amax after GELU
        # gives NaN gradients (torch 2.14). The values are bf16 either way, so the max is too;
        # cast back so that a bf16/fp16 network (precision=bf16-true) gets its own dtype.
        x = x.float().amax(dim=(2, 3)).to(x.dtype)
        # A fixed scale (airbench: 1/9) shrinks the logits, which max-pooled features make
        # large, and with them the head's effective step size.
        return self.head(x) * self.scaling
