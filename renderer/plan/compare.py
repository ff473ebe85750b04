"""How include/exclude compare a matrix value with an entry's: by type and value, so a seed of
`true` never matches seed 1.
"""

from __future__ import annotations

from typing import Any


def same_value(key: str, a: Any, b: Any) -> bool:
    # 1 == True in Python; a seed of `true` must not match seed 1.
    return (type(a) is type(b) and a == b) or (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )
