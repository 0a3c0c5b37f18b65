"""The rule engine of the reference-checkpoint converters.

A released checkpoint and our :class:`~avse.models.AVSEModel` hold the same weights under
other names, sometimes in other shapes, sometimes cut differently (one reference tensor
for several of ours, or the reverse). A converter is a list of :class:`Rule` s, each mapping
a group of our keys to a group of reference keys with a transform; a :class:`Reference`
applies them in either direction and checks keys and shapes with
:func:`avse.models.io.state_dict_problems`.

Key templates are dotted keys with placeholders: ``{name}`` matches one word (a module
index or a parameter name: letters, digits, ``_``) and stands for the same word on the
other side; ``{name+1}`` matches a number and stands for that number minus one on the
other side (a reference counting its modules from 1 where ours count from 0). The first
rule (in list order) whose template matches a key is the key's rule.

Transforms (ours -> reference; each has its exact inverse), one tensor to one:

========  ===================================  ==============================
kind      ours                                 reference
========  ===================================  ==============================
same      any                                  the same
gln       gLN / GroupNorm ``[C]``              ``[1, C, 1]``
vector    ``[C, 1]``                           ``[C]``
linear    1x1 conv ``[O, I, 1]``               Linear ``[O, I]``
conv1d    Linear ``[O, I]``                    1x1 Conv1d ``[O, I, 1]``
conv2d    Linear ``[O, I]``                    1x1 Conv2d ``[O, I, 1, 1]``
pe        ``[T, D]``                           ``[T, 1, D]``
basis     ConvTranspose1d ``[N, 1, L]``        Linear(N, L) ``[L, N]``
========  ===================================  ==============================

and between groups: ``cat0`` / ``cat1``, the side with several keys holds the pieces of the
other side's one tensor along dim 0 / 1 (split by the shapes of our model where it is
known, else in equal parts). Every converted tensor is a new contiguous copy.

Example
-------
>>> import torch
>>> ref = Reference("Toy", [Rule("enc.weight", "encoder.w", "linear"),
...                         Rule("blocks.{i}.{p}", "layers.{i+1}.{p}"),
...                         Rule(("q.weight", "kv.weight"), "in_proj.weight", "cat0")],
...                 needs="the toy model")
>>> ours = {"enc.weight": torch.zeros(4, 2, 1), "blocks.0.bias": torch.zeros(4),
...         "q.weight": torch.zeros(2, 4), "kv.weight": torch.ones(4, 4)}
>>> theirs = ref.to_reference(ours)
>>> {k: tuple(v.shape) for k, v in theirs.items()}
{'model.encoder.w': (4, 2), 'model.layers.1.bias': (4,), 'model.in_proj.weight': (6, 4)}
>>> back = ref.from_reference(theirs, template=ours)
>>> all(torch.equal(back[k], v) for k, v in ours.items())
True
>>> ref.from_reference({**theirs, "model.layers.7.bias": torch.zeros(4)}, template=ours)
Traceback (most recent call last):
...
ValueError: cannot convert the reference Toy state dict; unexpected keys: model.layers.7.bias
>>> ref.to_reference({"head.weight": torch.zeros(1)})
Traceback (most recent call last):
...
ValueError: not representable in the reference Toy format (no reference Toy counterpart for: head.weight); it needs the toy model
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, NamedTuple

import torch
from torch import nn

from avse.models.avse_model import AVSEModel
from avse.models.io import key_list, state_dict_problems

__all__ = ["Rule", "Step", "Reference", "TRANSFORMS", "JOINS", "template_state"]

TRANSFORMS = {  # kind: (ours -> reference, reference -> ours)
    "same": (lambda t: t, lambda t: t),
    "gln": (lambda t: t.reshape(1, -1, 1), lambda t: t.reshape(-1)),
    "vector": (lambda t: t.reshape(-1), lambda t: t.reshape(-1, 1)),
    "linear": (lambda t: t.squeeze(-1), lambda t: t.unsqueeze(-1)),
    "conv1d": (lambda t: t.unsqueeze(-1), lambda t: t.squeeze(-1)),
    "conv2d": (lambda t: t[..., None, None], lambda t: t[..., 0, 0]),
    "pe": (lambda t: t.unsqueeze(1), lambda t: t.squeeze(1)),
    "basis": (lambda t: t.squeeze(1).t(), lambda t: t.t().unsqueeze(1)),
}
JOINS = {"cat0": 0, "cat1": 1}  # kind: the dim along which a group's pieces are joined

_PLACEHOLDER = re.compile(r"\{(\w+?)(\+1)?\}")


@lru_cache(maxsize=None)
def _regex(template: str):
    """Template -> compiled regex, a named group per placeholder (``{j+1}``: ``j__plus1``)."""
    out, pos = "", 0
    for m in _PLACEHOLDER.finditer(template):
        out += re.escape(template[pos:m.start()])
        out += rf"(?P<{m.group(1)}__plus1>\d+)" if m.group(2) else rf"(?P<{m.group(1)}>\w+)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]))


def match(template: str, key: str) -> dict | None:
    """The placeholder values of ``key`` under ``template`` (``{j+1}`` given back as j), or
    None when it does not match.

    >>> match("tcn.{r}.{j+1}.{p}", "tcn.2.4.weight")
    {'r': '2', 'j': '3', 'p': 'weight'}
    """
    m = _regex(template).fullmatch(key)
    if m is None:
        return None
    values = {}
    for name, value in m.groupdict().items():
        if name.endswith("__plus1"):
            if int(value) < 1:
                return None
            values[name[:-len("__plus1")]] = str(int(value) - 1)
        else:
            values[name] = value
    return values


def fill(template: str, values: dict) -> str:
    """``template`` with its placeholders replaced by ``values`` (the inverse of :func:`match`).

    >>> fill("tcn.{r}.{j+1}.{p}", {"r": "2", "j": "3", "p": "weight"})
    'tcn.2.4.weight'
    """
    return _PLACEHOLDER.sub(lambda m: str(int(values[m.group(1)]) + 1) if m.group(2)
                            else values[m.group(1)], template)


@dataclass(frozen=True)
class Rule:
    """Our key templates <-> reference key templates (without the prefix), with a transform.

    ``ours`` and ``ref`` are one template or a tuple of them (a group: ``kind`` is then a
    join); ``when(key, keys)``, if given, must hold for our key ``key`` among our ``keys``
    for the rule to apply (for reference names that depend on the kind of our module).
    """

    ours: tuple
    ref: tuple
    kind: str = "same"
    when: Callable | None = None

    def __post_init__(self):
        for side in ("ours", "ref"):
            if isinstance(getattr(self, side), str):
                object.__setattr__(self, side, (getattr(self, side),))
        if self.kind not in TRANSFORMS and self.kind not in JOINS:
            raise ValueError(f"unknown transform {self.kind!r}")
        if (len(self.ours) > 1 or len(self.ref) > 1) and self.kind not in JOINS:
            raise ValueError(f"a group of keys needs a join (cat0, cat1), got {self.kind!r}")
        names = {frozenset(m.group(1) for m in _PLACEHOLDER.finditer(t))
                 for t in self.ours + self.ref}
        if len(names) > 1:
            raise ValueError(f"the templates of a rule must share their placeholders: "
                             f"{self.ours} <-> {self.ref}")


class Step(NamedTuple):
    """One rule applied: our keys, the reference keys (without the prefix), the transform."""

    ours: tuple
    ref: tuple
    kind: str


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def _move(step: Step, tensors: list, to_ref: bool, sizes=None) -> list:
    """The tensors of one step, from one side to the other; ``sizes``: the pieces' sizes
    when a join is split (default equal parts)."""
    if step.kind not in JOINS:
        return [_copy(TRANSFORMS[step.kind][0 if to_ref else 1](tensors[0]))]
    dim = JOINS[step.kind]
    if len(tensors) > 1:
        return [torch.cat(tensors, dim)]
    t, parts = tensors[0], len(step.ref if to_ref else step.ours)
    if sizes is None:
        if t.dim() <= dim or t.shape[dim] % parts:
            name = (step.ours if to_ref else step.ref)[0]
            raise ValueError(f"{name}: shape {tuple(t.shape)} does not split into {parts} "
                             f"equal parts along dim {dim}")
        sizes = [t.shape[dim] // parts] * parts
    return [_copy(p) for p in t.split(list(sizes), dim)]


def template_state(model=None, config: dict | None = None) -> dict:
    """Our state dict to convert into: ``model``'s (an AVSEModel or its state dict), else
    that of ``AVSEModel(**config)`` built on the meta device (no memory, no initialisation)."""
    if model is None:
        with torch.device("meta"):
            model = AVSEModel(**config)
    return model.state_dict() if isinstance(model, nn.Module) else dict(model)


@dataclass
class Reference:
    """One reference checkpoint format: its rules, and how its checkpoints are checked.

    Arguments
    ---------
    name : str
        the reference's name in messages (``"SEANet"``).
    rules : list of Rule, or callable
        the rules, or ``keys -> rules`` when they depend on our model (e.g. on its number
        of visual blocks); ``keys`` are our state dict's.
    needs : str
        what our model must be to have a reference counterpart (for the error message).
    prefix : str
        the prefix of every reference key (the reference trainer's ``model.``).
    bare_ok : bool
        also accept a state dict without ``prefix`` (the reference module's own keys);
        problems are then named without the prefix, else with it.
    check : str
        ``"reference"``: a checkpoint is checked against the reference keys and shapes of
        our model (missing, unexpected, wrong shapes named as the reference names them);
        ``"ours"``: every reference key is renamed by the rules first (those no rule maps
        are named) and the result is checked against our model's keys and shapes.
    extra : callable, optional
        our state dict -> reference-only tensors (keys without the prefix): weights the
        reference holds but never uses, which our model does not build.
    """

    name: str
    rules: list | Callable
    needs: str
    prefix: str = "model."
    bare_ok: bool = False
    check: str = "reference"
    extra: Callable | None = None

    def __post_init__(self):
        if self.check not in ("reference", "ours"):
            raise ValueError(f"check must be 'reference' or 'ours', got {self.check!r}")

    def rules_for(self, keys) -> list:
        return self.rules(keys) if callable(self.rules) else self.rules

    def plan(self, keys, side: str = "ours") -> tuple:
        """(steps, keys no rule maps or whose group is incomplete) for ``keys`` of one
        ``side`` (``"ours"`` or ``"ref"``), in the order of ``keys``."""
        keys = list(keys)
        keyset, rules = set(keys), self.rules_for(keys)
        steps, seen, unmapped, incomplete = [], set(), [], []
        for key in keys:
            if key in seen:
                continue
            step = self._step(rules, key, side, keyset)
            if step is None:
                unmapped.append(key)
                continue
            group = step.ours if side == "ours" else step.ref
            present = [k for k in group if k in keyset]
            seen.update(present)
            if len(present) < len(group):
                incomplete += present
            else:
                steps.append(step)
        return steps, unmapped + incomplete

    @staticmethod
    def _step(rules: list, key: str, side: str, keyset: set) -> Step | None:
        for rule in rules:
            for template in (rule.ours if side == "ours" else rule.ref):
                values = match(template, key)
                if values is None:
                    continue
                if side == "ours" and rule.when is not None and not rule.when(key, keyset):
                    break
                return Step(tuple(fill(t, values) for t in rule.ours),
                            tuple(fill(t, values) for t in rule.ref), rule.kind)
        return None

    def convert(self, state: dict) -> dict:
        """Our tensors -> the reference's by the rules alone (keys without the prefix, no
        ``extra``); ValueError names our keys the reference format cannot hold."""
        steps, bad = self.plan(state)
        if bad:
            raise ValueError(f"not representable in the reference {self.name} format (no "
                             f"reference {self.name} counterpart for: {key_list(bad)}); it "
                             f"needs {self.needs}")
        out = {}
        for step in steps:
            out.update(zip(step.ref, _move(step, [state[k] for k in step.ours], to_ref=True)))
        return out

    def to_reference(self, state: dict, prefix: str | None = None) -> dict:
        """Our state dict -> the reference's, ``extra`` included (keys under ``prefix``,
        default ``self.prefix``); ValueError names our keys the format cannot hold."""
        prefix = self.prefix if prefix is None else prefix
        out = self.convert(state)
        if self.extra is not None:
            out.update(self.extra(state))
        return {prefix + k: v for k, v in out.items()}

    def strip(self, state: dict) -> tuple:
        """(the reference keys without the prefix -> tensors, the keys that lack the prefix
        when others have it, the prefix the keys came with)."""
        p = self.prefix
        if not self.bare_ok:
            bad = [k for k in state if not k.startswith(p)]
            if bad:
                raise ValueError(f"reference keys must start with {p!r}: {key_list(bad)}")
        if not any(k.startswith(p) for k in state):
            return dict(state), [], ""
        stray = sorted(k for k in state if not k.startswith(p))
        return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}, stray, p

    def from_reference(self, state: dict, template: dict) -> dict:
        """A reference state dict -> ours, with the keys and shapes of ``template`` (our
        state dict, e.g. from :func:`template_state`); ValueError names every missing,
        unexpected or wrongly shaped key (see ``check``). Load the result with
        ``model.load_state_dict(..., strict=True)``."""
        ref, stray, given = self.strip(state)
        try:
            if self.check == "ours":
                return self._by_reference_keys(ref, stray, given, template)
            return self._by_our_keys(ref, stray, template)
        except ValueError as err:
            raise ValueError(f"cannot convert the reference {self.name} state dict; {err}") \
                from None

    def _by_our_keys(self, ref: dict, stray: list, template: dict) -> dict:
        """Check ``ref`` against the reference state dict of ``template``, then fill every
        key of ``template`` from it."""
        expected = self.to_reference({k: v.to("meta") for k, v in template.items()}, prefix="")
        problems = state_dict_problems(expected, ref, prefix="" if self.bare_ok else self.prefix)
        if stray:
            problems.insert(0, "unexpected keys: " + key_list(stray))
        if problems:
            raise ValueError("; ".join(problems))
        out = {}
        for step in self.plan(template)[0]:
            sizes = [template[k].shape[JOINS[step.kind]] for k in step.ours] \
                if len(step.ours) > 1 else None
            out.update(zip(step.ours, _move(step, [ref[k] for k in step.ref], False, sizes)))
        return out

    def _by_reference_keys(self, ref: dict, stray: list, given: str, template: dict) -> dict:
        """Rename every key of ``ref`` by the rules, then check against ``template``."""
        steps, bad = self.plan(ref, side="ref")
        unmapped = stray + sorted(given + k for k in bad)
        if unmapped:
            raise ValueError("unexpected keys (no rule maps them): " + key_list(unmapped))
        out = {}
        for step in steps:
            out.update(zip(step.ours, _move(step, [ref[k] for k in step.ref], False)))
        problems = state_dict_problems(template, out)
        if problems:
            raise ValueError("renamed to our keys: " + "; ".join(problems))
        return out
