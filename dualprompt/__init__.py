"""dualprompt: dual-view prompt tuning of a frozen CLIP, with the field's protocols and sweeps on Ray.

`dualprompt.load_prompt(path)` loads a trained prompt (see `dualprompt.saved_prompt`); it is imported on first
use, so `import dualprompt` stays light (no torch) for the command-line checks that run before any work.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_prompt"]


def __getattr__(name: str) -> Any:
    if name == "load_prompt":
        from .saved_prompt import load_prompt

        return load_prompt
    raise AttributeError(f"module 'dualprompt' has no attribute {name!r}")
