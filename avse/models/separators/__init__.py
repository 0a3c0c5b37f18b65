"""Separator families; importing this package imports (so registers) every module in it.

A new family is a new module here with an ``@register("separator", name)`` class.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
