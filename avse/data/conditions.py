"""Named mixture conditions (definitions only: data, no upward imports).

A condition says how many interfering speakers a mixture has, whether background noise
(MUSAN: noise, music or babble) is added, and whether the target speaks:

============  ===========  =====  =======  =========================================
name          interferers  noise  target   what it is
============  ===========  =====  =======  =========================================
enhancement   0            yes    present  speech + background noise -> speech
2mix          1            no     present  two talkers (VoxMix)
3mix          2            no     present  three talkers
2mix_noise    1            yes    present  two talkers + background noise
hard          2            yes    present  three talkers + background noise
absent        1            no     absent   the target is silent, its lips at rest, while
                                           another talker speaks: the output should be
                                           silence
sparse        1            no     sparse   the target speaks in one span only (20-80 % of
                                           the example by default), silent with lips at
                                           rest elsewhere; the other talker throughout
============  ===========  =====  =======  =========================================

``absent`` and ``sparse`` follow USEV's target-absent / target-present segment types: the
target is mixed at its full level first (the interferer SNRs are relative to it), then
silenced; its lips at rest are its own, from its utterance's silent stretches
(:mod:`avse.data.activity`), not another utterance's moving lips (that is the
mismatched-lips control). The reference of an absent example is silence: SI-SDR is undefined
there, so training uses an energy term (:func:`avse.losses.extraction_loss`) and evaluation
the output energy relative to the mixture (metric ``silent_energy``).

Training samples conditions with ``MixtureConfig(conditions={"2mix": 0.5, "hard": 0.5})``
(:mod:`avse.data.mixing`); one evaluation list per condition comes from
:func:`avse.data.lists.make_condition_lists`, and :mod:`avse.evaluation` evaluates a model
over them into one table.

Example
-------
>>> CONDITIONS["hard"]
Condition(name='hard', num_interferers=2, noise=True, target='present')
>>> CONDITIONS["absent"].silent, CONDITIONS["2mix"].silent
(True, False)
>>> get_condition("4mix")
Traceback (most recent call last):
...
ValueError: unknown condition '4mix'; known: enhancement, 2mix, 3mix, 2mix_noise, hard, absent, sparse
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    """A mixture condition: ``num_interferers`` other talkers, plus noise when ``noise``;
    ``target``: ``"present"`` (speaks throughout), ``"absent"`` (silent, lips at rest) or
    ``"sparse"`` (speaks in one span only)."""

    name: str
    num_interferers: int
    noise: bool
    target: str = "present"

    def __post_init__(self):
        if self.target not in TARGET_KINDS:
            raise ValueError(f"condition {self.name!r}: target must be one of {TARGET_KINDS}, "
                             f"got {self.target!r}")

    @property
    def silent(self) -> bool:
        """Whether the target is silent in all or part of an example."""
        return self.target != "present"


TARGET_KINDS = ("present", "absent", "sparse")
"""What the target does in a condition's examples."""


CONDITIONS = {c.name: c for c in (
    Condition("enhancement", 0, True),
    Condition("2mix", 1, False),
    Condition("3mix", 2, False),
    Condition("2mix_noise", 1, True),
    Condition("hard", 2, True),
    Condition("absent", 1, False, "absent"),
    Condition("sparse", 1, False, "sparse"),
)}


def get_condition(name: str) -> Condition:
    """The named condition; a clear error lists the known names."""
    try:
        return CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}") from None
