"""renderer: a declarative batch renderer for hosted text-to-image models (fal's queue protocol)."""

__version__ = "0.1.0"
