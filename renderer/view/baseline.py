"""Named baselines: the pictures a release is gated against, with the provider noise they were
calibrated on and the reviewed changes accepted into them.

A baseline lives in BASELINES/NAME/ (BASELINES: --baselines, env RENDERER_BASELINES, default
./baselines): `baseline.json` (each job's coordinates, input and image files; the bands and the
calibration; the approvals so far) and `images/` (copies named by sha256, so the baseline outlives
the run it came from, and a run edited or deleted later cannot change it). Copies, never hard
links: an image edited in place in the run must not edit the baseline too.

`set_baseline` copies a run in (and, given a second render of the same manifest, measures the
provider's noise and derives the bands from it: bands.derive). `approve` accepts chosen pairs of a
later run into the baseline by copying that run's images and inputs over the baseline's, without
rendering anything; the next diff of that run then passes them as the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from renderer.errors import UsageError, closest
from renderer.view import compare as compare_mod
from renderer.view.bands import Bands, calibrate, derive
from renderer.view.compare import Entry, Side

FILE = "baseline.json"
ENV = "RENDERER_BASELINES"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DECISIONS_FORMAT = "renderer-decisions/1"


def folder(explicit: str | None, environ: Any) -> Path:
    """Where baselines live: the flag, else RENDERER_BASELINES, else ./baselines."""
    return Path(explicit or environ.get(ENV) or "baselines")


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"baseline name {name!r} is not allowed",
            hint="letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64",
        )
    return name


def names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / FILE).is_file())


def _entry_json(e: Entry) -> dict[str, Any]:
    return {
        "key": e.key,
        "prompt_id": e.prompt_id,
        "model": e.model,
        "seed": e.seed,
        "axes": e.axes,
        "endpoint": e.endpoint,
        "prompt": e.prompt,
        "input": e.input,
        "files": e.files,
    }


def _copy_in(base: Path, source: Path, sha: str) -> dict[str, Any]:
    """Copy one image into base/images/ under its hash; the record `disk_sha256` trusts."""
    rel = f"images/{sha}{source.suffix.lower()}"
    target = base / rel
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    info = target.stat()
    return {"path": rel, "sha256": sha, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _write(base: Path, data: dict[str, Any]) -> None:
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / (FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, base / FILE)


def _prune(base: Path, data: dict[str, Any]) -> None:
    """Remove copies no entry names any longer (a replaced baseline, an approved change)."""
    used = {f["path"] for e in data["entries"] for f in e["files"]}
    images = base / "images"
    if images.is_dir():
        for path in images.iterdir():
            if f"images/{path.name}" not in used:
                path.unlink(missing_ok=True)


def set_baseline(
    root: Path,
    run: Path,
    *,
    name: str | None = None,
    repeat: Path | None = None,
    flags: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Make (or replace) baseline NAME from RUN; with `repeat`, calibrate on RUN vs REPEAT.

    The stored bands: derived from the calibration (else the defaults), then RUN's manifest
    `regression.bands`, then `flags`, each over the one before.
    """
    name = _check_name(name or run.resolve().name)
    side = compare_mod.load_run(run)
    missing = [e.label for e in side.entries if not e.files]
    if missing:
        raise UsageError(
            f"{run}: {len(missing)} job(s) have no image (first: {missing[0]})",
            hint="finish the run (renderer run MANIFEST resumes it) before making it a baseline",
        )
    calibration = None
    judge = Bands()
    if repeat is not None:
        result = compare_mod.compare(side, compare_mod.load_run(repeat), bands=Bands())
        if result["counts"]["only_in_a"] or result["counts"]["only_in_b"] or not result["pairs"]:
            raise UsageError(
                f"--repeat {repeat}: not a second render of the same jobs "
                f"({result['counts']['only_in_a']} only in {run}, {result['counts']['only_in_b']} only in {repeat})",
                hint="render the same manifest again into another output folder",
            )
        gone = [p["label"] for p in result["pairs"] if p["ssim"] is None]
        if gone:
            raise UsageError(f"--repeat {repeat}: image missing for {gone[0]}")
        calibration = calibrate([(p["ssim"], p["phash"]) for p in result["pairs"]])
        calibration["runs"] = [str(run), str(repeat)]
        judge = derive(
            calibration,
            source=f"calibrated on {calibration['pairs']} pairs rendered twice: "
            f"worst SSIM {calibration['ssim_min']:.4f}, worst pHash {calibration['phash_max']}",
        )
    judge = judge.override(side.manifest_bands or {}, "manifest regression.bands")
    judge = judge.override(flags or {}, "flags")
    base = root / name
    replaced = (base / FILE).is_file()
    entries = []
    for e in side.entries:
        files = []
        for f in e.files:
            sha = compare_mod.disk_sha256(run, f)
            if sha is None:
                raise UsageError(f"{run / f['path']}: image missing ({e.label})")
            files.append(_copy_in(base, run / f["path"], sha))
        entries.append({**_entry_json(e), "files": files})
    data = {
        "format": 1,
        "name": name,
        "created": time.time(),
        "source_run": str(run),
        "bands": judge.to_json(),
        "calibration": calibration,
        "entries": entries,
        "approvals": [],
    }
    _write(base, data)
    _prune(base, data)
    return {
        "name": name,
        "dir": str(base),
        "replaced": replaced,
        "jobs": len(entries),
        "images": sum(len(e["files"]) for e in entries),
        "bands": judge.to_json(),
        "calibration": calibration,
    }


def _read(root: Path, name: str) -> dict[str, Any]:
    path = root / name / FILE
    if not path.is_file():
        known = names(root)
        guess = closest(name, known)
        raise UsageError(
            f"no baseline {name!r} in {root}",
            hint=(f"did you mean {guess}? " if guess else "")
            + (
                "baselines here: " + ", ".join(known)
                if known
                else "make one with `renderer baseline set RUN --name NAME`"
            ),
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def load(root: Path, name: str) -> Side:
    """A baseline as one side of a comparison (its bands and calibration come along)."""
    data = _read(root, _check_name(name))
    entries = [Entry(**e) for e in data["entries"]]
    return Side(
        root / name,
        entries,
        name=name,
        bands=Bands.from_json(data["bands"]),
        calibration=data.get("calibration"),
    )


def read_decisions(path: Path) -> dict[str, Any]:
    """A review exported from the diff page: {format, baseline, run_b, accept: [ids], reject: [ids]}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--decisions {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != DECISIONS_FORMAT:
        raise UsageError(
            f"--decisions {path}: not a review file (format {DECISIONS_FORMAT!r} expected)",
            hint="export it from the diff page's 'export decisions' button",
        )
    accept = data.get("accept")
    if not isinstance(accept, list) or not all(isinstance(i, str) for i in accept):
        raise UsageError(f"--decisions {path}: 'accept' must be a list of pair ids")
    return data


def approve(
    root: Path,
    name: str,
    run: Path,
    *,
    ids: list[str] | None = None,
    all_review: bool = False,
) -> dict[str, Any]:
    """Accept pairs of RUN into baseline NAME: their images and inputs replace the baseline's.

    `ids`: pair ids (from --json, the JUnit file or the page's export); `all_review`: every pair
    in the review band and every coordinate new in RUN. Nothing is rendered.
    """
    data = _read(root, _check_name(name))
    side = load(root, name)
    result = compare_mod.compare(side, run)
    pairs = {p["id"]: p for p in result["pairs"]}
    new = {o["id"]: o for o in result["only_in_b"]}
    if all_review:
        chosen = [i for i, p in pairs.items() if p["band"] == "review"] + list(new)
    else:
        chosen = list(dict.fromkeys(ids or []))
        unknown = [i for i in chosen if i not in pairs and i not in new]
        if unknown:
            raise UsageError(
                f"pair {unknown[0]!r} is not in the comparison of baseline {name!r} with {run}",
                hint="ids come from `renderer diff --baseline NAME RUN --json` (each pair's 'id')",
            )
    no_image = [i for i in chosen if i in pairs and pairs[i]["b"] is None]
    if no_image:
        raise UsageError(
            f"pair {no_image[0]} ({pairs[no_image[0]]['label']}) has no image in {run} to accept"
        )
    base = root / name
    run_side = compare_mod.load_run(run)
    by_key = {e.key: e for e in run_side.entries}
    stored = {Entry(**e).coords: e for e in data["entries"]}
    accepted = 0
    for pid in chosen:
        if pid in pairs:
            p = pairs[pid]
            target = next(e for e in data["entries"] if e["key"] == p["key"])
            src = by_key[p["key_b"]]
            record = _copy_in(base, run / p["b"], p["sha_b"])
            while len(target["files"]) <= p["index"]:
                target["files"].append(record)
            target["files"][p["index"]] = record
            # The accepted picture was made from B's input: the next diff names no difference.
            target.update(endpoint=src.endpoint, prompt=src.prompt, input=src.input)
        else:
            src = by_key[new[pid]["key"]]
            if src.coords in stored or not src.files:
                continue
            files = [
                _copy_in(base, run / f["path"], sha)
                for f in src.files
                if (sha := compare_mod.disk_sha256(run, f)) is not None
            ]
            data["entries"].append({**_entry_json(src), "files": files})
        accepted += 1
    data["approvals"].append({"time": time.time(), "run": str(run), "pairs": chosen})
    _write(base, data)
    _prune(base, data)
    return {"name": name, "accepted": accepted, "ids": chosen}
