"""The manifest stage: a YAML file → a typed Manifest, or every problem in it, each located.

Modules:
  load      load(path) and parse(text): the entry points
  located   YAML read with the line and column of every key and value (safe, bounded)
  checks    structure (manifest.schema.json), settings and their ranges, caps, accounts, names
  sources   prompt files (.jsonl, .csv, .txt)
  hub       a Hugging Face dataset by name (`- hub:`), read at one commit per run
  hubfiles  which files a Hub dataset's config and split are (datasets' rules)
  templates prompt templates ({name}, __name__, {a|b}) and wildcard files, nesting expanded
  variables vars, zip, sample and order read and checked; each prompt's own dimensions
  types     Manifest, Prompt, Model, AccountConfig, ProviderConfig, Limits, the sweep (frozen)

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
