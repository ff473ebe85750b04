"""A sharded layout's bucket kept in the cell, not in the form (m014 / p008, issue 22).

A sharded layout puts a prompt's files under a folder of three hex digits named from its id
(`model/<3 hex>/<prompt id>/…`). Until m014 that folder was part of the form's stem head, so one
model's caption set had a form per bucket: 4,096 forms of ~200 B, 8 B a job at 100k captions.
From m014 a form's stem head stops before such a folder, and a cell whose stem has one keeps it in
its `form` column, which is then negative:

    cells.form = form id                          (a stem without that folder, or none derived)
    cells.form = -(form id << 12 | bucket)        (bucket: the folder's three hex digits, 0-4095)

Invariants: form ids are >= 1, so the sign tells the two apart; the folder is exactly three
lowercase hex digits and the view writes them back with three lowercase hex digits, so the stem
read is the stem stored. For form ids up to 7 the value takes the 2 bytes a form id of 128-32767
took before (SQLite's integer sizes), so a cell grows by nothing while the forms shrink to one a
model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from renderer.state.rows import _dumps

HEX = "0123456789abcdef"


def form_of(cells: str) -> str:
    """SQL: the form id of a cell (`cells`: the cells row's name or alias, e.g. `c`)."""
    return f"(CASE WHEN {cells}.form < 0 THEN (-{cells}.form) >> 12 ELSE {cells}.form END)"


# SQL: the bucket folder of a `cells c` row whose form is negative (`<3 hex>/`), per database.
SQLITE_BUCKET = "printf('%03x/', (-c.form) & 4095)"
PG_BUCKET = "lpad(to_hex((-c.form) & 4095), 3, '0') || '/'"


def bucketed_head(form_head: str, bucket: str) -> str:
    """SQL: a cell's form stem head with the cell's bucket after it, where it has one."""
    return f"{form_head} || CASE WHEN c.form < 0 THEN {bucket} ELSE '' END"


def _ends_in_bucket(head: str) -> bool:
    """Whether `head` ends in a folder of exactly three lowercase hex digits (`…/0ff/` or `0ff/`)."""
    return (
        len(head) >= 4
        and head[-1] == "/"
        and not head[-4:-1].strip(HEX)
        and (len(head) == 4 or head[-5] == "/")
    )


def split(pre: str | None) -> tuple[str | None, int | None]:
    """A stem head before the prompt id, cut before a bucket folder: (the rest, the bucket or None).

    The rest never ends in such a folder itself (`a/0ff/0ee/` is not cut), so a form m014 makes or
    keeps is never one it moves (share_buckets relies on it). (String tests, not a regular
    expression: this runs once a job while a plan is recorded.)
    """
    if pre is None or not _ends_in_bucket(pre) or _ends_in_bucket(pre[:-4]):
        return pre, None
    return pre[:-4], int(pre[-4:-1], 16)


def coded_form(form: int, bucket: int | None) -> int:
    """The value of cells.form for a cell of this form and bucket (see the module docstring)."""
    return form if bucket is None else -(form << 12 | bucket)


FORM_COLUMNS = (
    "endpoint, model, axes, input_head, input_mid, input_tail, num_images, tags, source_head, "
    "stem_head, stem_mid"
)


def share_buckets(db: Any) -> None:
    """m014's data step (both databases, `?` parameters): every form whose stem head ends in a bucket
    folder becomes the form without it (the first such form of its content is rewritten in place,
    keeping its small id; or the one already recorded with that content), and its cells point to that
    form with their bucket. A form's digest is the one a recording computes (cells._form), so the
    next recording finds it. Forms no cell points to afterwards are deleted; ids and `jobs` rows are unchanged.
    """
    shared: dict[bytes, int] = {}
    moves: list[tuple[int, int]] = []
    rows = db.execute(
        f"SELECT id, {FORM_COLUMNS} FROM forms WHERE stem_head IS NOT NULL ORDER BY id"
    ).fetchall()
    for r in rows:
        head, bucket = split(r[10])
        if bucket is None:
            continue
        content = (*tuple(r)[1:10], head, r[11])
        digest = hashlib.sha256(_dumps(content).encode()).digest()[:16]
        base = shared.get(digest)
        if base is None:
            found = db.execute("SELECT id FROM forms WHERE digest = ?", (digest,)).fetchone()
            base = int(found[0]) if found is not None else int(r[0])
            if found is None:
                db.execute(
                    "UPDATE forms SET digest = ?, stem_head = ? WHERE id = ?", (digest, head, base)
                )
            shared[digest] = base
        moves.append((int(r[0]), coded_form(base, bucket)))
    if not moves:
        return
    db.execute("CREATE TEMP TABLE rebucket (old bigint PRIMARY KEY, new bigint NOT NULL)")
    db.executemany("INSERT INTO rebucket VALUES (?, ?)", moves)
    db.execute(
        "UPDATE cells SET form = (SELECT new FROM rebucket WHERE old = cells.form) "
        "WHERE form IN (SELECT old FROM rebucket)"
    )
    # A form kept as the shared one (rewritten in place, or found) stays; the others have no cell.
    db.execute(
        "DELETE FROM forms WHERE id IN (SELECT old FROM rebucket) "
        "AND id NOT IN (SELECT (-new) >> 12 FROM rebucket)"
    )
    db.execute("DROP TABLE rebucket")


def rebucket(view: str) -> Callable[[Any], None]:
    """PostgreSQL's p008 (m014 in its words): `jobs` dropped, share_buckets, `view` the new `jobs`."""

    def step(db: Any) -> None:
        db.execute("DROP VIEW jobs")
        share_buckets(db)
        db.execute(view)

    return step
