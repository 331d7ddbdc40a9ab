"""The built-in flavors (sized for small test and demo guests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int  # MiB
    disk: int = 0  # GiB of local root disk (none: volumes only)


FLAVORS = {f.id: f for f in (
    Flavor("1", "t1.nano", 1, 64),
    Flavor("2", "t1.micro", 1, 128),
    Flavor("3", "t1.small", 1, 256),
    Flavor("4", "t1.medium", 2, 512),
)}


def find(ref: str) -> Flavor | None:
    """By id, by name, or by the last element of an href."""
    key = ref.rstrip("/").rsplit("/", 1)[-1]
    return FLAVORS.get(key) or next((f for f in FLAVORS.values() if f.name == key), None)
