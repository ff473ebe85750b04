"""The manifest stage: a YAML file → a typed Manifest, or every problem in it, each located.

Modules:
  load      load(path) and parse(text): the entry points
  located   YAML read with the line and column of every key and value (safe, bounded)
  checks    structure (manifest.schema.json), settings and their ranges, caps, accounts, names
  sources   prompt files (.jsonl, .csv, .txt)
  types     Manifest, Prompt, Model, AccountConfig, ProviderConfig, Limits (frozen)

Importing this package is cheap: it hands on the types only (PyYAML and jsonschema load with load).
"""

from renderer.manifest.types import (
    AccountConfig,
    Limits,
    Manifest,
    Model,
    Prompt,
    ProviderConfig,
)

__all__ = ["AccountConfig", "Limits", "Manifest", "Model", "Prompt", "ProviderConfig"]
