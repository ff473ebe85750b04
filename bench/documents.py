"""How right the schema generator is on real model documents (tests/data/documents/).

For every endpoint of the corpus with hand-read expectations (expected.json, from its most
authoritative document), each document is parsed ALONE, as a user adding that one file would,
and each expected parameter is compared field by field (type, nullable, enum set, minimum,
maximum, required, default). Then the valid/invalid cases of cases.json are checked with the
schema each document gives, as `renderer validate` does: right verdict, and right for the right
reason (the violation names the case's field and kind). Grouped by layout.
Reproduce:  python bench/documents.py   (add --verbose for every wrong field)
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import table  # noqa: E402

from renderer.models.generate import merge  # noqa: E402
from tests.corpus import (  # noqa: E402
    LAYOUTS,
    cases,
    documents,
    expected,
    folders,
    read,
    score,
    sources,
    verdict,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    params: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # right, total, documents
    checks: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # verdict, reason, total
    endpoints: dict[str, set[str]] = defaultdict(set)
    all_cases = cases()
    units: list[tuple[Path, Path | list[Path]]] = [*documents()]
    units += [(folder, sources(folder)) for folder in folders()]
    for folder, doc in units:
        result = score(folder, doc)
        layout = result.layout if not result.refused else "refused"
        params[layout][0] += result.right
        params[layout][1] += result.total
        params[layout][2] += 1
        endpoints[layout].add(result.endpoint)
        if args.verbose and (result.wrong or result.refused):
            print(f"{result.document}: {result.refused or result.wrong}")
        if result.refused:
            continue
        want = expected(folder)["endpoint"]
        parsed, _ = read(folder, doc if isinstance(doc, list) else [doc])
        schema = merge(want, parsed, [])
        for case in (c for c in all_cases if c["endpoint"] == want):
            judged = verdict(schema, case)
            checks[layout][0] += judged.right
            checks[layout][1] += judged.right_reason
            checks[layout][2] += 1
            if args.verbose and not judged.right_reason:
                print(f"{result.document}: case {case['params']} → {judged.valid} {judged.reasons}")
    rows = []
    for layout in sorted(params, key=lambda k: -params[k][1]):
        right, total, docs = params[layout]
        v, r, n = checks.get(layout, [0, 0, 0])
        rows.append(
            (
                LAYOUTS.get(layout, layout),
                docs,
                len(endpoints[layout]),
                f"{right}/{total} ({100 * right / max(total, 1):.1f} %)",
                f"{v}/{n} ({100 * v / max(n, 1):.1f} %)" if n else "-",
                f"{r}/{n} ({100 * r / max(n, 1):.1f} %)" if n else "-",
            )
        )
    singles = {k: v for k, v in params.items() if k != "merged"}
    right = sum(p[0] for p in singles.values())
    total = sum(p[1] for p in singles.values())
    v, r, n = (sum(c[i] for k, c in checks.items() if k != "merged") for i in range(3))
    rows.append(
        (
            "every document alone",
            sum(p[2] for p in singles.values()),
            len(set().union(*(e for k, e in endpoints.items() if k != "merged"))),
            f"{right}/{total} ({100 * right / max(total, 1):.1f} %)",
            f"{v}/{n} ({100 * v / max(n, 1):.1f} %)",
            f"{r}/{n} ({100 * r / max(n, 1):.1f} %)",
        )
    )
    headers = (
        "layout",
        "documents",
        "endpoints",
        "parameters exactly right",
        "verdicts right",
        "for the right reason",
    )
    print(table(headers, rows))


if __name__ == "__main__":
    main()
