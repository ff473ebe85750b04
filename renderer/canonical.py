"""The one canonical JSON text of a value: sorted keys, no spaces.

Everything that hashes or compares a JSON value by its text goes through `canonical_json`, so
"the same value" means the same bytes everywhere: job keys, plan digests, the dataset's
`input` column, hashed path segments. Base layer: imports nothing from the project.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any, *, ensure_ascii: bool = False) -> str:
    """`value` as JSON with sorted keys and no whitespace.

    `ensure_ascii` is a parameter, not a choice made here, because existing bytes depend on it:
    job keys and the dataset keep non-ASCII text as is (False), while path segments
    (`layout.value_segment`) were always hashed from the escaped form (True); changing either
    would rename jobs or move files.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii)
