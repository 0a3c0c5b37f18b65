"""Short-name registry for the model slots: ``kind -> {short name -> class}``.

A yaml file names plugins by short name (so a command-line override such as
``--fusion_type=film`` swaps the class); any importable class also works, either with
``!new:`` or as a dotted path given as the name.

A leaf module: it imports nothing from avse. The slot bases (:mod:`avse.models.base`)
declare themselves with :func:`set_base`, every plugin module registers its classes with
:func:`register`; importing :mod:`avse.models` (which importing this module does first,
as it lives in that package) imports every built-in plugin.

Example
-------
>>> from avse.models.registry import build, known
>>> "film" in known("fusion")
True
>>> build("fusion", "nope", audio_dim=4, visual_dim=4)
Traceback (most recent call last):
...
avse.models.registry.RegistryError: unknown fusion 'nope'; known: concat, cross_attention, film (or give an importable class path)
"""
from __future__ import annotations

import importlib

KINDS = ("audio_encoder", "visual_encoder", "fusion", "separator", "decoder", "frontend")
_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_BASES: dict[str, type] = {}


class RegistryError(KeyError):
    """Unknown kind or name, or a class that does not implement the slot's base."""

    def __str__(self):  # KeyError quotes its message; we want it readable
        return str(self.args[0])


def set_base(kind: str, base: type) -> None:
    """Declare the abstract base class every plugin of ``kind`` must subclass."""
    _BASES[kind] = base


def register(kind: str, name: str):
    """Class decorator: register a plugin under ``kind``/``name``."""
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")

    def deco(cls):
        base = _BASES.get(kind)
        if base is not None and not issubclass(cls, base):
            raise RegistryError(f"{cls.__name__} registered as {kind} {name!r} must subclass "
                                f"{base.__module__}.{base.__name__}")
        if name in _REGISTRY[kind] and _REGISTRY[kind][name] is not cls:
            raise RegistryError(f"{kind} {name!r} is already registered to "
                                f"{_REGISTRY[kind][name].__name__}")
        _REGISTRY[kind][name] = cls
        cls.registry_name = name
        return cls

    return deco


def known(kind: str) -> list[str]:
    """Sorted short names registered for ``kind``."""
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    return sorted(_REGISTRY[kind])


def get(kind: str, name) -> type:
    """The class for ``name`` (a short name, a dotted ``module.Class`` path, or a class)."""
    names = known(kind)
    if isinstance(name, type):
        cls = name
    elif isinstance(name, str) and name in _REGISTRY[kind]:
        return _REGISTRY[kind][name]
    elif isinstance(name, str) and "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise RegistryError(f"cannot import {kind} class {name!r}: {err}") from err
    else:
        raise RegistryError(f"unknown {kind} {name!r}; known: {', '.join(names)} "
                            "(or give an importable class path)")
    base = _BASES.get(kind)
    if base is not None and not issubclass(cls, base):
        raise RegistryError(f"{cls.__module__}.{cls.__name__} is not a {kind}: it must subclass "
                            f"{base.__module__}.{base.__name__}")
    return cls


def build(kind: str, name, **kwargs):
    """Instantiate plugin ``name`` of ``kind`` with ``kwargs``."""
    cls = get(kind, name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"building {kind} {name!r} ({cls.__name__}): {err}") from err
