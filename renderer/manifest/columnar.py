"""A Parquet prompt file's columns as pyarrow sees them: their size from the file's metadata, and
a batch of captions checked at once (the checks each row would get, for the whole batch)."""

from __future__ import annotations

from typing import Any

from renderer.manifest.reading import MAX_ROW_CHARS

# A Parquet batch of at least this many rows is checked at once by pyarrow (whose compute module
# takes ~0.1 s to import: a smaller file is checked row by row).
BATCH_CHECK = 4096


def column_bytes(handle: Any, columns: set[str]) -> int:
    """The uncompressed size of a Parquet file's `columns` (its row groups' metadata; a nested
    column's leaves are named `column.…`)."""
    meta = handle.metadata
    return sum(
        chunk.total_uncompressed_size
        for g in range(meta.num_row_groups)
        for chunk in map(meta.row_group(g).column, range(meta.num_columns))
        if chunk.path_in_schema in columns or chunk.path_in_schema.split(".")[0] in columns
    )


def plain_captions(column: Any) -> bool:
    """True when every value of a Parquet text column is a prompt as it stands (the checks a row
    would get, for a whole batch at once): a string, at most MAX_ROW_CHARS, no NUL, and some
    printable ASCII character (never whitespace, so it is not blank). Else each row is checked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return False
    if column.null_count or not len(column):
        return not len(column)
    return bool(
        pc.max(pc.binary_length(column)).as_py() <= MAX_ROW_CHARS  # bytes: at least the characters
        and not pc.any(pc.match_substring(column, "\0")).as_py()
        and pc.all(pc.match_substring_regex(column, "[!-~]")).as_py()
    )
