"""Which stepper streams which module: ``register_stepper(cls)`` and ``stepper_for(module)``.

A *stepper* wraps one module of a causal model and runs it on the new frames only, keeping
what it needs of the past in a state of fixed-shape tensors::

    stepper = stepper_for(module)                     # an instance wrapping ``module``
    state = stepper.init_state(batch, device, dtype)  # dict name -> Tensor, zeros at start
    y, state = stepper.step(state, x, ...)            # pure tensor ops; inputs left unchanged

Separator steppers take ``step(state, feats [B, N, l], vis [B, Dv, l])`` (one held visual
column per audio frame, :func:`avse.models.base.hold_index`) and return the masks
``[B, N, l]`` the offline separator gives on those frames (eval mode). Visual encoder
steppers take ``step(state, frames [B, m, ...])`` and return ``[B, Dv, m]``.

The stepper modules of the package (every module of :mod:`avse.streaming` that is not this
one) are imported on the first look-up, so that a stepper class registers itself just by
being defined there with the decorator; a module that fails to import is named in the error
of a look-up that finds nothing.
"""
from __future__ import annotations

import importlib
import pkgutil

__all__ = ["register_stepper", "stepper_for", "stepper_class"]

_STEPPERS: dict = {}  # module class -> stepper class
_IMPORT_ERRORS: dict = {}  # stepper module name -> the error that stopped its import
_LOADED = [False]


def register_stepper(module_cls: type):
    """Class decorator: the decorated stepper class streams ``module_cls`` (and subclasses,
    unless one of them has its own stepper). A second registration for the same class
    replaces the first."""
    if not isinstance(module_cls, type):
        raise TypeError(f"register_stepper takes the module class, got {module_cls!r}")

    def deco(stepper_cls: type) -> type:
        _STEPPERS[module_cls] = stepper_cls
        return stepper_cls

    return deco


def _load_stepper_modules() -> None:
    if _LOADED[0]:
        return
    _LOADED[0] = True
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    for info in pkgutil.iter_modules(path):
        name = f"{package}.{info.name}"
        if name == __name__:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - kept and named when a look-up fails
            _IMPORT_ERRORS[name] = exc


def stepper_class(module_cls: type) -> type:
    """The stepper class registered for ``module_cls`` or its nearest base class (the MRO);
    ValueError ``"<Class> has no streaming form"`` when none is."""
    _load_stepper_modules()
    for cls in module_cls.__mro__:
        if cls in _STEPPERS:
            return _STEPPERS[cls]
    msg = f"{module_cls.__name__} has no streaming form (no stepper registered for it)"
    if _IMPORT_ERRORS:
        msg += "; stepper modules that failed to import: " + ", ".join(
            f"{name} ({type(e).__name__}: {e})" for name, e in _IMPORT_ERRORS.items())
    raise ValueError(msg)


def stepper_for(module, *args, **kwargs):
    """A stepper instance wrapping ``module`` (see :func:`stepper_class`); extra arguments go
    to the stepper's constructor. ValueError when the module has no streaming form, or the
    stepper's own ValueError when this instance cannot stream (e.g. not causal)."""
    return stepper_class(type(module))(module, *args, **kwargs)
