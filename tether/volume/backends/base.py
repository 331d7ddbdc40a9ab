"""Where volume data lives."""

from __future__ import annotations

from typing import Protocol


class VolumeBackend(Protocol):
    def create(self, volume_id: str, size_gib: int) -> str:
        """Create an empty (all-zero) volume; return its path. Idempotent."""
        ...

    def delete(self, volume_id: str) -> None:
        """Remove the volume's data; no-op if absent."""
        ...

    def path(self, volume_id: str) -> str: ...

    def exists(self, volume_id: str) -> bool: ...
