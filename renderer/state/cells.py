"""A job's cell and form: how the plan's jobs are stored (m012's layout, see migrations.m012_forms).

A form holds what many cells share (endpoint, model, axes, tags, the input with the prompt and
the seed cut out, the source file, the stem around the prompt id but for a sharded layout's
bucket folder, which the cell's `form` holds: state/buckets.py); a cell what is a prompt's own
(its id, or in SQLite a number where the id derives from the text; its text once, its source line,
a stem head or JSON text only where they cannot be derived, the prompt file's kept columns). The
`jobs` view puts them back together, text for text (migrations.jobs_view).
"""

from __future__ import annotations

import hashlib
from typing import Any

from renderer.state.buckets import coded_form, split
from renderer.state.core import StoreCore
from renderer.state.recording import Memo
from renderer.state.rows import _dumps, coded_id


class Cells(StoreCore):
    """Finding or making the form and the cell of each job being recorded (plansync's rows)."""

    def _form(self, content: tuple[Any, ...], forms: dict[tuple[Any, ...], int]) -> int:
        """The id of the form with this content: remembered, found by its digest, or made."""
        form = forms.get(content)
        if form is None:
            digest = hashlib.sha256(_dumps(content).encode()).digest()[:16]
            row = self.db.execute("SELECT id FROM forms WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                # ON CONFLICT: two workers recording one plan at once make each form once.
                row = (
                    self.db.execute(
                        "INSERT INTO forms (digest, endpoint, model, axes, input_head, input_mid, input_tail, "
                        "num_images, tags, source_head, stem_head, stem_mid) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (digest) DO NOTHING RETURNING id",
                        (digest, *content),
                    ).fetchone()
                    or self.db.execute(
                        "SELECT id FROM forms WHERE digest = ?", (digest,)
                    ).fetchone()
                )
            if len(forms) >= 100_000:  # a plan whose inputs share nothing: memory stays bounded
                forms.clear()
            form = forms[content] = int(row[0])
        return form

    def _cell(
        self,
        j: Any,
        memo: Memo,
        stored: tuple[Any, ...] | None,
        made: list[tuple[Any, ...]] | None = None,
    ) -> tuple[int, str | None]:
        """The id of the job's cell and the stem the cell gives it (None: none).

        The cell is the one `stored` (its id, then its content) when that has the same content, else
        one made for this plan (remembered in `cells`, bounded). Cells are not looked up by content
        in the database: a job already recorded brings its own; a new job's cell is new, or one made
        earlier in this sync (a cell made twice reads the same, only less compactly).
        """
        cells = memo.cells
        form, bucket, cell_content, natural = self._contents(j)
        content = (coded_form(self._form(form, memo.forms), bucket), *cell_content)
        found: int | None = cells.get(content)
        if stored is not None and tuple(stored[1:]) == content:
            found = int(stored[0])
            # A job recorded before brought it: later jobs of the cell share it.
            cells.setdefault(content, found)
        if found is not None:
            return found, natural
        if made is not None:  # numbered here, written with the batch's jobs
            if memo.next_cell is None:
                memo.next_cell = self.db.execute(
                    "SELECT COALESCE(MAX(id), 0) + 1 FROM cells"
                ).fetchone()[0]
            cell, memo.next_cell = memo.next_cell, memo.next_cell + 1
            made.append((cell, *content))
        else:
            cell = int(
                self.db.execute(
                    "INSERT INTO cells (form, prompt_id, prompt, source, stem_head, quoted, extra, pid) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    content,
                ).fetchone()[0]
            )
        if len(cells) >= 100_000:  # a plan of all-distinct cells: memory stays bounded
            cells.clear()
        cells[content] = cell
        return cell, natural

    def _contents(self, j: Any) -> tuple[tuple[Any, ...], int | None, tuple[Any, ...], str | None]:
        """(form content, bucket, cell content without its form, the stem the cell gives the job).

        The bucket: a sharded layout's folder of three hex digits just before the prompt id, kept
        in the cell's form column, not in the form (m014, state/buckets.py); None without one.

        The input's JSON text is cut where that is exact: around the seed when it holds it once, and
        around the prompt's JSON text when it holds `"prompt":` once before that; the view puts them
        back (jobs_view), so the text read is the very text stored before.
        """
        text, seed, prompt = _dumps(j.input), j.seed, j.input.get("prompt", "")
        head, mid, tail, stem_head, quoted = text, None, None, None, None
        if isinstance(seed, int) and not isinstance(seed, bool):
            digits = str(seed)
            # '"seed":' cannot occur inside a JSON string (its quotes would be escaped).
            if text.count('"seed":') == 1:
                at = text.index('"seed":') + 7
                if text.startswith(digits, at) and text[at + len(digits)] in ",}":
                    head, tail = text[:at], text[at + len(digits) :]
            if j.stem.endswith(f"/s{digits}"):
                stem_head = j.stem[: -len(digits)]
        if isinstance(prompt, str) and head.count('"prompt":"') == 1:
            body = _dumps(prompt)[1:-1]
            at = head.index('"prompt":"') + 10
            if head.startswith(body + '"', at):
                head, mid = head[:at], head[at + len(body) :]
                quoted = None if body == prompt else body
        # stem head = form's stem head [|| bucket folder] || prompt id || form's stem middle, where it
        # holds the id.
        pre = after = own_stem = bucket = None
        pid = j.prompt_id
        if stem_head is not None and pid and pid in stem_head:
            at = stem_head.rindex(pid)
            pre, after = stem_head[:at], stem_head[at + len(pid) :]
            pre, bucket = split(pre)
        else:
            own_stem = stem_head
        source_head, colon, line = j.where.rpartition(":")
        source: Any = line
        if (
            self.int_source
            and line.isascii()
            and line.isdigit()
            and len(line) < 18
            and line == str(int(line))
        ):
            source = int(line)
        form = (
            j.endpoint,
            j.model,
            _dumps(j.axes),
            head,
            mid,
            tail,
            j.num_images,
            _dumps(list(j.tags)),
            source_head + colon,
            pre,
            after,
        )
        # The prompt's kept columns (`keep:`, a JSON object text, or None) are its cell's: a job
        # whose kept values change gets another cell, its key and path unchanged.
        # A prompt id derived from the text is stored as a number where it reads back (m013, SQLite).
        code = coded_id(pid, prompt) if self.coded_ids else None
        cell = (
            None if code is not None else pid,
            prompt,
            source,
            own_stem,
            quoted,
            getattr(j, "extra", None),
            code,
        )
        return form, bucket, cell, None if stem_head is None else f"{stem_head}{seed}"
