"""The dataset a run produces in RUN/data/: `metadata.jsonl` and the dataset card (README.md).

Loadable with Hugging Face `datasets` both as an ImageFolder and through the card's `configs:`.

Invariants:
  * Every column has one Arrow type in every row, whatever the manifest sweeps: fixed columns
    have fixed types; each axis is its own top-level column whose type is decided from the
    plan's values for that axis (bool, int64, float64 or string; a mix of kinds, such as a
    size preset beside a {width, height} object, becomes string, non-strings as canonical
    JSON); the full input sent is one JSON string column (`input`). No struct column exists,
    so no empty struct can be written (Parquet refuses those).
  * Every row carries every column (null where it does not apply), so a reader that infers
    types from the first rows sees all of them. The card lists the types in `dataset_info`.
  * A row is a pure function of the stored job and one of its files (`Columns.row`), so the
    metadata can be appended to as jobs finish instead of being rebuilt.
  * The card's data_files globs are relative to RUN/data/, which holds only the dataset
    (images, sidecars, metadata, card): state, lock, run.json and report/ live outside it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.canonical import canonical_json
from renderer.layout import AXIS_PREFIX, CARD, DATA_DIR, DATASET_COLUMNS, METADATA, RUN_RECORD
from renderer.output import files
from renderer.state.store import Store

if TYPE_CHECKING:
    from renderer.output.source import RunSource

IMAGE_GLOBS = ("**/*.png", "**/*.jpg", "**/*.webp")

# Column → Arrow/`datasets` dtype, in the order rows are written (layout.DATASET_COLUMNS: the
# names a kept column may not take). file_name is ImageFolder's link to the image (it becomes
# the `image` column on load).
FIXED: dict[str, str] = dict(
    zip(
        DATASET_COLUMNS,
        (
            "string",  # file_name
            "string",  # prompt
            "string",  # prompt_id
            "string",  # model
            "string",  # endpoint
            "int64",  # seed
            "int64",  # image_index
            "string",  # job_key
            "string",  # request_id
            "string",  # provider
            "int64",  # width
            "int64",  # height
            "string",  # sha256
            "string",  # content_type
            "bool",  # has_nsfw_concepts
            "list<string>",  # tags
            "string",  # input
        ),
        strict=True,
    )
)


def _dtype(seen: set[str]) -> str:
    """One column's dtype from the kinds of its values: one kind is its own; ints and floats are
    float64; anything else (a mix, nested values, no value at all) is string."""
    if len(seen) == 1 and "json" not in seen:
        return next(iter(seen))
    if seen and seen <= {"int64", "float64"}:
        return "float64"
    return "string"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "json"


@dataclass(frozen=True)
class Columns:
    """The run's columns: the fixed ones, one per axis (name → (column, dtype)) in plan order,
    then one per kept column of the prompt files (`keep:`), in the order they are named."""

    axes: tuple[tuple[str, str, str], ...]  # (axis, column, dtype)
    kept: tuple[tuple[str, str], ...] = ()  # (column, dtype): a prompt file's kept columns

    def keeping(self, kinds: Mapping[str, set[str]]) -> Columns:
        """These columns with the kept ones (column → the kinds of its values: kept.kept_kinds,
        Store.kept_kinds), typed as an axis is."""
        return Columns(self.axes, tuple((name, _dtype(seen)) for name, seen in kinds.items()))

    @classmethod
    def from_axes(cls, per_job: Iterable[Mapping[str, Any]]) -> Columns:
        kinds: dict[str, set[str]] = {}
        for axes in per_job:
            for name, value in axes.items():
                seen = kinds.setdefault(name, set())
                if value is not None:
                    seen.add(_kind(value))
        found = []
        for name, seen in kinds.items():
            column = AXIS_PREFIX + name if name in FIXED else name
            found.append((name, column, _dtype(seen)))
        return cls(tuple(found))

    def dtypes(self) -> dict[str, str]:
        return {
            **FIXED,
            **{column: dtype for _, column, dtype in self.axes},
            **dict(self.kept),
        }

    def row(
        self, job: Mapping[str, Any], entry: Mapping[str, Any], index: int, provider: str | None
    ) -> dict[str, Any]:
        """One image's metadata row. `job` is a stored job (Store.export_rows), `entry` one of its files."""
        nsfw = job.get("has_nsfw_concepts")
        flag = nsfw[index] if isinstance(nsfw, list) and index < len(nsfw) else None
        path = entry["path"]
        prefix = DATA_DIR + "/"
        row: dict[str, Any] = {
            "file_name": path[len(prefix) :] if path.startswith(prefix) else path,
            "prompt": job["prompt"],
            "prompt_id": job["prompt_id"],
            "model": job["model"],
            "endpoint": job["endpoint"],
            "seed": _int(entry.get("seed", job["seed"])),
            "image_index": index,
            "job_key": job["key"],
            "request_id": job.get("request_id"),
            "provider": job.get("provider") or provider,
            "width": _int(entry.get("width")),
            "height": _int(entry.get("height")),
            "sha256": entry.get("sha256"),
            "content_type": entry.get("content_type"),
            "has_nsfw_concepts": flag if isinstance(flag, bool) else None,
            "tags": [str(t) for t in job.get("tags") or []],
            "input": canonical_json(job["input"]),
        }
        axes = job.get("axes") or {}
        for name, column, dtype in self.axes:
            row[column] = _cell(axes.get(name), dtype)
        if self.kept:
            extra = job.get("extra") or {}
            for column, dtype in self.kept:
                row[column] = _cell(extra.get(column), dtype)
        return row

    def features(self) -> list[dict[str, Any]]:
        """The card's `features:` (the YAML form both datasets 2.x and 5.x read)."""
        out: list[dict[str, Any]] = [{"name": "image", "dtype": "image"}]
        for column, dtype in self.dtypes().items():
            if column == "file_name":
                continue
            if dtype == "list<string>":
                out.append({"name": column, "sequence": "string"})
            else:
                out.append({"name": column, "dtype": dtype})
        return out


def _int(value: Any) -> int | None:
    # A provider may report a seed as anything: keep the column int64 (a huge or odd seed is dropped).
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        return None
    return value


def _cell(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    if dtype == "string":
        return value if isinstance(value, str) else canonical_json(value)
    if dtype == "float64":
        return float(value)
    return value


def write_metadata(data_dir: Path, rows: Iterable[dict[str, Any]]) -> int:
    """metadata.jsonl, streamed to a temporary file and renamed into place. Returns the row count."""
    path = data_dir / METADATA
    count = 0
    with files.atomic_stream(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    return count


def size_category(n: int) -> str:
    """The Hub's size_categories value for n rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]
    return next((label for bound, label in bounds if n < bound), "n>1T")


@dataclass(frozen=True)
class CardInfo:
    name: str
    manifest_file: str
    manifest_text: str | None  # the generating manifest, verbatim (keys never live in a manifest)
    license: str | None
    models: Mapping[str, tuple[str, int]]  # model → (endpoint, images)
    images: int
    size: int = 0  # bytes of the dataset: its images and metadata.jsonl
    # `- hub:` prompt sources as run.json states them: repo, config, split, revision, commit.
    sources: tuple[Mapping[str, Any], ...] = ()


def _yaml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML flow scalar


def card_text(
    info: CardInfo,
    columns: Columns,
    *,
    data_globs: tuple[str, ...] = (METADATA, *IMAGE_GLOBS),
    builder_note: str = "",
) -> str:
    """The dataset card: YAML front matter the Hub and `datasets` read, then a human description."""
    lines = ["---", "# Written by renderer.", f"pretty_name: {_yaml_string(info.name)}"]
    if info.license:
        lines.append(f"license: {_yaml_string(info.license)}")
    lines += [
        "task_categories:",
        "- text-to-image",
        "size_categories:",
        f"- {size_category(info.images)}",
        "tags:",
        "- synthetic",
        "- renderer",
        "# One split, pinned: path segments such as `dev` or `test` (a model called flux-1/dev)",
        "# are never taken for split names. The globs see only this folder's dataset files.",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path:",
    ]
    lines += [f"    - {_yaml_string(g)}" for g in data_globs]
    # The types go in dataset_info (what the Hub shows), not in configs: datasets 2.x cannot
    # read `features:` inside a config and fails to load. The rows themselves keep one type
    # per column, so both 2.x and 5.x infer the same schema.
    # dataset_size is true (the bytes of the images and metadata.jsonl) and it is what tells two
    # runs apart to the `datasets` cache: the cache folder is named by the folder's basename
    # (every run's is `data`) and a hash of the card's dataset_info and configs, so two runs with
    # the same columns would otherwise share one cache entry and `load_dataset` would serve the
    # first run's rows for the second. (Row counts are not stated: `datasets` would then refuse
    # to load a folder whose images and rows disagree, instead of loading it.)
    lines += ["dataset_info:", f"  dataset_size: {int(info.size)}", "  features:"]
    for feature in columns.features():
        name, (key, value) = (
            feature["name"],
            next((k, v) for k, v in feature.items() if k != "name"),
        )
        lines.append(f"  - name: {_yaml_string(name)}")
        lines.append(f"    {key}: {value}")
    lines += [
        "---",
        f"# {info.name}",
        "",
        f"{info.images} images rendered by `renderer` from `{info.manifest_file}`.{builder_note}",
        "",
    ]
    if not info.license:
        lines += [
            "**License: not set.** Add `license: <SPDX id>` to the manifest to state one; "
            "each model provider's terms apply to its images.",
            "",
        ]
    if info.sources:
        lines += ["## Prompt source", ""]
        for src in info.sources:
            asked = f"`revision: {src['revision']}`" if src.get("revision") else "its main branch"
            lines.append(
                f"- the Hugging Face dataset `{src['repo']}`, config `{src['config']}`, split "
                f"`{src['split']}`, at commit `{src['commit']}` ({asked} when the run was "
                f"planned): `hf://datasets/{src['repo']}@{src['commit']}`"
            )
        lines.append("")
    lines += ["## Models", "", "| model | endpoint | images |", "|---|---|---|"]
    lines += [f"| {m} | `{e}` | {n} |" for m, (e, n) in info.models.items()]
    lines += [
        "",
        "## Columns",
        "",
        "`image` (from `file_name`), `prompt`, `prompt_id`, `model`, `endpoint`, `seed`, `image_index`, "
        "`job_key`, `request_id`, `provider`, `width`, `height`, `sha256`, `content_type`, "
        "`has_nsfw_concepts` (as the provider reported it; null when it did not), `tags`, and "
        "`input`: the exact input sent, as a JSON string.",
    ]
    if columns.axes:
        described = ", ".join(f"`{column}` ({dtype})" for _, column, dtype in columns.axes)
        lines += [
            "",
            f"One column per swept axis, holding the value the manifest gave (before it was "
            f"translated into each model's own parameters): {described}.",
        ]
    if columns.kept:
        described = ", ".join(f"`{column}` ({dtype})" for column, dtype in columns.kept)
        lines += [
            "",
            "Columns carried over from the prompt files (`keep:`), each row holding its "
            f"prompt's value (null where its file has none): {described}.",
        ]
    if info.manifest_text is not None:
        fence = "````" if "```" in info.manifest_text else "```"
        lines += ["", "## Manifest", "", f"{fence}yaml", info.manifest_text.rstrip("\n"), fence]
    return "\n".join(lines) + "\n"


@dataclass
class Tally:
    """What metadata.jsonl holds, counted as it is written (and kept in the state to append to it)."""

    jobs: int = 0
    rows: int = 0
    image_bytes: int = 0  # the sizes of the images its rows name
    through: float | None = (
        None  # the latest `downloaded_at` among its jobs: later ones are not in it yet
    )
    models: dict[str, list[Any]] = field(
        default_factory=dict
    )  # model → [endpoint, images], first seen first

    def rows_of(
        self, columns: Columns, jobs: Iterable[Mapping[str, Any]], provider: str | None
    ) -> Iterator[dict[str, Any]]:
        for job in jobs:
            self.jobs += 1
            at = job.get("downloaded_at")
            if isinstance(at, (int, float)) and (self.through is None or at > self.through):
                self.through = float(at)
            for index, entry in enumerate(job["files"]):
                self.models.setdefault(job["model"], [job["endpoint"], 0])[1] += 1
                self.rows += 1
                size = entry.get("size")
                self.image_bytes += size if isinstance(size, int) and size > 0 else 0
                yield columns.row(job, entry, index, provider)


def _card(data_dir: Path, info: CardInfo, columns: Columns, tally: Tally) -> None:
    info = replace(
        info,
        models={m: (e, n) for m, (e, n) in tally.models.items()},
        images=tally.rows,
        size=tally.image_bytes + _size(data_dir / METADATA),
    )
    files.write_atomic(data_dir / CARD, card_text(info, columns).encode())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def write(
    run_dir: Path,
    info: CardInfo,
    columns: Columns,
    jobs: Iterable[Mapping[str, Any]],
    provider: str | None,
) -> Tally:
    """RUN/data/metadata.jsonl (plan order) and RUN/data/README.md, whole. Returns what was written."""
    data_dir = run_dir / DATA_DIR
    tally = Tally()
    write_metadata(data_dir, tally.rows_of(columns, jobs, provider))
    _card(data_dir, info, columns, tally)
    return tally


DATASET_META = (
    "dataset"  # the state's record of metadata.jsonl: its Tally, size, mtime and signature
)


def update(
    store: Store,
    info: CardInfo,
    columns: Columns,
    provider: str | None,
    signature: str,
    *,
    append: bool = True,
    record: bool = True,
) -> Tally:
    """metadata.jsonl and the card brought up to date with the state, appended to where that is exact.

    The rows of jobs finished since the file was last written (plan order within them) are
    appended when the state's record of the file still matches it (same signature: plan digest,
    columns, provider; same size and mtime) and the finished jobs then number exactly those in
    the file: a job that left the plan, was downloaded again or finished twice makes the count
    disagree, and the file is rewritten whole. The card (a few lines per model) is rewritten
    from the counts, never by reading the rows. `record`: keep the new record in the state
    (False for a read-only state: the next run then finds no match and rewrites).
    """
    data_dir = store.run_dir / DATA_DIR
    path = data_dir / METADATA
    finished = store.counts()["downloaded"]
    known = _recorded(store, signature, path) if append else None
    tally: Tally | None = None
    if known is not None:
        tally = known
        with open(
            path, "ab"
        ) as handle:  # a kill mid-append leaves a size the record does not match
            for row in tally.rows_of(columns, store.export_rows(after=tally.through), provider):
                handle.write(
                    (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                )
            handle.flush()
            os.fsync(handle.fileno())
        if tally.jobs != finished:
            tally = None
    if tally is None:
        tally = write(store.run_dir, info, columns, store.export_rows(), provider)
    else:
        _card(data_dir, info, columns, tally)
    if record:
        stat = path.stat()
        store.set_meta(
            DATASET_META,
            json.dumps(
                {
                    "signature": signature,
                    "bytes": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "jobs": tally.jobs,
                    "rows": tally.rows,
                    "image_bytes": tally.image_bytes,
                    "through": tally.through,
                    "models": tally.models,
                }
            ),
        )
    return tally


def _recorded(store: Store, signature: str, path: Path) -> Tally | None:
    """The Tally of metadata.jsonl as recorded, if the file on disk is still exactly that file."""
    try:
        known = json.loads(store.meta(DATASET_META) or "null")
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if (
        not isinstance(known, dict)
        or known.get("signature") != signature
        or known.get("bytes") != stat.st_size
        or known.get("mtime_ns") != stat.st_mtime_ns
    ):
        return None
    try:
        return Tally(
            int(known["jobs"]),
            int(known["rows"]),
            int(known["image_bytes"]),  # absent in a record older than it: rewrite whole
            known["through"],
            {str(m): [str(e), int(n)] for m, (e, n) in known["models"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


@contextmanager
def reading(
    run: RunSource | Path,
) -> Iterator[tuple[Columns, Iterator[tuple[dict[str, Any], str]]]]:
    """A finished run's dataset rows from its state, read-only: (columns, iterator of (row, path)).

    `path` is the image's path relative to the run's output (its directory or its bucket
    folder). Rows come in plan order, the same rows metadata.jsonl holds. Safe while another
    process runs it. `run`: a run directory, or a RunSource (any state, any output).
    """
    from renderer.output.source import sourced

    with sourced(run) as source:
        provider = None
        with contextlib.suppress(OSError, ValueError, AttributeError):
            provider = json.loads(source.read(RUN_RECORD) or b"null").get("provider")
        with source.store() as store:
            columns = Columns.from_axes(store.axis_kinds()).keeping(store.kept_kinds())

            def rows() -> Iterator[tuple[dict[str, Any], str]]:
                for job in store.export_rows():
                    for index, entry in enumerate(job["files"]):
                        yield columns.row(job, entry, index, provider), entry["path"]

            yield columns, rows()
