"""Visual encoders: lip stream @25 fps -> ``[B, Dv, Tv]``.

Four built-ins, all ending in a V-TCN (:class:`VTCN`), the temporal stack of residual
depthwise-separable 1-D conv blocks (:class:`VisualConvBlock`) used as the visual front of
MuSE and SEANet; the ROI encoders hold a *front-end* (``self.frontend``, see
:mod:`avse.models.frontends`) that makes per-frame features first:

============  =====  ======================================================================
name          input  pipeline
============  =====  ======================================================================
embedding     emb    ``[B, Tv, 512]`` precomputed lip embeddings -> V-TCN
resnet18      roi    ``[B, Tv, 88, 88]`` -> front-end ``resnet18`` (3-D conv stem +
                     per-frame ResNet-18 trunk, 512) -> V-TCN
cnn           roi    ``[B, Tv, 88, 88]`` -> front-end ``cnn`` (frame differences, small
                     per-frame 2-D CNN; fast enough for CPU demos) -> V-TCN
dlr_resnet18  roi    ``[B, Tv, 112, 112]`` -> front-end ``dlr`` (the published
                     deep-lip-reading front-end, 512; frozen by default) -> V-TCN
============  =====  ======================================================================

ROI inputs are gray crops, uint8 0..255 or float on the same 0..255 scale (divided by
``input_scale / 255``; give ``input_scale=1.0`` for float crops already in 0..1). The ROI
encoders share ``pretrained: PATH`` (a front-end file, see
:func:`~avse.models.frontends.load_frontend_weights`) and ``trainable: bool`` (False: the
front-end is frozen, kept in eval mode and run without gradients;
:meth:`FrontendVisualEncoder.set_frontend_trainable` changes it later, e.g. to unfreeze after
N epochs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avse.models.base import VisualEncoder
from avse.models.frontends import build_frontend, check_rois, load_frontend_weights
from avse.models.registry import register
from avse.models.separators.tcn import ChannelNorm

__all__ = ["VisualConvBlock", "VTCN", "EmbeddingVisualEncoder", "FrontendVisualEncoder",
           "ResNet18VisualEncoder", "SmallCNNVisualEncoder", "DLRVisualEncoder", "make_norm1d"]


def make_norm1d(kind: str, channels: int) -> nn.Module:
    """A normalisation over ``[B, C, T]``.

    ``"gln"``: global layer norm (statistics over C and T per utterance, per-channel affine;
    ``GroupNorm(1, C)``, as in SEANet); ``"bn"``: ``BatchNorm1d`` (as in MuSE); ``"cln"``:
    the TCN separator's channel-wise layer norm (statistics over C per frame: causal).
    """
    if kind == "gln":
        return nn.GroupNorm(1, channels, eps=1e-8)
    if kind == "bn":
        return nn.BatchNorm1d(channels)
    if kind == "cln":
        return ChannelNorm(channels)
    raise ValueError(f"unknown norm {kind!r}; use 'gln', 'bn' or 'cln'")


def check_causal_norm(causal: bool, norm: str) -> None:
    """ValueError when ``causal`` asks for a norm that looks at the whole utterance."""
    if causal and norm == "gln":
        raise ValueError("causal=True needs a causal norm: norm='cln' or 'bn', not 'gln'")


class LeftPadConv1d(nn.Conv1d):
    """A ``Conv1d`` (``padding=0``) that pads ``dilation * (kernel_size - 1)`` zeros on the left
    of time only: output frame t sees input frames <= t (causal). Same parameters as Conv1d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))


class VisualConvBlock(nn.Module):
    """Residual depthwise-separable 1-D conv block on ``[B, C, T]`` (T = video frames).

    With ``hidden=None`` (MuSE form, width C throughout)::

        x + pw(norm(prelu(dw(norm(relu(x))))))

    With ``hidden=H`` (SEANet form, a 1x1 expansion C -> H first)::

        x + pw(norm(prelu(dw(norm(relu(expand(norm(relu(x)))))))))

    ``dw`` is a depthwise conv (``kernel_size``, "same" padding, ``dilation``; with
    ``causal`` left padding only, a :class:`LeftPadConv1d`) and ``pw`` a pointwise conv back
    to C; convs have no bias.

    Arguments
    ---------
    channels : int
        C, the residual width.
    hidden : int or None
        H, the expanded width of the depthwise conv; None keeps C.
    kernel_size, dilation : int
        of the depthwise conv (odd kernel).
    norm : str
        ``"gln"``, ``"bn"`` or ``"cln"`` (:func:`make_norm1d`).
    causal : bool
        left-only padding of the depthwise conv (needs ``norm`` ``"cln"`` or ``"bn"``).
    """

    def __init__(self, channels: int, hidden: int | None = None, kernel_size: int = 3,
                 dilation: int = 1, norm: str = "gln", causal: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep Tv, got {kernel_size}")
        check_causal_norm(causal, norm)
        width = channels if hidden is None else hidden
        layers = [nn.ReLU()]
        if hidden is not None:
            layers += [make_norm1d(norm, channels), nn.Conv1d(channels, width, 1, bias=False),
                       nn.ReLU()]
        if causal:
            depthwise = LeftPadConv1d(width, width, kernel_size, dilation=dilation, groups=width,
                                      bias=False)
        else:
            depthwise = nn.Conv1d(width, width, kernel_size,
                                  padding=dilation * (kernel_size - 1) // 2, dilation=dilation,
                                  groups=width, bias=False)
        layers += [make_norm1d(norm, width), depthwise,
                   nn.PReLU(),
                   make_norm1d(norm, width),
                   nn.Conv1d(width, channels, 1, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``."""
        return x + self.net(x)


class VTCN(nn.Module):
    """Visual temporal conv net: ``[B, in_dim, T]`` -> ``[B, out_dim, T]``.

    A bias-free 1x1 projection ``in_dim -> out_dim`` (omitted when they are equal and
    ``project`` is None) followed by ``num_blocks`` :class:`VisualConvBlock`.

    Defaults reproduce SEANet's visual front (512 -> 256, 5 blocks expanding to 512, gLN);
    ``out_dim=512, hidden=None, norm="bn"`` gives MuSE's (5 blocks at 512, BatchNorm, no
    projection). ``causal=True``: left-padded blocks (see :class:`VisualConvBlock`).
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 256, hidden: int | None = 512,
                 num_blocks: int = 5, kernel_size: int = 3, norm: str = "gln",
                 project: bool | None = None, causal: bool = False):
        super().__init__()
        if project is None:
            project = in_dim != out_dim
        if not project and in_dim != out_dim:
            raise ValueError(f"project=False needs in_dim == out_dim, got {in_dim} != {out_dim}")
        self.proj = nn.Conv1d(in_dim, out_dim, 1, bias=False) if project else nn.Identity()
        self.blocks = nn.Sequential(*[VisualConvBlock(out_dim, hidden, kernel_size, norm=norm,
                                                      causal=causal)
                                      for _ in range(num_blocks)])
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim, T]`` -> ``[B, out_dim, T]``."""
        return self.blocks(self.proj(x))


def _param_dtype(module: nn.Module):
    p = next(module.parameters(), None)
    return torch.float32 if p is None else p.dtype


@register("visual_encoder", "embedding")
class EmbeddingVisualEncoder(VisualEncoder):
    """Precomputed lip embeddings ``[B, Tv, in_dim]`` @25 fps -> ``[B, out_dim, Tv]``.

    The SEANet visual front: a bias-free projection ``in_dim -> out_dim`` then a
    :class:`VTCN` of ``num_blocks`` residual blocks (expansion to ``hidden``). MuSE's front
    is ``out_dim=512, hidden=None, norm="bn"`` (no projection when ``in_dim == out_dim``).

    Arguments
    ---------
    in_dim : int
        embedding size (512 for the usual lip-reading ResNet-18 embeddings).
    out_dim : int
        Dv.
    hidden : int or None
        expansion width inside each block; None: no expansion (MuSE form).
    num_blocks, kernel_size : int
        V-TCN depth and depthwise kernel.
    norm : str
        ``"gln"`` (SEANet) or ``"bn"`` (MuSE).
    pretrained, trainable :
        accepted so that one yaml can swap ROI and embedding encoders; this encoder has no
        front-end (the embedding stage ran it), so ``pretrained`` must be None.
    causal : bool
        a causal V-TCN (needs ``norm`` ``"cln"`` or ``"bn"``; the embeddings must come from a
        per-frame or causal front-end).

    Example
    -------
    >>> enc = EmbeddingVisualEncoder(out_dim=32, hidden=64, num_blocks=2)
    >>> enc(torch.randn(2, 10, 512)).shape
    torch.Size([2, 32, 10])
    """

    input_kind = "emb"

    def __init__(self, in_dim: int = 512, out_dim: int = 256, hidden: int | None = 512,
                 num_blocks: int = 5, kernel_size: int = 3, norm: str = "gln",
                 pretrained: str | None = None, trainable: bool = True, causal: bool = False):
        super().__init__()
        if pretrained:
            raise ValueError(f"the 'embedding' visual encoder reads precomputed embeddings and has "
                             f"no front-end to load {pretrained!r} into: compute the embeddings "
                             "with that front-end (python -m avse.recipes.embed --frontend FILE) "
                             "and set pretrained to null")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.vtcn = VTCN(in_dim, out_dim, hidden, num_blocks, kernel_size, norm, causal=causal)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb ``[B, Tv, in_dim]`` (any float dtype) -> ``[B, out_dim, Tv]``."""
        if emb.dim() != 3 or emb.shape[-1] != self.in_dim or not emb.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects float lip embeddings "
                             f"[B, Tv, {self.in_dim}], got {list(emb.shape)} {emb.dtype}; "
                             "for [B, Tv, 88, 88] mouth ROIs use a 'roi' visual encoder "
                             "(resnet18, cnn, dlr_resnet18)")
        x = emb.to(_param_dtype(self)).transpose(1, 2)
        return self.vtcn(x)


class FrontendVisualEncoder(VisualEncoder):
    """Lip ROIs ``[B, Tv, H, W]`` -> ``self.frontend`` (``[B, Tv, frame_dim]``) -> ``self.vtcn``
    -> ``[B, out_dim, Tv]``; the base of the ROI encoders.

    Subclasses set ``frontend_type`` (a front-end registry name) and pass the front-end's
    kwargs to ``__init__``.

    Arguments
    ---------
    frontend_config : dict
        kwargs of the front-end.
    out_dim, hidden, num_blocks, kernel_size, norm :
        the V-TCN ``frame_dim -> out_dim``, as in :class:`EmbeddingVisualEncoder`.
    trainable : bool
        False freezes the front-end: no gradients (run under ``torch.no_grad``), kept in eval
        mode (BatchNorm statistics fixed) even when the model is put in train mode.
    pretrained : str or None
        a front-end file loaded into the front-end (ours, or for ``dlr`` a published
        ``visual_frontend.pt``; a bare state dict of the front-end's keys is accepted too);
        its type and config must match (ValueError naming the file and the fields).
    input_scale : float
        float ROIs are on the 0..``input_scale`` scale (255: the uint8 scale; 1: 0..1).
    causal : bool
        a causal V-TCN; the subclass makes its front-end causal (its ``frontend_config``).
    """

    input_kind = "roi"
    frontend_type: str

    def __init__(self, frontend_config: dict, out_dim: int, hidden: int | None,
                 num_blocks: int, kernel_size: int, norm: str, trainable: bool,
                 pretrained: str | None, input_scale: float, causal: bool = False):
        super().__init__()
        self.out_dim, self.input_scale = out_dim, float(input_scale)
        self.frontend = build_frontend(self.frontend_type, **frontend_config)
        if pretrained:
            load_frontend_weights(self.frontend, str(pretrained))
        self.vtcn = VTCN(self.frontend.frame_dim, out_dim, hidden, num_blocks, kernel_size, norm,
                         causal=causal)
        self.set_frontend_trainable(trainable)

    @property
    def frame_dim(self) -> int:
        return self.frontend.frame_dim

    def set_frontend_trainable(self, flag: bool) -> None:
        """Freeze (False: no gradients, eval mode) or unfreeze (True: gradients, and the
        encoder's train/eval mode) the front-end."""
        self.trainable = bool(flag)
        self.frontend.requires_grad_(self.trainable)
        self.frontend.train(self.training and self.trainable)

    def train(self, mode: bool = True):
        """Set train/eval mode; a frozen front-end always stays in eval mode."""
        super().train(mode)
        if not self.trainable:
            self.frontend.eval()
        return self

    def frame_features(self, lips: torch.Tensor) -> torch.Tensor:
        """ROIs ``[B, Tv, H, W]`` -> per-frame features ``[B, Tv, frame_dim]``."""
        fe = self.frontend
        x = check_rois(lips, type(self).__name__, fe.roi_size, fe.exact_size, _param_dtype(self))
        if lips.is_floating_point() and self.input_scale != 255.0:
            x = x * (255.0 / self.input_scale)
        if self.trainable:
            return fe(x)
        with torch.no_grad():
            return fe(x)

    def forward(self, lips: torch.Tensor) -> torch.Tensor:
        """lips ``[B, Tv, H, W]`` @25 fps (uint8 or float) -> ``[B, out_dim, Tv]``."""
        return self.vtcn(self.frame_features(lips).transpose(1, 2))


@register("visual_encoder", "resnet18")
class ResNet18VisualEncoder(FrontendVisualEncoder):
    """Mouth ROIs ``[B, Tv, 88, 88]`` @25 fps -> ``[B, out_dim, Tv]``.

    Front-end ``resnet18`` (:class:`~avse.models.frontends.ResNet18Frontend`): pixels to
    0..1 and ``(x - mean) / std``; Conv3d 1->64 (5x7x7, stride 1x2x2) + BN + PReLU (or
    ReLU) + MaxPool3d -> 22x22 maps; per frame torchvision ResNet-18 ``layer1..layer4`` +
    global average pool -> 512; then a :class:`VTCN` 512 -> ``out_dim``. State-dict keys
    ``frontend.frontend3D.*``, ``frontend.trunk.*``, ``vtcn.*``.

    Arguments
    ---------
    out_dim, hidden, num_blocks, kernel_size, norm, trainable, pretrained, input_scale :
        as in :class:`FrontendVisualEncoder` (``pretrained`` also takes a bare state dict
        with keys ``frontend3D.*``, ``trunk.layer*.*``, or one wrapped under
        ``"state_dict"``/``"model"``).
    mean, std : float
        pixel normalisation (0..1 scale).
    act : str
        stem activation, ``"prelu"`` or ``"relu"``.
    causal : bool
        a causal V-TCN and a causal 3-D stem (its 5 frames padded on the left only; a
        front-end file must then have been trained causal too).
    """

    frontend_type = "resnet18"

    def __init__(self, out_dim: int = 256, hidden: int | None = 512, num_blocks: int = 5,
                 kernel_size: int = 3, norm: str = "gln", trainable: bool = True,
                 pretrained: str | None = None, mean: float = 0.421, std: float = 0.165,
                 act: str = "prelu", input_scale: float = 255.0, causal: bool = False):
        config = dict(act=act, mean=mean, std=std, **({"causal": True} if causal else {}))
        super().__init__(config, out_dim, hidden, num_blocks, kernel_size, norm, trainable,
                         pretrained, input_scale, causal)


@register("visual_encoder", "cnn")
class SmallCNNVisualEncoder(FrontendVisualEncoder):
    """Small, fast mouth-ROI encoder for CPU demos: ``[B, Tv, 88, 88]`` -> ``[B, out_dim, Tv]``.

    Front-end ``cnn`` (:class:`~avse.models.frontends.CNNFrontend`), per frame: optional
    average-pool downsampling (``downsample``), then ``len(channels)`` conv 3x3 stride-2 +
    BN + ReLU layers, global average pool, linear to ``hidden``; then a :class:`VTCN`
    ``hidden -> out_dim`` of ``num_blocks`` blocks. Global pooling after a few convs can
    express mean darkness and size/shape of the mouth region. With ``diff=True`` a second
    input channel carries the frame difference ``x[t] - x[t-1]`` (0 at t = 0): motion, free
    of static appearance. Checkpoints written before the front-end was split out (keys
    ``cnn.*``, ``frame_proj.*``) load into ``frontend.cnn.*``, ``frontend.frame_proj.*``.

    Arguments
    ---------
    out_dim : int
        Dv.
    hidden : int
        per-frame feature size (the front-end's ``frame_dim``; the V-TCN input).
    num_blocks : int
        V-TCN blocks (MuSE form when ``tcn_hidden`` is None).
    channels : sequence of int
        widths of the stride-2 convs.
    diff : bool
        add frame differences as a second channel.
    downsample : int
        average-pool factor applied to the ROI first (2: 88 -> 44, the default, about 4x
        cheaper than 1: about 25 ms vs 100 ms for ``[4, 100, 88, 88]`` on 2 CPU cores).
    tcn_hidden : int or None
        expansion width inside the V-TCN blocks.
    kernel_size, norm, trainable, pretrained, input_scale :
        as in :class:`FrontendVisualEncoder` (``trainable`` defaults to True).
    causal : bool
        a causal V-TCN (the front-end is causal already: per frame, backward differences).

    Example
    -------
    >>> enc = SmallCNNVisualEncoder(out_dim=8, hidden=8, num_blocks=1, channels=(4, 8))
    >>> old = {k.replace("frontend.", ""): v for k, v in enc.state_dict().items()}
    >>> sorted(old)[:2]
    ['cnn.0.weight', 'cnn.1.bias']
    >>> enc.load_state_dict(old)
    <All keys matched successfully>
    """

    frontend_type = "cnn"
    LEGACY = ("cnn.", "frame_proj.")

    def __init__(self, out_dim: int = 64, hidden: int = 64, num_blocks: int = 2,
                 channels=(16, 32, 64, 64), diff: bool = True, downsample: int = 2,
                 tcn_hidden: int | None = None, kernel_size: int = 3, norm: str = "gln",
                 trainable: bool = True, pretrained: str | None = None,
                 input_scale: float = 255.0, causal: bool = False):
        super().__init__(dict(hidden=hidden, channels=channels, diff=diff, downsample=downsample),
                         out_dim, tcn_hidden, num_blocks, kernel_size, norm, trainable,
                         pretrained, input_scale, causal)
        self.diff, self.downsample = self.frontend.diff, self.frontend.downsample

    @classmethod
    def upgrade_state_dict(cls, state: dict, prefix: str = "") -> dict:
        """``state`` with keys of the encoder at ``prefix`` written before the front-end split
        (``cnn.*``, ``frame_proj.*``) renamed to ``frontend.*`` (a new dict)."""
        old = tuple(prefix + p for p in cls.LEGACY)
        return {(prefix + "frontend." + k[len(prefix):] if k.startswith(old) else k): v
                for k, v in state.items()}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        upgraded = self.upgrade_state_dict(state_dict, prefix)  # the one rename rule
        if upgraded.keys() != state_dict.keys():  # torch hands the dict down: rename in place
            state_dict.clear()
            state_dict.update(upgraded)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register("visual_encoder", "dlr_resnet18")
class DLRVisualEncoder(FrontendVisualEncoder):
    """Face-centre crops ``[B, Tv, 112, 112]`` @25 fps -> ``[B, out_dim, Tv]``.

    Front-end ``dlr`` (:class:`~avse.models.frontends.DLRFrontend`), the published
    deep-lip-reading front-end (give its ``visual_frontend.pt`` as ``pretrained``; frozen by
    default, as MuSE and SEANet use it), then a :class:`VTCN` 512 -> ``out_dim``: the SEANet
    pipeline with the embeddings made on the fly. Its input is the crop preset
    ``"lipread"`` (central 112x112 of the face frame resized to 224).

    Arguments
    ---------
    out_dim, hidden, num_blocks, kernel_size, norm, trainable, pretrained, input_scale :
        as in :class:`FrontendVisualEncoder` (``trainable`` defaults to False).

    Not causal: the published 3-D stem looks 2 frames (80 ms) ahead (no ``causal`` option).
    """

    frontend_type = "dlr"

    def __init__(self, out_dim: int = 256, hidden: int | None = 512, num_blocks: int = 5,
                 kernel_size: int = 3, norm: str = "gln", trainable: bool = False,
                 pretrained: str | None = None, input_scale: float = 255.0):
        super().__init__({}, out_dim, hidden, num_blocks, kernel_size, norm, trainable,
                         pretrained, input_scale)
