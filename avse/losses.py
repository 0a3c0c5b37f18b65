"""Training losses: negative SI-SDR, deep supervision over intermediate estimates, and a
small registry of named auxiliary losses.

Deep supervision follows the reference AV-TSE trainer (SEANet repository, for both its
AV-DPRNN and SEANet backbones): every separator block's output is decoded to a waveform
and trained toward the target; the loss is the final estimate's negative SI-SDR plus
``alpha`` (default 0.1) times the *sum* of the intermediate estimates' negative SI-SDRs.
The reference sums everything over the batch as well; we average over the batch (so the
loss scale does not depend on the batch size) but keep the sum over intermediates, which
preserves the reference's relative weighting of main vs. intermediate terms exactly.
``reduction="mean"`` averages over the intermediates instead (weight independent of the
number of blocks).

Every loss returns a scalar tensor and stays finite for silent targets (eps-regularised
SI-SDR, see :func:`avse.metrics.si_sdr`).

Example
-------
>>> import torch
>>> target = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
>>> est = target + 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
>>> round(float(neg_si_sdr(est, target)))
-20
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from avse.metrics import si_sdr

__all__ = ["neg_si_sdr", "si_sdr_loss_with_intermediate", "AUX_LOSSES", "aux_loss",
           "register_aux_loss"]


def neg_si_sdr(estimate: torch.Tensor, target: torch.Tensor, zero_mean: bool = True,
               eps: float = 1e-8) -> torch.Tensor:
    """Negative SI-SDR in dB, averaged over the batch.

    Parameters
    ----------
    estimate, target : Tensor ``[B, T] @16 kHz`` (any ``[..., T]``; mean over ``...``).
    zero_mean, eps : see :func:`avse.metrics.si_sdr`.

    Returns
    -------
    scalar Tensor (lower is better).

    Example
    -------
    >>> import torch
    >>> t = torch.randn(3, 4000, generator=torch.Generator().manual_seed(0))
    >>> float(neg_si_sdr(torch.zeros_like(t), t))   # silence is heavily penalised
    80.0
    """
    return -si_sdr(estimate, target, zero_mean=zero_mean, eps=eps).mean()


def si_sdr_loss_with_intermediate(final: torch.Tensor, intermediate, target: torch.Tensor,
                                  alpha: float = 0.1, reduction: str = "sum",
                                  **kwargs) -> torch.Tensor:
    """Deep-supervision loss: ``neg_si_sdr(final) + alpha * R_k neg_si_sdr(intermediate_k)``.

    Parameters
    ----------
    final : Tensor ``[B, T]``
        Final estimate.
    intermediate : list of Tensor ``[B, T]``, or Tensor ``[K, B, T]``
        Earlier blocks' decoded estimates (may be empty: the loss is then the main term).
    target : Tensor ``[B, T]``
    alpha : float
        Weight of the intermediate term (0.1 in the reference AV-DPRNN / SEANet recipes).
    reduction : ``"sum"`` (reference behaviour) or ``"mean"`` over the K intermediates.
    kwargs : passed to :func:`neg_si_sdr` (``zero_mean``, ``eps``).

    Example
    -------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> t = torch.randn(2, 4000, generator=g)
    >>> fin = t + 0.1 * torch.randn(2, 4000, generator=g)
    >>> mid = [t + torch.randn(2, 4000, generator=g)] * 2
    >>> total = si_sdr_loss_with_intermediate(fin, mid, t, alpha=0.1)
    >>> bool(torch.isclose(total, neg_si_sdr(fin, t) + 0.2 * neg_si_sdr(mid[0], t)))
    True
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    loss = neg_si_sdr(final, target, **kwargs)
    if intermediate is None:
        return loss
    if isinstance(intermediate, torch.Tensor):
        if intermediate.dim() != target.dim() + 1:
            raise ValueError(f"intermediate tensor must be [K, *target.shape], got "
                             f"{tuple(intermediate.shape)} for target {tuple(target.shape)}")
        intermediate = list(intermediate.unbind(0))
    if len(intermediate) == 0 or alpha == 0:
        return loss
    terms = torch.stack([neg_si_sdr(x, target, **kwargs) for x in intermediate])
    rest = terms.sum() if reduction == "sum" else terms.mean()
    return loss + alpha * rest


def _si_sdr_aux(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative SI-SDR between waveforms ``[B, T]`` (e.g. a predicted noise branch)."""
    return neg_si_sdr(prediction, target)


def _cross_entropy_aux(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy of logits ``[B, C]`` (or ``[B, C, L]``) against class ids ``[B]``
    (``[B, L]``), e.g. MuSE's speaker classification; entries equal to -100 are ignored,
    and a batch with none left gives 0 (not NaN)."""
    total = F.cross_entropy(prediction, target.long(), ignore_index=-100, reduction="sum")
    count = (target != -100).sum().clamp_min(1)
    return total / count


def _l1_aux(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (any matching shapes)."""
    return F.l1_loss(prediction, target.to(prediction.dtype))


AUX_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "si_sdr": _si_sdr_aux,
    "cross_entropy": _cross_entropy_aux,
    "l1": _l1_aux,
}


def register_aux_loss(name: str):
    """Decorator adding ``fn(prediction, target) -> scalar`` to :data:`AUX_LOSSES`."""
    def deco(fn):
        if name in AUX_LOSSES and AUX_LOSSES[name] is not fn:
            raise KeyError(f"aux loss {name!r} already registered")
        AUX_LOSSES[name] = fn
        return fn
    return deco


def aux_loss(kind: str, prediction, target: torch.Tensor) -> torch.Tensor:
    """Named auxiliary loss: ``AUX_LOSSES[kind](prediction, target)`` as a scalar.

    ``prediction`` may be a list/tuple of predictions (e.g. one per block, as MuSE
    classifies the speaker after each of its 4 blocks): their losses are summed.

    Example
    -------
    >>> import torch
    >>> logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    >>> round(float(aux_loss("cross_entropy", logits, torch.tensor([0, 1]))), 4)
    0.0181
    >>> float(aux_loss("l1", [torch.ones(3), torch.zeros(3)], torch.zeros(3)))
    1.0
    >>> aux_loss("mse", torch.ones(1), torch.ones(1))
    Traceback (most recent call last):
    ...
    KeyError: "unknown aux loss 'mse'; known: si_sdr, cross_entropy, l1"
    """
    if kind not in AUX_LOSSES:
        raise KeyError(f"unknown aux loss {kind!r}; known: {', '.join(AUX_LOSSES)}")
    fn = AUX_LOSSES[kind]
    if isinstance(prediction, (list, tuple)):
        if len(prediction) == 0:
            raise ValueError("empty list of predictions")
        return torch.stack([fn(p, target) for p in prediction]).sum()
    return fn(prediction, target)
