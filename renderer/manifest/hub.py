"""A Hugging Face dataset by name as a prompt source: `- hub: org/name` (the `hub` extra).

Owns resolving an entry to one commit and the data files of its config and split there
(which files: hubfiles.py), downloading them into the Hugging Face cache (verified against the sizes and hashes the Hub
lists), and reading them with the prompt-file readers (sources.prompt_file), so a `hub:` entry
behaves exactly as the same Parquet / JSONL / CSV files named with `file:` would: the same rows,
ids, kept columns, checks and memory bounds. Also owns the reproducibility rule: the commit each
entry resolved to is recorded in the run's state (`keep_commits`), and a later run of that state
whose same entry resolves to another commit (a branch or tag moved) is refused.

huggingface_hub is imported when a manifest has a `hub:` entry, never at import time. Its
settings (HF_ENDPOINT, HF_HOME / HF_HUB_CACHE / XDG_CACHE_HOME, HF_TOKEN) come from the
environment the caller resolved and handed in (the CLI's injected environment; the Python API's
`env`, default os.environ), never from os.environ here nor from huggingface_hub's import-time
constants: each is passed to it explicitly. The token is sent to the Hub and never printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from renderer.errors import ManifestError, Problem
from renderer.manifest.hubfiles import HubProblem, data_files
from renderer.manifest.located import json_path
from renderer.manifest.sources import prompt_file
from renderer.manifest.table import PromptTable
from renderer.manifest.types import HubSource

if TYPE_CHECKING:
    from renderer.manifest.located import Located, Path_

INSTALL = "pip install 'renderer-batch[hub]'"
DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_prompts(
    doc: Located,
    index: int,
    item: dict[str, Any],
    keep: Sequence[str],
    env: Mapping[str, str],
) -> tuple[list[PromptTable], list[Problem], HubSource | None]:
    """The prompts of one `- hub:` entry: one table per data file of its split, in path order;
    the problems (located at the entry, naming the data file and row); and the source as
    resolved (None when it could not be). `env`: the HF_* variables as the caller resolved them."""
    at: Path_ = ("prompts", index, "hub")
    try:
        import huggingface_hub  # noqa: F401  # the extra is installed
    except ImportError:
        return (
            [],
            [
                doc.problem(
                    at,
                    "reading a Hugging Face dataset needs the `hub` extra (huggingface_hub)",
                    allowed=INSTALL,
                )
            ],
            None,
        )
    hub = _Hub(env)
    repo, revision = str(item["hub"]), item.get("revision")
    try:
        info = hub.info(repo, revision)
    except HubProblem as exc:
        return [], [doc.problem((*at[:2], exc.key), exc.message, **exc.kw)], None
    sha = info["sha"]
    try:
        config, split, files = data_files(info, item.get("config"), item.get("split", "train"))
    except HubProblem as exc:
        return [], [doc.problem((*at[:2], exc.key), exc.message, **exc.kw)], None
    source = HubSource(repo, config, split, revision, sha, at)
    columns: dict[str, str] = {k: item[k] for k in ("text", "id", "tags") if k in item}
    tables: list[PromptTable] = []
    problems: list[Problem] = []
    for name in files:
        shown = f"hf://datasets/{repo}@{sha}/{name}"
        try:
            local = hub.download(repo, sha, name, info["files"][name])
        except HubProblem as exc:
            problems.append(doc.problem(at, f"{shown}: {exc.message}", **exc.kw))
            continue
        if name.endswith(".json") and not _json_lines(local):
            problems.append(
                doc.problem(
                    at,
                    f"{shown} is one JSON document (an array or an object over several lines), "
                    "not JSON Lines",
                    allowed="data files in Parquet, JSON Lines (one object a line) or CSV",
                )
            )
            continue
        # The reader takes the format from the name as given (`.json`, like any name it does
        # not know, as JSON Lines): the cache's file is a link to a blob named by its hash.
        table, found = prompt_file(doc, local.parent, index, local.name, columns, True, keep)
        table.file, table.path = shown, at
        problems += _located(doc, at, found, local, shown)
        tables.append(table)
        if found and not len(table) and name != files[-1]:
            # The file as a whole is refused (a column missing, not Parquet…): the others,
            # shards of the same split, would be refused alike; one says it.
            rest = len(files) - files.index(name) - 1
            problems[-1] = replace(
                problems[-1], message=problems[-1].message + f" ({rest} more files not read)"
            )
            break
    return tables, problems, source


def _located(
    doc: Located, at: Path_, found: list[Problem], local: Path, shown: str
) -> list[Problem]:
    """The readers' problems at the entry: a row's problem names the data file and row in its
    message (the manifest's file:line:col is where the user acts); the cache path never shows."""
    line, col = doc.where(at)
    as_file = json_path((*at[:2], "file"))  # what the reader says of "its file" is the entry's
    out = []
    for p in found:
        message = p.message.replace(str(local), shown)
        message = message.replace(f"prompt file {local.name}", f"data file {shown}")
        if p.json_path == as_file:
            p = replace(p, line=line, col=col, json_path=json_path(at))
        if p.file in (str(local), str(local.resolve())):
            # A Parquet file's own problems (its schema, its format) are at no row.
            whole = shown.endswith(".parquet") and message.startswith(("no column", "not a"))
            unit = "row" if shown.endswith(".parquet") else "line"
            where = "" if whole else f" {unit} {p.line}"
            p = replace(p, file=doc.file, line=line, col=col, json_path=json_path(at))
            message = f"{shown}{where}: {message}"
        out.append(replace(p, message=message))
    return out


class _Hub:
    """huggingface_hub, pointed by `env` (read now) at an endpoint, a cache and a token."""

    def __init__(self, env: Mapping[str, str]) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars, logging

        disable_progress_bars()  # the CLI prints what it means to; no bars on stderr
        logging.set_verbosity_error()
        self.endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        # False: no token read from a file, only HF_TOKEN (the environment only).
        self.token: str | bool = env.get("HF_TOKEN") or False
        # huggingface_hub's own order: HF_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME, ~/.cache.
        xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
        home = env.get("HF_HOME") or str(Path(xdg) / "huggingface")
        self.cache = Path(env.get("HF_HUB_CACHE") or Path(home) / "hub")
        self.api = HfApi(endpoint=self.endpoint, token=self.token)

    def _failed(self, exc: Exception, what: str) -> HubProblem:
        """A clear problem for a failed call (never the token, never a traceback)."""
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, GatedRepoError):
            return HubProblem(
                f"{what} is gated: its conditions must be accepted on the Hub by the account "
                "whose token is in HF_TOKEN",
                allowed="export HF_TOKEN=… (read from the environment only)",
            )
        if isinstance(exc, RevisionNotFoundError):
            return HubProblem(f"{what}: no such revision", "revision", allowed=self._refs(what))
        if isinstance(exc, RepositoryNotFoundError):
            status = exc.response.status_code if exc.response is not None else 404
            private = " (or it is private or gated: set HF_TOKEN to a token that can read it)"
            return HubProblem(
                f"no dataset {what} on the Hub at {self.endpoint}"
                + (private if status == 401 or self.token is False else ""),
                allowed="a dataset id as the Hub names it: ORG/NAME",
            )
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status in (401, 403):
                return HubProblem(
                    f"the Hub refused {what} ({status}): the token in HF_TOKEN cannot read it"
                    if self.token
                    else f"the Hub refused {what} ({status}): it needs a token",
                    allowed="export HF_TOKEN=… (read from the environment only)",
                )
            return HubProblem(
                f"the Hub at {self.endpoint} answered {status} for {what}; nothing was read",
                allowed="run again later",
            )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(self.token, str):
            reason = reason.replace(self.token, "…")
        if type(exc).__name__ == "RemoteProtocolError" or "Consistency check" in reason:
            # huggingface_hub resumed it five times; what it holds is incomplete, never used.
            return HubProblem(
                f"the download of {what} was cut short ({reason[:160]}); nothing was read",
                allowed="run again: it resumes, and the whole file is checked before it is read",
            )
        return HubProblem(
            f"the Hub at {self.endpoint} could not be reached for {what}: {reason[:200]}",
            allowed="network access to the Hub (HF_ENDPOINT names another), then run again",
        )

    def _refs(self, repo: str) -> str:
        """The dataset's branches and tags, to choose from (or what a revision may be)."""
        kinds = "a branch, a tag or a 40-hex commit"
        try:
            refs = self.api.list_repo_refs(repo, repo_type="dataset")
        except Exception:
            return kinds
        names = [r.name for r in [*refs.branches, *refs.tags]]
        return f"{kinds}; its branches and tags: {', '.join(names[:20])}" if names else kinds

    def info(self, repo: str, revision: str | None) -> dict[str, Any]:
        """The commit `revision` (default: the main branch) names, and each file's size and
        hash there: {"sha", "files": {path: (size, sha256 | None, git blob id | None)}, "card"}."""
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*", repo):
            raise HubProblem(
                f"{repo!r} is not a dataset id", allowed="ORG/NAME, as the Hub's page names it"
            )
        if revision is not None and COMMIT.fullmatch(revision):
            known = self._known(repo, revision)
            if known is not None:
                return known  # a commit never changes: its listing needs no request
        try:
            got = self.api.dataset_info(repo, revision=revision, files_metadata=True)
        except Exception as exc:
            raise self._failed(exc, repo) from None
        sha = got.sha or ""
        if not COMMIT.fullmatch(sha) or (
            revision is not None and COMMIT.fullmatch(revision) and sha != revision
        ):
            raise HubProblem(
                f"the Hub at {self.endpoint} answered {sha[:60]!r} as the commit of {repo}"
                + (f" at {revision}" if revision else "")
                + ": not a commit it was asked for; nothing was read",
                "revision" if revision else "hub",
            )
        files = {
            s.rfilename: (s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
            for s in got.siblings or ()
        }
        card = got.card_data.to_dict() if got.card_data is not None else {}
        found = {"sha": sha, "files": files, "card": card}
        self._keep(repo, found)
        return found

    def _listing(self, repo: str, sha: str) -> Path:
        """Where the listing of a commit is kept: beside huggingface_hub's folders for the
        dataset, so a run pinned to that commit needs the Hub only the first time."""
        return self.cache / f"datasets--{repo.replace('/', '--')}" / "renderer" / f"{sha}.json"

    def _known(self, repo: str, sha: str) -> dict[str, Any] | None:
        """The listing kept for `sha`, or None (none kept, or not one this module wrote)."""
        try:
            found = json.loads(self._listing(repo, sha).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not (
            isinstance(found, dict)
            and found.get("sha") == sha
            and isinstance(found.get("files"), dict)
            and all(isinstance(v, list) and len(v) == 3 for v in found["files"].values())
            and isinstance(found.get("card"), dict)
        ):
            return None
        return found

    def _keep(self, repo: str, found: dict[str, Any]) -> None:
        """Keep a commit's listing (written whole, then renamed); a cache that cannot be
        written only costs the next run a request."""
        path = self._listing(repo, found["sha"])
        with contextlib.suppress(OSError, TypeError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f"{path.name}.{os.getpid()}.part")
            part.write_text(json.dumps(found, default=str), encoding="utf-8")
            os.replace(part, path)

    def download(self, repo: str, sha: str, name: str, listed: tuple[Any, ...]) -> Path:
        """The data file `name` at commit `sha` in the cache, downloaded if not there, and
        verified: its size and hash are the Hub's listing's, or it is removed and refused."""
        from huggingface_hub import hf_hub_download

        size, sha256, blob = listed
        if not isinstance(size, int) or not (sha256 or blob):
            raise HubProblem("the Hub lists no size and hash for it: it cannot be verified")
        folder = self.cache / f"datasets--{repo.replace('/', '--')}"
        if not (folder / "snapshots" / sha / name).exists():
            self._safe_etag(repo, sha, name)
        try:
            got = hf_hub_download(
                repo,
                name,
                repo_type="dataset",
                revision=sha,
                endpoint=self.endpoint,
                token=self.token,
                cache_dir=self.cache,
            )
        except Exception as exc:
            raise self._failed(exc, f"{repo}/{name}") from None
        path = Path(str(got))
        actual, digest = _hashes(path, sha256 is not None)
        wanted = sha256 or blob
        if actual != size or digest != wanted:
            _forget(path)
            raise HubProblem(
                f"the download is not the file the Hub lists ({size:,} bytes, "
                f"{'sha256' if sha256 else 'git blob'} {str(wanted)[:12]}…; got {actual:,} bytes, "
                f"{digest[:12]}…): removed from the cache, nothing was read",
                allowed="run again (it is downloaded again); if it persists, the Hub or a proxy "
                "between serves another file",
            )
        return path

    def _safe_etag(self, repo: str, sha: str, name: str) -> None:
        """Refuse a file whose ETag is not a plain name before huggingface_hub downloads it:
        it stores the download as `blobs/<ETag>`, and a `../` there would write outside the
        cache (huggingface_hub 2.4 does not check). A server that answers this HEAD and
        huggingface_hub's own differently is not stopped here."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(repo, name, repo_type="dataset", revision=sha, endpoint=self.endpoint)
        try:
            etag = get_hf_file_metadata(url, token=self.token).etag or ""
        except Exception as exc:
            raise self._failed(exc, f"{repo}/{name}") from None
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", etag):
            raise HubProblem(
                f"the Hub names the download {etag[:80]!r}, which is not a plain name: "
                "refused before anything was written",
                allowed="a Hub that names files by their hash (HF_ENDPOINT names another)",
            )


def _json_lines(path: Path) -> bool:
    """Is a `.json` file JSON Lines? Not when its first line that is not blank opens an array
    or is a lone `{` (one document over many lines); a bad first row is the reader's to say."""
    with path.open("rb") as f:
        for raw in iter(lambda: f.readline(1 << 20), b""):
            first = raw.strip()
            if first:
                return not (first.startswith(b"[") or first == b"{")
    return True


def _hashes(path: Path, lfs: bool) -> tuple[int, str]:
    """(size, sha256) of an LFS file, (size, git blob id) of a file kept in git itself."""
    size = path.stat().st_size
    h = hashlib.sha256() if lfs else hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return size, h.hexdigest()


def _forget(path: Path) -> None:
    """Remove a download that failed verification (the snapshot's link and its blob)."""
    blob = path.resolve()
    for p in (path, blob):
        with contextlib.suppress(OSError):
            p.unlink()


# ---------------------------------------------------------------- one commit per run

# + repo/config/split@revision as the manifest asks it → the commit that resolved to.
META = "hub_commit:"


def meta_name(s: HubSource) -> str:
    """The state's meta key an entry's commit is recorded under (what the entry asks, as written)."""
    return f"{META}{s.repo}/{s.config}/{s.split}@{s.revision or ''}"


def keep_commits(
    sources: Sequence[HubSource],
    meta: Callable[[str], str | None],
    set_meta: Callable[[str, str], None],
    doc: Located,
) -> None:
    """Record the commit each `hub:` entry resolved to in the run's state, by what the entry
    asks (dataset, config, split and `revision:` as written, none included); refuse a later run
    whose same words resolve to another commit (a branch or tag moved on the Hub since):
    ManifestError naming both commits and the two ways on. Asking another revision is the
    user's choice: its commit is recorded beside."""
    problems = []
    for s in sources:
        name = meta_name(s)
        recorded = meta(name)
        if recorded is None:
            set_meta(name, s.sha)
        if recorded is None or recorded == s.sha:
            continue
        asked = f"`revision: {s.revision}`" if s.revision else "no revision (its main branch)"
        problems.append(
            doc.problem(
                s.path,
                f"the dataset {s.repo} (config {s.config!r}, split {s.split!r}) with {asked} is "
                f"at commit {s.sha} on the Hub now, but this run was planned from {recorded}: a run "
                "is a function of its manifest, and these words name another commit now",
                allowed=f"`revision: {recorded}` to finish the run as planned, or "
                f"`revision: {s.sha}` to render the dataset as it is now (changed rows are "
                "new jobs; rows gone leave the dataset)",
            )
        )
    if problems:
        raise ManifestError(problems, hint="pin the revision to a commit and run again")
