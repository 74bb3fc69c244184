"""Processes from /proc, for the benchmarks that measure a loader's workers (Linux only)."""

from __future__ import annotations

import os


def descendants(root: int) -> list[int]:
    """Every descendant of ``root``, from the parent pid in ``/proc/<pid>/stat``."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, frontier = [], {root}
    while frontier:
        kids = {pid for pid, ppid in parent.items() if ppid in frontier}
        found += sorted(kids)
        frontier = kids
    return found
