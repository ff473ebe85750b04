"""`renderer diff`: what changed between two runs (or a baseline and a run), image by image.

Pairing is by coordinates: the same prompt id, seed, model label and axis values. The input is
not part of it, so a changed parameter or a new endpoint behind the same label still pairs, and
each pair names what differs between the two inputs (`differs`: endpoint, prompt text, each
parameter). `--map A=B` renames: model A on side A pairs with model B on side B (only the mapped
models take part). Each matched image is measured (SSIM and pHash, renderer/view/bands.py) and
put in a band: pass, review or fail. Same bytes (hashed from the files on disk) pass without
measuring. Where an image is absent (not rendered yet, or its file gone) the rule is the gate's
(`missing`): absent in B (the candidate) and present in A fails, since B lost what A has; absent in
A (the baseline) only is review, since there is nothing to judge B's by; absent in both is not a
pair at all: nothing to compare, so it is counted (`not_rendered`), never judged, and a partial run
compared with itself passes. An unreadable image fails. Coordinates on one side only are listed as
only_in_a (lost coverage) and only_in_b (new, not yet in the baseline).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml

from renderer.errors import UsageError, closest
from renderer.layout import CARD, DATA_DIR, DB_NAME
from renderer.output.source import RunSource
from renderer.state import read_store
from renderer.state.store import Store
from renderer.view.bands import EDGES, Bands, measure_or_none
from renderer.view.pairing import PART, Spilled, join

# Input keys `differs` leaves out: the seed is a coordinate, and the prompt text is compared
# under its own name beside the endpoint.
_NOT_COMPARED = ("prompt", "seed")


@dataclass(frozen=True)
class Entry:
    """One job on one side: its coordinates, what was asked, and its image files."""

    key: str
    prompt_id: str
    model: str
    seed: int | None
    axes: dict[str, Any]
    endpoint: str
    prompt: str
    input: dict[str, Any]
    files: list[dict[str, Any]]  # {path (relative to the side's root), sha256, size, mtime_ns}

    def __reduce__(self) -> tuple[type[Entry], tuple[Any, ...]]:
        # Pickled as its fields (pairing spills entries to disk): ~2x faster than the default.
        return Entry, (
            self.key,
            self.prompt_id,
            self.model,
            self.seed,
            self.axes,
            self.endpoint,
            self.prompt,
            self.input,
            self.files,
        )

    @property
    def coords(self) -> tuple[str, str, int | None, str]:
        return (self.prompt_id, self.model, self.seed, json.dumps(self.axes, sort_keys=True))

    @property
    def label(self) -> str:
        axes = "".join(f" / {k}={v}" for k, v in sorted(self.axes.items()))
        return f"{self.prompt_id} / {self.model}{axes} / seed {self.seed}"


@dataclass
class Side:
    """A run or a baseline: a root folder the file paths are relative to, and its entries."""

    root: Path
    entries: Iterable[Entry]  # a list (a baseline), or RunEntries (a run: streamed from its state)
    name: str = ""  # a baseline's name; "" for a run
    bands: Bands | None = None  # a baseline's stored bands
    calibration: dict[str, Any] | None = None
    manifest_bands: dict[str, Any] | None = None  # a run's manifest `regression.bands`
    source: RunSource | None = None  # a run read through its state (any backend, images anywhere)

    def file(self, rel: str) -> str:
        """A path on this machine to one of the side's images (a bucket's is read into a copy)."""
        if self.source is not None and self.source.remote:
            copy = self.source.local_file(rel)
            return str(copy) if copy is not None else str(self.root / rel)
        return str(self.root / rel)


def manifest_bands(run: Path | RunSource) -> dict[str, Any]:
    """`regression.bands` of the manifest a run was rendered from, or {}.

    Read from the run's own copy of its manifest, the verbatim block the dataset card ends with
    (renderer/output/dataset.py), so it is the manifest as it was at run time, wherever the file
    is now (in the bucket, for a run whose output is one). The manifest was validated then;
    anything unreadable here counts as no bands.
    """
    try:
        if isinstance(run, RunSource):
            raw = run.read(f"{DATA_DIR}/{CARD}")
            text = raw.decode("utf-8") if raw is not None else ""
        else:
            text = (run / DATA_DIR / CARD).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    at = text.find("\n## Manifest\n\n")
    if at < 0:
        return {}
    opening, _, rest = text[at + len("\n## Manifest\n\n") :].partition("\n")
    fence = opening.removesuffix("yaml")
    end = rest.rfind("\n" + fence)
    if not fence.startswith("```") or end < 0:
        return {}
    try:
        data = yaml.safe_load(rest[:end])
    except yaml.YAMLError:
        return {}
    regression = data.get("regression") if isinstance(data, dict) else None
    found = regression.get("bands") if isinstance(regression, dict) else None
    if not isinstance(found, dict):
        return {}
    return {
        k: v
        for k, v in found.items()
        if k in EDGES and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


_ENTRY_COLUMNS = "key, prompt_id, model, seed, axes, endpoint, prompt, input, files"


@dataclass(frozen=True)
class RunEntries:
    """A run's entries, read from its state in plan order each time they are iterated (pages of
    rows: memory stays one page however large the run)."""

    run: Path | RunSource

    def _store(self) -> Store:
        return self.run.store() if isinstance(self.run, RunSource) else read_store(self.run)

    def __iter__(self) -> Iterator[Entry]:
        with self._store() as store:
            for r in store.stream(_ENTRY_COLUMNS):
                yield Entry(
                    r["key"],
                    r["prompt_id"],
                    r["model"],
                    r["seed"],
                    json.loads(r["axes"]),
                    r["endpoint"],
                    r["prompt"],
                    json.loads(r["input"]),
                    json.loads(r["files"]) if r["files"] is not None else [],
                )

    def __len__(self) -> int:
        with self._store() as store:
            counts = store.counts()
        return sum(n for state, n in counts.items() if state != "no_longer_planned")

    def names(self) -> set[str]:
        with self._store() as store:
            return store.model_names()


def load_run(run: Path | RunSource) -> Side:
    """A run as one side of a comparison: a run directory, or a RunSource (any state backend;
    images on disk or in a bucket). Its entries are read from the state when iterated."""
    if isinstance(run, RunSource):
        root = run.run_dir
    else:
        if not (run / DB_NAME).is_file():
            raise UsageError(
                f"{run}: no run here (no {DB_NAME})",
                hint="pass run directories such as outputs/NAME",
            )
        root = run
    source = run if isinstance(run, RunSource) else None
    return Side(root, RunEntries(run), manifest_bands=manifest_bands(run), source=source)


def _names(side: Side) -> set[str]:
    """Every model label and endpoint of a side (what --map may name)."""
    if isinstance(side.entries, RunEntries):
        return side.entries.names()
    return {e.model for e in side.entries} | {e.endpoint for e in side.entries}


def _size(side: Side) -> int:
    entries = side.entries
    return len(entries) if isinstance(entries, (RunEntries, list)) else PART + 1


def pair_id(coords: tuple[Any, ...], index: int) -> str:
    """A pair's stable name: the same coordinates give the same id in every run and baseline."""
    digest = hashlib.sha256(json.dumps(list(coords)).encode()).hexdigest()[:16]
    return f"{digest}.{index}"


def disk_sha256(root: Path | RunSource, entry: dict[str, Any]) -> str | None:
    """The sha256 of the file as it is on disk now, or None when it is gone.

    The recorded hash is trusted only while size and mtime still match what was recorded (the
    same fast path a rerun uses); a re-encoded, edited or replaced file is hashed again, so it
    can never pass as identical. (A run in a bucket: the object is read and hashed.)
    """
    if isinstance(root, RunSource):
        if root.remote:
            copy = root.local_file(entry["path"])
            return None if copy is None else hashlib.sha256(copy.read_bytes()).hexdigest()
        root = root.run_dir
    # os.path, not pathlib: this runs once per image, a million times for a large run.
    path = os.path.join(root, entry["path"])
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    if (
        info.st_size == entry.get("size")
        and info.st_mtime_ns == entry.get("mtime_ns")
        and entry.get("sha256")
    ):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def differs(a: Entry, b: Entry) -> dict[str, list[Any]]:
    """What the two inputs disagree on: {name: [A's value, B's value]} (None where absent)."""
    out: dict[str, list[Any]] = {}
    if a.endpoint != b.endpoint:
        out["endpoint"] = [a.endpoint, b.endpoint]
    if a.prompt != b.prompt:
        out["prompt"] = [a.prompt, b.prompt]
    for name in sorted((a.input.keys() | b.input.keys()) - set(_NOT_COMPARED)):
        va, vb = a.input.get(name), b.input.get(name)
        if json.dumps(va, sort_keys=True) != json.dumps(vb, sort_keys=True):
            out[name] = [va, vb]
    return out


def _check_mapping(mapping: dict[str, str], a: Side, b: Side) -> None:
    """Every --map label must name a model (label or endpoint) of its side; a typo compares nothing."""
    for side, names, which in (("A", list(mapping), a), ("B", list(mapping.values()), b)):
        known = sorted(_names(which))
        for name in names:
            if name not in known:
                guess = closest(name, known)
                raise UsageError(
                    f"--map: run {side} has no model {name!r}",
                    hint=(f"did you mean {guess}? " if guess else "")
                    + f"models in run {side}: "
                    + ", ".join(known),
                )


def _mapped_key(mapping: dict[str, str], side: str) -> Callable[[Entry], Hashable | None]:
    """Coordinates of the mapped models, with B's model replaced by the A label it maps from
    (None: the entry's model is not mapped and takes no part)."""

    def key(e: Entry) -> Hashable | None:
        names = (e.endpoint, e.model)
        if side == "a":
            label = next((a for a in mapping if a in names), None)
        else:
            label = next((a for a, b in mapping.items() if b in names), None)
        if label is None:
            return None
        return (e.prompt_id, label, e.seed, json.dumps(e.axes, sort_keys=True))

    return key


def _coords(e: Entry) -> Hashable:
    return e.coords


def judging_bands(a: Side, b: Side, flags: dict[str, Any] | None = None) -> Bands:
    """The edges a comparison judges by, each layer over the one before: the defaults; A's own
    (a baseline's, calibrated); the manifest B was rendered from (`regression.bands`); flags."""
    judge = (a.bands or Bands()).override(b.manifest_bands or {}, "manifest regression.bands")
    return judge.override(flags or {}, "flags")


def _as_side(source: Path | Side) -> Side:
    return source if isinstance(source, Side) else load_run(Path(source))


def compare(
    source_a: Path | Side,
    source_b: Path | Side,
    *,
    mapping: dict[str, str] | None = None,
    bands: Bands | None = None,
) -> dict[str, Any]:
    """Pair, measure and band every image. `mapping` pairs A_MODEL=B_MODEL (labels or endpoints).

    `bands`: the edges to judge by; default `judging_bands(a, b)` (the baseline's own, the manifest's).
    Neither side is held whole (renderer/view/pairing.py): `pairs`, `only_in_a` and `only_in_b`
    are Spilled sequences (in a temporary file), in the order of A (only_in_b: of B).
    """
    a, b = _as_side(source_a), _as_side(source_b)
    judge = bands or judging_bands(a, b)
    if mapping is not None:
        _check_mapping(mapping, a, b)
        key_a, key_b = _mapped_key(mapping, "a"), _mapped_key(mapping, "b")
    else:
        key_a = key_b = _coords
    pairs, only_a, only_b, unrendered = Spilled(), Spilled(), Spilled(), Spilled()
    counts = dict.fromkeys(("pass", "review", "fail"), 0)
    measuring = _Measuring(a, b, judge)
    size = max(_size(a), _size(b))
    try:
        # A run's coordinates are unique (two jobs with the same ones would share a path, which
        # planning refuses), so two runs of one plan pair in step without any dict.
        unique = isinstance(a.entries, RunEntries) and isinstance(b.entries, RunEntries)
        for kind, found, ea, eb in join(a.entries, b.entries, key_a, key_b, size, unique=unique):
            coords = cast(tuple[Any, ...], found)
            if kind == "only_a":
                only_a.append(_only(ea, coords))
            elif kind == "only_b":
                only_b.append(_only(ea, coords))
            else:
                assert eb is not None
                for pair in _pairs_of(a, b, coords, ea, eb):
                    if pair["band"] == NOT_RENDERED:
                        unrendered.append(_not_compared(pair))
                    else:
                        measuring.add(pair)
            for pair in measuring.ready():
                counts[pair["band"]] += 1
                pairs.append(pair)
        for pair in measuring.ready(final=True):
            counts[pair["band"]] += 1
            pairs.append(pair)
    finally:
        measuring.close()
    counted = {
        "pairs": len(pairs),
        **counts,
        "only_in_a": len(only_a),
        "only_in_b": len(only_b),
        NOT_RENDERED: len(unrendered),
    }
    return {
        "run_a": str(a.root),
        "run_b": str(b.root),
        "baseline": a.name or None,
        "bands": judge.to_json(),
        "calibration": a.calibration,
        "outcome": outcome(counted),
        "counts": counted,
        "pairs": pairs,
        "only_in_a": only_a,
        "only_in_b": only_b,
        NOT_RENDERED: unrendered,
    }


# Pairs with no image on either side: counted and listed apart, never judged (module docstring).
NOT_RENDERED = "not_rendered"


def missing(has_a: bool, has_b: bool) -> tuple[str, str] | None:
    """The band and reason of a pair one or both of whose images are absent (None: both present).

    B is the candidate: B without what A has is a regression (fail). A is the reference: with no
    image of A's there is nothing to judge B's by, so a person looks (review). Neither: nothing to
    compare (NOT_RENDERED), so a run rendered in part compared with itself passes.
    """
    if has_a and has_b:
        return None
    if has_a:
        return "fail", "image missing in B"
    if has_b:
        return "review", "image missing in A: nothing to judge B's by"
    return NOT_RENDERED, "not rendered in A or B"


def _pairs_of(
    a: Side, b: Side, coords: tuple[Any, ...], ea: Entry, eb: Entry
) -> Iterator[dict[str, Any]]:
    """One pair per image index of a matched coordinate: its files hashed, same bytes passed."""
    label = (
        ea.label
        if ea.model == eb.model
        else ea.label.replace(f" / {ea.model}", f" / {ea.model} → {eb.model}", 1)
    )
    what = differs(ea, eb)
    for i in range(max(len(ea.files), len(eb.files), 1)):
        fa = ea.files[i] if i < len(ea.files) else None
        fb = eb.files[i] if i < len(eb.files) else None
        ha = disk_sha256(a.source or a.root, fa) if fa else None
        hb = disk_sha256(b.source or b.root, fb) if fb else None
        pair: dict[str, Any] = {
            "id": pair_id(coords, i),
            "label": label,
            "index": i,
            "prompt_id": ea.prompt_id,
            "model": ea.model,
            "model_b": eb.model,
            "seed": ea.seed,
            "axes": ea.axes,
            "key": ea.key,
            "key_b": eb.key,
            "differs": what,
            "a": fa["path"] if fa and ha else None,
            "b": fb["path"] if fb and hb else None,
            "sha_a": ha,
            "sha_b": hb,
            "identical": False,
            "ssim": None,
            "phash": None,
            "band": "pending",
            "reason": "",
        }
        if ha is None or hb is None:  # (tested first: the common case costs no call)
            absent = missing(ha is not None, hb is not None)
            assert absent is not None
            pair["band"], pair["reason"] = absent
            if absent[0] == NOT_RENDERED and (fa or fb):  # recorded, but the files are gone
                pair["reason"] = "image missing in A and B"
        elif ha == hb:
            pair.update(identical=True, ssim=1.0, phash=0, band="pass", reason="same bytes")
        yield pair


class _Measuring:
    """Pairs in order, held back only until the batch their pending measurements are in is done
    (on every core once a batch is worth it): memory is one batch, not the run."""

    BATCH = 512  # pending pairs measured together

    def __init__(self, a: Side, b: Side, judge: Bands) -> None:
        self.a, self.b, self.judge = a, b, judge
        self.held: list[dict[str, Any]] = []
        self.pending = 0
        self.pool: ProcessPoolExecutor | None = None

    def add(self, pair: dict[str, Any]) -> None:
        self.held.append(pair)
        self.pending += pair["band"] == "pending"

    def ready(self, final: bool = False) -> list[dict[str, Any]]:
        """The pairs that can be handed on now, in order (all of them when `final`)."""
        if not self.pending:
            out, self.held = self.held, []
            return out
        if self.pending < self.BATCH and not final:
            return []
        todo = [p for p in self.held if p["band"] == "pending"]
        tasks = [(self.a.file(p["a"]), self.b.file(p["b"])) for p in todo]
        if len(tasks) >= 16:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(max_workers=os.cpu_count() or 1)
            results = list(self.pool.map(measure_or_none, tasks, chunksize=8))
        else:
            results = [measure_or_none(t) for t in tasks]
        for pair, measured in zip(todo, results, strict=True):
            if measured is None:
                pair["band"], pair["reason"] = "fail", "not a readable image"
                continue
            pair["ssim"], pair["phash"] = measured
            pair["band"] = self.judge.judge(*measured)
            pair["reason"] = f"SSIM {measured[0]:.4f}, pHash {measured[1]}"
        out, self.held, self.pending = self.held, [], 0
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _not_compared(pair: dict[str, Any]) -> dict[str, Any]:
    """A pair with no image on either side as it is listed: the pair without its (empty) images
    and measurements."""
    gone = ("a", "b", "sha_a", "sha_b", "identical", "ssim", "phash", "band")
    return {k: v for k, v in pair.items() if k not in gone}


def _only(e: Entry, coords: tuple[Any, ...]) -> dict[str, Any]:
    first = e.files[0]["path"] if e.files else None
    return {
        "id": pair_id(coords, 0),
        "key": e.key,
        "label": e.label,
        "prompt_id": e.prompt_id,
        "model": e.model,
        "seed": e.seed,
        "axes": e.axes,
        "path": first,
        "sha": e.files[0].get("sha256") if e.files else None,
    }


# The gate's exit codes (README "Contact sheets and regression diffs").
EXIT = {"pass": 0, "fail": 1, "review": 4}


def outcome(counts: dict[str, int]) -> str:
    """fail when any pair fails or a coordinate of A is gone; review when any pair needs a look or
    B has coordinates A lacks; else pass. Pairs not rendered on either side do not count."""
    if counts["fail"] or counts["only_in_a"]:
        return "fail"
    if counts["review"] or counts["only_in_b"]:
        return "review"
    return "pass"


def write_html(result: dict[str, Any], path: Path, files: tuple[Any, Any] = (None, None)) -> Path:
    """The comparison page: the report's viewer with A | B | difference per pair (renderer/view/diffpage.py).

    `files`: per side, how to find an image on this machine (diffpage.Locator; None: on disk).
    """
    from renderer.view import diffpage

    return diffpage.write(result, path, files)
