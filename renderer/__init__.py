"""renderer: a declarative batch renderer for hosted text-to-image models (fal's queue protocol).

The Python API (see renderer.api): load_manifest, run, run_async, open_run. Loaded on first
use, so `import renderer` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Plan", "Run", "Summary", "__version__", "load_manifest", "open_run", "run", "run_async"]

if TYPE_CHECKING:
    from renderer.api import Plan, Run, Summary, load_manifest, open_run, run, run_async


def __getattr__(name: str) -> Any:
    if name in __all__:
        from renderer import api

        return getattr(api, name)
    raise AttributeError(f"module 'renderer' has no attribute {name!r}")
