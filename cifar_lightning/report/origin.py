"""Do the runs compare like with like? Their provenance (results.json's `provenance`, written by
cifar_lightning/provenance.py) summarised, and a WARNING where they differ in code commit, dirty
state, data fingerprint or device."""

from __future__ import annotations

from collections import Counter
from typing import Any

from cifar_lightning.report.runs import Run

# What must match for runs to be compared: name -> path into the provenance dict.
CHECKED = {
    "code commit": ("code", "commit"),
    "dirty state": ("code", "dirty"),
    "data fingerprint": ("data", "fingerprint"),
    "device": ("device",),
}


def _get(provenance: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = provenance
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _provenances(runs: list[Run]) -> list[dict[str, Any]]:
    found = [r.results.get("provenance") for r in runs if r.ok]
    return [p for p in found if isinstance(p, dict)]


def _commit(commit: Any) -> str:
    return f"`{commit[:10]}`" if isinstance(commit, str) else "not in git"


def _dirty(dirty: Any) -> str:
    return {True: "uncommitted changes", False: "clean"}.get(dirty, "dirty state unknown")


def _describe(name: str, value: Any) -> str:
    if name == "code commit":
        return _commit(value)
    if name == "dirty state":
        return _dirty(value)
    return "unknown" if value is None else str(value)


def _counted(items: list[str]) -> str:
    counts = Counter(items)
    runs = lambda n: f"{n} run" + ("s" if n != 1 else "")  # noqa: E731
    return "; ".join(f"{item} ({runs(n)})" for item, n in sorted(counts.items()))


def warnings(runs: list[Run]) -> list[str]:
    """One WARNING line per problem: runs differing in what CHECKED names, or some runs
    recording no provenance while others do."""
    provs = _provenances(runs)
    done = sum(r.ok for r in runs)
    lines = []
    differ = []
    for name, path in CHECKED.items():
        found = [_get(p, path) for p in provs]
        if len({repr(v) for v in found}) > 1:
            differ.append(f"{name}: {_counted([_describe(name, v) for v in found])}")
    if differ:
        lines.append("WARNING: the runs compared differ in " + " | ".join(differ))
    if provs and len(provs) < done:
        lines.append(f"WARNING: {done - len(provs)} of {done} complete runs record no "
                     f"provenance: their code, data and device are unknown")  # fmt: skip
    return lines


def section(runs: list[Run]) -> list[str]:
    """Markdown lines: the distinct code versions, software, devices and data of the runs."""
    provs = _provenances(runs)
    done = sum(r.ok for r in runs)
    if not provs:
        return ["No run records its provenance (results.json from before it was recorded)."]
    code = [
        f"{_commit(_get(p, ('code', 'commit')))}, {_dirty(_get(p, ('code', 'dirty')))}, "
        f"version {_get(p, ('code', 'version'))}"
        for p in provs
    ]
    software = [
        f"torch {p.get('torch')}, lightning {p.get('lightning')}, CUDA {p.get('cuda') or '–'}, "
        f"precision {p.get('precision')}"
        for p in provs
    ]
    data = []
    for p in provs:
        sizes = ", ".join(f"{k} {_get(p, ('data', k))}" for k in ("train", "val", "test"))
        data.append(f"`{_get(p, ('data', 'fingerprint'))}` ({sizes})")
    lines = [
        f"- code: {_counted(code)}",
        f"- software: {_counted(software)}",
        f"- device: {_counted([str(p.get('device')) for p in provs])}",
        f"- data: {_counted(data)}",
    ]
    if len(provs) < done:
        lines.append(f"- no provenance recorded: {done - len(provs)} run(s)")
    return lines
