"""Named mixture conditions (definitions only: data, no upward imports).

A condition says how many interfering speakers a mixture has and whether background
noise (MUSAN: noise, music or babble) is added:

============  ===========  =====  ==================================================
name          interferers  noise  what it is
============  ===========  =====  ==================================================
enhancement   0            yes    speech + background noise -> speech
2mix          1            no     two talkers (VoxMix)
3mix          2            no     three talkers
2mix_noise    1            yes    two talkers + background noise
hard          2            yes    three talkers + background noise
============  ===========  =====  ==================================================

Training samples conditions with ``MixtureConfig(conditions={"2mix": 0.5, "hard": 0.5})``
(:mod:`avse.data.mixing`); one evaluation list per condition comes from
:func:`avse.data.lists.make_condition_lists`, and :mod:`avse.evaluation` evaluates a model
over them into one table.

Example
-------
>>> CONDITIONS["hard"]
Condition(name='hard', num_interferers=2, noise=True)
>>> get_condition("4mix")
Traceback (most recent call last):
...
ValueError: unknown condition '4mix'; known: enhancement, 2mix, 3mix, 2mix_noise, hard
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    """A mixture condition: ``num_interferers`` other talkers, plus noise when ``noise``."""

    name: str
    num_interferers: int
    noise: bool


CONDITIONS = {c.name: c for c in (
    Condition("enhancement", 0, True),
    Condition("2mix", 1, False),
    Condition("3mix", 2, False),
    Condition("2mix_noise", 1, True),
    Condition("hard", 2, True),
)}


def get_condition(name: str) -> Condition:
    """The named condition; a clear error lists the known names."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}") from None
