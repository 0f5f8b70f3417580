"""A directory laid out as the kubelet mounts a ConfigMap, updated as the kubelet updates it.

``DIR/KEY -> ..data/KEY``, ``..data -> ..TIMESTAMP/``; an update writes a new timestamped
directory and swaps ``..data`` to it in one ``rename`` (the kubelet's AtomicWriter,
pkg/volume/util/atomic_writer.go), then removes the old directory.
"""

import os
from pathlib import Path


class ConfigMapMount:
    """A directory the kubelet maintains for one ConfigMap key."""

    def __init__(self, root: Path, key: str = "adapters.json") -> None:
        self.root = root
        self.key = key
        self.path = root / key
        self._serial = 0
        root.mkdir(parents=True, exist_ok=True)

    def write(self, content: bytes) -> None:
        self._serial += 1
        stamp = self.root / f"..2026_01_01_00_00_00.{self._serial:09d}"
        stamp.mkdir()
        (stamp / self.key).write_bytes(content)
        tmp = self.root / "..data_tmp"
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(stamp.name, tmp)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.replace(tmp, self.root / "..data")  # the one atomic step
        if not self.path.is_symlink() and not self.path.exists():
            os.symlink(f"..data/{self.key}", self.path)
        if old is not None:
            for item in (self.root / old).iterdir():
                item.unlink()
            (self.root / old).rmdir()

    def remove_key(self) -> None:
        self.path.unlink()

    def restore_key(self) -> None:
        os.symlink(f"..data/{self.key}", self.path)

    def loop(self) -> None:
        """``adapters.json`` a symlink into a loop (ELOOP on every open)."""
        self.path.unlink()
        os.symlink("loop-b", self.root / "loop-a")
        os.symlink("loop-a", self.root / "loop-b")
        os.symlink("loop-a", self.path)

    def unloop(self) -> None:
        for name in ("loop-a", "loop-b", self.key):
            (self.root / name).unlink()
        self.restore_key()
