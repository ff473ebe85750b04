"""Reading text files safely: a whole small one (a manifest, a wildcard file) or a large one a
block at a time (a prompt file), each OS-level and encoding problem a located error."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

from renderer.errors import ManifestError, Problem

# A prompt file is read a block at a time (any size); one row (a line of .txt or .jsonl, a CSV
# record, a Parquet row's text) is at most MAX_ROW_CHARS, so a file without line breaks cannot
# make the reader hold it whole. fal's prompts are far shorter; a longer row is a wrong file.
MAX_ROW_CHARS = 1 << 20
BLOCK = 4 << 20


def text_blocks(path: Path, shown: str) -> Iterator[tuple[int, int, str]]:
    """(byte offset, lines before, text) of a UTF-8 file read BLOCK bytes at a time, each block
    ending at a line break; ManifestError for UTF-16, bytes that are not UTF-8, a NUL, a line
    over MAX_ROW_CHARS. Memory is one block, however large the file."""
    for offset, lines, _, text in raw_blocks(path, shown):
        yield offset, lines, text


def raw_blocks(path: Path, shown: str) -> Iterator[tuple[int, int, bytes, str]]:
    """text_blocks with each block's bytes as read: (byte offset, lines before, bytes, text)."""
    offset, lines = 0, 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the prompt file: {exc.strerror or exc}")]
        ) from None
    with handle:
        while True:
            raw = handle.read(BLOCK)
            if not raw:
                return
            if not raw.endswith(b"\n"):
                rest = handle.readline(4 * MAX_ROW_CHARS + 1)  # a row of MAX_ROW_CHARS fits
                raw += rest
                if len(rest) > 4 * MAX_ROW_CHARS:
                    line = lines + raw.count(b"\n") + 1
                    raise ManifestError([row_too_long(shown, line)])
            if offset == 0 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise ManifestError(
                    [Problem(shown, 1, 1, "the prompt file is UTF-16 text; save it as UTF-8")]
                )
            try:
                text = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
            except UnicodeDecodeError as exc:
                line = lines + raw.count(b"\n", 0, exc.start) + 1
                col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
                raise ManifestError(
                    [
                        Problem(
                            shown,
                            line,
                            col,
                            "the prompt file is not UTF-8 text: byte "
                            f"0x{raw[exc.start]:02x} at byte offset {offset + exc.start} "
                            "cannot be decoded",
                            allowed="UTF-8 (with or without BOM); re-save it as UTF-8",
                        )
                    ]
                ) from None
            nul = text.find("\0")
            if nul >= 0:
                line = lines + text.count("\n", 0, nul) + 1
                raise ManifestError(
                    [
                        Problem(
                            shown, line, 1, "the prompt file contains a NUL byte; prompts are text"
                        )
                    ]
                )
            yield offset, lines, raw, text
            offset += len(raw)
            lines += raw.count(b"\n")


def row_too_long(name: str, line: int) -> Problem:
    return Problem(
        name,
        line,
        1,
        f"this row is over {MAX_ROW_CHARS:,} characters; one prompt is at most that",
        allowed="one prompt a line (.txt, .jsonl) or a row (.csv, .parquet)",
    )


MAX_MANIFEST_BYTES = (
    16 * 1024 * 1024
)  # a manifest is text; larger is a wrong file (lists belong in prompt files)


def read_text_file(
    path: Path, what: str, limit: int, too_large: str | None = None, check_only: bool = False
) -> tuple[str, str]:
    """(text, shown name) of a regular UTF-8 file (BOM or not); ManifestError for every other case.

    Guards each OS-level problem: NUL in the path, missing, a directory, a device or pipe
    (`/dev/zero` would never end), unreadable, too large, not UTF-8 (with the byte offset).
    `check_only`: the checks up to the size (not that one), nothing read: ("", shown).
    """
    shown = str(path)
    if "\0" in shown:
        raise ManifestError(
            [Problem(shown.replace("\0", "\\0"), 1, 1, f"the {what} path contains a NUL byte")]
        )
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ManifestError(
            [Problem(shown, 1, 1, f"no such {what} file")],
            hint="check the path; manifests/ has examples",
        ) from None
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise ManifestError([Problem(shown, 1, 1, f"is a directory, not a {what} file")])
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    f"is not a regular file (a device, pipe or socket); give a {what} file",
                )
            ]
        )
    if check_only:
        return "", shown
    if info.st_size > limit:
        raise ManifestError(
            [
                Problem(
                    shown,
                    1,
                    1,
                    f"the {what} is {info.st_size:,} bytes; the limit is {limit:,}",
                    allowed=too_large or f"a {what} of at most {limit:,} bytes",
                )
            ]
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise ManifestError(
            [Problem(shown, 1, 1, f"cannot read the {what}: {exc.strerror or exc}")]
        ) from None
    return decode_utf8(raw, shown, what), shown


def decode_utf8(raw: bytes, shown: str, what: str) -> str:
    """UTF-8 with or without a BOM; anything else is located by line and byte offset."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError([Problem(shown, 1, 1, f"the {what} is UTF-16 text; save it as UTF-8")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(
            [
                Problem(
                    shown,
                    line,
                    col,
                    f"the {what} is not UTF-8 text: byte 0x{raw[exc.start]:02x} "
                    f"at byte offset {exc.start} cannot be decoded",
                    allowed="UTF-8 (with or without BOM); re-save it as UTF-8",
                )
            ]
        ) from None
