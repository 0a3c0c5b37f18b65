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

Silent targets (conditions ``absent`` / ``sparse``, :mod:`avse.data.conditions`): the
negative SI-SDR of a silent reference is a constant without gradient, so
:func:`extraction_loss` defines the loss per example: ``-SI-SDR`` where the target speaks
(a sparse example's silent part counts as error inside it), and where it is silent an
energy term, the output power relative to the mixture in dB with a floor,
``w * 10 log10(P_est / P_mix + 10^(floor / 10))`` (USEV's target-absent loss, relative to
the mixture so that it does not depend on the level). With no silent example in a batch it
is exactly the mean negative SI-SDR of :func:`neg_si_sdr`. Auxiliary losses take a ``mask``
of the examples they apply to (:func:`aux_loss`): the trainer leaves out the silent-target
examples (no speaker to classify, no target to reconstruct) unless told otherwise.

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

__all__ = ["neg_si_sdr", "si_sdr_loss_with_intermediate", "extraction_loss", "active_examples",
           "silent_energy_db", "AUX_LOSSES", "aux_loss", "register_aux_loss"]

SILENT_TARGET_DB = -60.0
"""An example's target is silent when its power is this far below the mixture's."""


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


def active_examples(target: torch.Tensor, mixture: torch.Tensor,
                    silent_db: float = SILENT_TARGET_DB) -> torch.Tensor:
    """Boolean ``[B]``: the examples whose target is not silent (its power above
    ``silent_db`` relative to the mixture's; a silent mixture counts as silent).

    Example
    -------
    >>> import torch
    >>> mix = torch.ones(3, 100)
    >>> active_examples(torch.stack([mix[0], 0 * mix[0], 1e-4 * mix[0]]), mix).tolist()
    [True, False, False]
    """
    p_t = target.detach().float().pow(2).mean(-1)
    p_m = mixture.detach().float().pow(2).mean(-1)
    return (p_t > p_m * 10.0 ** (silent_db / 10.0)) & (p_t > 0)


def silent_energy_db(estimate: torch.Tensor, mixture: torch.Tensor,
                     floor_db: float = -40.0) -> torch.Tensor:
    """``10 log10(P_est / P_mix + 10^(floor_db / 10))`` per example ``[B]`` (dB, >= floor_db).

    Example
    -------
    >>> import torch
    >>> mix = torch.ones(2, 100)
    >>> [round(v, 2) for v in silent_energy_db(torch.stack([0.1 * mix[0], 0 * mix[0]]), mix).tolist()]
    [-19.96, -40.0]
    """
    p_e = estimate.float().pow(2).mean(-1)
    p_m = mixture.detach().float().pow(2).mean(-1).clamp_min(1e-12)
    return 10.0 * torch.log10(p_e / p_m + 10.0 ** (floor_db / 10.0))


def _per_example(estimate, target, mixture, active, silent, floor_db, weight, **kwargs):
    """The per-example loss ``[B]`` of :func:`extraction_loss`."""
    loss = -si_sdr(estimate, target, **kwargs)
    if silent == "none" or bool(active.all()):
        return loss
    energy = weight * silent_energy_db(estimate, mixture, floor_db).to(loss.dtype)
    return torch.where(active, loss, energy)


def extraction_loss(final: torch.Tensor, intermediate, target: torch.Tensor,
                    mixture: torch.Tensor, alpha: float = 0.0, reduction: str = "sum",
                    silent: str = "energy", energy_floor_db: float = -40.0,
                    energy_weight: float = 1.0, active: torch.Tensor | None = None,
                    **kwargs) -> torch.Tensor:
    """The training loss of AVSEBrain, defined per example and averaged over the batch.

    Examples whose target speaks: ``-SI-SDR`` (as :func:`si_sdr_loss_with_intermediate`).
    Examples whose target is silent (:func:`active_examples`, or ``active`` given):
    ``silent="energy"`` (default) gives ``energy_weight * silent_energy_db(estimate,
    mixture, energy_floor_db)``; ``silent="none"`` keeps ``-SI-SDR`` for them too (a
    constant without gradient: what the loss was before silent targets). The intermediate
    estimates (deep supervision, weight ``alpha``, ``reduction`` over them) get the same
    per-example loss.

    Parameters
    ----------
    final, target, mixture : Tensor ``[B, T]``
    intermediate : list of Tensor ``[B, T]`` (or ``[K, B, T]``, or None)

    Example
    -------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> t, i = torch.randn(2, 4000, generator=g), torch.randn(2, 4000, generator=g)
    >>> est = t + 0.1 * i
    >>> bool(torch.isclose(extraction_loss(est, [], t, t + i), neg_si_sdr(est, t)))
    True
    >>> t[1] = 0                    # a silent target; its output 20 dB below the mixture
    >>> est = t + 0.1 * i
    >>> round(float(extraction_loss(est, [], t, t + i)), 1)     # (-20 - 20) / 2
    -20.0
    >>> round(float(extraction_loss(est, [], t, t + i, silent="none")), 2)  # (-20 + 80) / 2
    30.0
    """
    if silent not in ("energy", "none"):
        raise ValueError(f"silent must be 'energy' or 'none', got {silent!r}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if active is None:
        active = active_examples(target, mixture)
    args = (target, mixture, active.to(final.device), silent, energy_floor_db, energy_weight)
    loss = _per_example(final, *args, **kwargs).mean()
    if intermediate is None:
        return loss
    if isinstance(intermediate, torch.Tensor):
        intermediate = list(intermediate.unbind(0))
    if len(intermediate) == 0 or alpha == 0:
        return loss
    terms = torch.stack([_per_example(x, *args, **kwargs).mean() for x in intermediate])
    return loss + alpha * (terms.sum() if reduction == "sum" else terms.mean())


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


def _bce_aux(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy of logits against 0/1 targets of the same shape (e.g. the
    per-frame target activity ``[B, Tv]`` of an activity head)."""
    n = min(prediction.shape[-1], target.shape[-1])  # frames: a model may round Tv
    return F.binary_cross_entropy_with_logits(prediction[..., :n].float(),
                                              target[..., :n].to(torch.float32))


AUX_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "si_sdr": _si_sdr_aux,
    "cross_entropy": _cross_entropy_aux,
    "l1": _l1_aux,
    "bce": _bce_aux,
}


def register_aux_loss(name: str):
    """Decorator adding ``fn(prediction, target) -> scalar`` to :data:`AUX_LOSSES`."""
    def deco(fn):
        if name in AUX_LOSSES and AUX_LOSSES[name] is not fn:
            raise KeyError(f"aux loss {name!r} already registered")
        AUX_LOSSES[name] = fn
        return fn
    return deco


def aux_loss(kind: str, prediction, target: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Named auxiliary loss: ``AUX_LOSSES[kind](prediction, target)`` as a scalar.

    ``prediction`` may be a list/tuple of predictions (e.g. one per block, as MuSE
    classifies the speaker after each of its 4 blocks): their losses are summed.
    ``mask``: boolean ``[B]``, the examples the loss applies to (the others are left out;
    none left gives 0 with the graph kept).

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
    KeyError: "unknown aux loss 'mse'; known: si_sdr, cross_entropy, l1, bce"
    >>> float(aux_loss("l1", torch.tensor([[1.0], [5.0]]), torch.zeros(2, 1),
    ...                mask=torch.tensor([True, False])))
    1.0
    """
    if kind not in AUX_LOSSES:
        raise KeyError(f"unknown aux loss {kind!r}; known: {', '.join(AUX_LOSSES)}")
    fn = AUX_LOSSES[kind]
    if mask is not None and not bool(mask.all()):
        preds = list(prediction) if isinstance(prediction, (list, tuple)) else [prediction]
        if not bool(mask.any()):
            return sum(p.sum() for p in preds) * 0.0
        mask = mask.to(target.device)
        prediction = [p[mask.to(p.device)] for p in preds]
        target = target[mask]
    if isinstance(prediction, (list, tuple)):
        if len(prediction) == 0:
            raise ValueError("empty list of predictions")
        return torch.stack([fn(p, target) for p in prediction]).sum()
    return fn(prediction, target)
