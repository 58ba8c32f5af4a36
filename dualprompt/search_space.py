"""The dual-view method's search space, as data: one place for every sweep of every protocol.

A new searched knob (e.g. the weight of a new loss term) is a Config field plus one line here; each sweep
can still narrow a range with `--bound name=low:high` or fix a value with `--set name=value`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SearchSpace:
    """Searched parameters: `ranges` name -> (low, high, scale in int|linear|log), `choices` name -> options."""

    ranges: dict[str, tuple[float, float, str]]
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [*self.ranges, *self.choices]


DUAL_VIEW = SearchSpace(
    ranges={
        "n_ctx": (2, 16, "int"),  # context length M
        "mi_weight": (0.05, 10.0, "log"),
        "mi_temperature": (0.01, 1.0, "log"),
        "aug_strength": (0.1, 2.0, "linear"),  # alpha of Beta(alpha, alpha)
        "aug_weight": (0.1, 4.0, "log"),
    },
    choices={"aug_variant": ("mix", "virtual")},
)
