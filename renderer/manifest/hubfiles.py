"""Which files of a Hugging Face dataset a config's split is, at one commit (for hub.py).

Owns the rules `datasets.load_dataset` resolves a split's data files by: the card's `configs:`
(`data_files` patterns per split, under a `data_dir`; the config marked `default`), else the
Hub's naming conventions (`data/SPLIT-00000-of-00003…` shards, folders named for a split, file
names holding a split word, else all `train`); and which of those files renderer reads.
tests/test_hub.py checks both resolutions against `datasets`' own on generated layouts. Pure
functions of the file list and the card: no network, no huggingface_hub.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from renderer.errors import closest

# The formats read, as the prompt-file readers read them: `.json` files as JSON Lines (as the
# Hub's datasets often name them), refused when one holds a single JSON document instead.
FORMATS = (".parquet", ".jsonl", ".json", ".csv")
# Split names found in a file's folders or name when the card declares no configs (the Hub's
# "file names and splits" convention): each split and the words that mean it.
SPLIT_WORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
# Files that are never data: hidden ones (git's own), files without an extension, scripts and
# docs; and the loaders' own files by name.
_NOT_DATA = re.compile(r"(^|/)\.|(^|/)[^./]+$|\.(md|py|yaml|yml|toml|lock|ipynb)$", re.I)
_IGNORED = {"config.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json"}


class HubProblem(Exception):
    """One problem with a `hub:` entry, at its field `key`."""

    def __init__(self, message: str, key: str = "hub", **kw: Any) -> None:
        super().__init__(message)
        self.message, self.key, self.kw = message, key, kw


def data_files(info: dict[str, Any], config: str | None, split: str) -> tuple[str, str, list[str]]:
    """(config, split, the split's data files in path order) of a dataset at one commit, by
    its card's `configs:` when it has them, else by the split words in its files' paths."""
    files = sorted(info["files"])
    configs = _card_configs(info["card"], files)
    if not configs:
        configs = {"default": _by_split_words(files)}
        default = "default"
    else:
        marked = [n for n, _ in configs.items() if n in _card_defaults(info["card"])]
        default = marked[0] if marked else (next(iter(configs)) if len(configs) == 1 else "")
    names = list(configs)
    if config is None:
        if not default:
            raise HubProblem(
                f"the dataset has {len(names)} configs and none is its default: name one",
                allowed="config: " + " | ".join(names[:20]),
            )
        config = default
    if config not in configs:
        raise HubProblem(
            f"the dataset has no config {config!r}",
            "config",
            allowed="its configs: " + ", ".join(names[:20]),
            suggestion=closest(config, names),
        )
    splits = configs[config]
    if split not in splits:
        raise HubProblem(
            f"config {config!r} has no split {split!r}"
            if splits
            else f"config {config!r} has no data files",
            "split",
            allowed=("its splits: " + ", ".join(splits)) if splits else None,
            suggestion=closest(split, list(splits)),
        )
    chosen = splits[split]
    wrong = sorted({PurePosixPath(f).suffix or f for f in chosen if not f.endswith(FORMATS)})
    if wrong or not chosen:
        raise HubProblem(
            f"split {split!r} of config {config!r} is "
            + (f"held in {', '.join(wrong[:5])} files" if wrong else "empty")
            + ", which renderer does not read as prompts",
            "split",
            allowed="a dataset whose data files are Parquet, JSON Lines or CSV ("
            + ", ".join(FORMATS)
            + ")",
        )
    return config, split, chosen


def _card_defaults(card: dict[str, Any]) -> set[str]:
    entries = card.get("configs")
    return {
        str(e.get("config_name", "default"))
        for e in entries or ()
        if isinstance(e, dict) and e.get("default") is True
    }


def _card_configs(card: dict[str, Any], files: list[str]) -> dict[str, dict[str, list[str]]]:
    """The card's `configs:` as config → split → matching files (the card's order)."""
    found: dict[str, dict[str, list[str]]] = {}
    for entry in card.get("configs") or ():
        if not isinstance(entry, dict):
            continue
        given = entry.get("data_files")
        by_split: dict[str, list[str]] = {}
        if isinstance(given, str) or (
            isinstance(given, list) and all(isinstance(g, str) for g in given)
        ):
            by_split["train"] = _listed(given)
        elif isinstance(given, list):
            for d in given:
                if isinstance(d, dict) and "split" in d:
                    by_split[str(d["split"])] = _listed(d.get("path", []))
        elif isinstance(given, dict):
            by_split = {str(k): _listed(v) for k, v in given.items()}
        under = str(entry.get("data_dir") or "").strip("/")
        if given is None:
            found[str(entry.get("config_name", "default"))] = _by_split_words(files, under)
            continue
        # Patterns are relative to the config's data_dir (the repository's root without one).
        prefix = under + "/" if under else ""
        found[str(entry.get("config_name", "default"))] = {
            s: [f for f in files if any(_glob(prefix + p).fullmatch(f) for p in patterns)]
            for s, patterns in by_split.items()
        }
    return found


def _listed(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or ()]


def _glob(pattern: str) -> re.Pattern[str]:
    """A data_files pattern as the Hub reads it: `*` within one folder, `**` across folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


# A split word is bounded by these (or a folder's or the path's edge): `train-00000.parquet`,
# `my_train_set.csv`, `data/valid/`, but not `restrained.csv`.
_SEP = "[-._ 0-9]"
_SHARDED = re.compile(r"data/([^/]+)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*")


def _by_split_words(files: list[str], under: str = "") -> dict[str, list[str]]:
    """Data files (under a folder) by split, when the card declares none, by the Hub's naming
    rules, first that applies: `data/SPLIT-00000-of-00003…` shards (any split name); folders
    named for a split (SPLIT_WORDS); file names holding a split word; else all are `train`.
    Hidden files, the card and the loaders' own files are not data."""
    prefix = under + "/" if under else ""
    data = [
        f[len(prefix) :]
        for f in files
        if f.startswith(prefix)
        and not _NOT_DATA.search(f)
        and PurePosixPath(f).name not in _IGNORED
    ]
    shards: dict[str, list[str]] = {}
    for f in data:
        match = _SHARDED.fullmatch(f)
        if match:
            shards.setdefault(match[1], []).append(prefix + f)
    if shards:
        return {s: shards[s] for s in [*(w for w in SPLIT_WORDS if w in shards), *sorted(shards)]}
    for in_folder in (True, False):
        found: dict[str, list[str]] = {}
        for split, words in SPLIT_WORDS.items():
            word = "(?:" + "|".join(words) + ")"
            if in_folder:  # a folder of the path: the word alone or bounded
                named = re.compile(f"(?:.*/)?(?:[^/]*{_SEP})?{word}(?:{_SEP}[^/]*)?/.*")
            else:  # the file's name: starting with the word, or the word bounded
                named = re.compile(f"(?:.*/)?(?:[^/]*{_SEP})?{word}{_SEP}[^/]*")
            hits = [prefix + f for f in data if named.fullmatch(f)]
            if hits:
                found[split] = hits
        if found:
            return found
    return {"train": [prefix + f for f in data]} if data else {}
