"""A job's files on disk: its input images and mask until they expire, its result until delivered.

Layout: `DATA_DIR/jobs/<job id>/` holds `input-<n>.<ext>`, `mask.png` (what the provider gets),
`region.png` (where the edit may change the image) and `result-<n>.<ext>`. The database says which
files a job has and until when they are kept; this module only reads, writes and deletes them.
Every function BLOCKS (file I/O): call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER = "jobs"
_JOB_ID = re.compile(r"^[0-9a-f]{16}$")
_FILE_NAME = re.compile(r"^[a-z]+(-\d+)?\.(png|jpg|jpeg|webp|json)$")  # images; an owed job's note


# The name prefix of the file created in DATA_DIR/jobs to read the file system's clock (`JobFiles.fs_now`).
CLOCK_PROBE = ".clock-"


class JobFiles:
    """The per-job folders under `DATA_DIR/jobs`."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / FOLDER

    def folder(self, job_id: str) -> Path:
        # Job ids are generated here as 16 hex digits; anything else must never become a path.
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def _path(self, job_id: str, name: str) -> Path:
        if not _FILE_NAME.match(name):
            raise ValueError(f"not a job file name: {name!r}")
        return self.folder(job_id) / name

    def write(self, job_id: str, files: dict[str, bytes]) -> None:
        """Write `files` ({name: bytes}) into the job's folder, durably (fsync, then rename).

        A crash mid-write leaves at most a `.tmp` file, never a truncated image under its real name.
        """
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            path = self._path(job_id, name)
            # A name of its own: with a shared DATA_DIR, a process that lost a job may still be writing.
            tmp = path.with_suffix(f"{path.suffix}.{secrets.token_hex(4)}.tmp")
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)

    def read(self, job_id: str, name: str) -> bytes:
        """The bytes of one file. Raises FileNotFoundError when it is gone (expired or swept)."""
        return self._path(job_id, name).read_bytes()

    def exists(self, job_id: str, names: list[str]) -> bool:
        """Whether every one of `names` is still on disk."""
        return all(self._path(job_id, name).is_file() for name in names)

    def delete(self, job_id: str, names: list[str]) -> None:
        """Delete some of a job's files (missing ones are fine)."""
        for name in names:
            self._path(job_id, name).unlink(missing_ok=True)

    def keep_only(self, job_id: str, name: str) -> None:
        """Delete every file of the job's folder but `name` (written first, so the folder is never
        without either)."""
        for path in self.folder(job_id).iterdir():
            if path.name != name:
                path.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        """Delete the job's whole folder (missing is fine)."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def job_ids(self) -> list[str]:
        """Every job that has a folder (for the start-up and hourly sweep)."""
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if _JOB_ID.match(entry.name))

    def fs_now(self) -> float:
        """The file system's clock now, as it stamps the files it creates: a new probe file's mtime (its
        name is no job id, so it is never listed or swept). Created, not touched: touching asks for
        this process's time, which is what must not count."""
        handle, name = tempfile.mkstemp(prefix=CLOCK_PROBE, dir=self.root)
        try:
            return os.fstat(handle).st_mtime
        finally:
            os.close(handle)
            os.unlink(name)

    def age(self, job_id: str, now: float | None = None) -> float | None:
        """Seconds since the job's folder last changed (a file written, replaced or deleted in it), or
        None when it is gone. `now`: `fs_now()` read once for many folders (one probe file, not one
        each); read here when not given.

        Read on the file system's clock (the folder's mtime against `fs_now`), never the storage clock,
        which is injected and moved by tests, nor this process's `time.time()`: with a shared DATA_DIR
        the host that stamps an mtime may not be this one, and a process's clock can be set apart
        (the test suite runs under faketime), while the file system agrees with itself.
        """
        try:
            changed = self.folder(job_id).stat().st_mtime
        except FileNotFoundError:
            return None
        return max(0.0, (self.fs_now() if now is None else now) - changed)

    def size(self) -> int:
        """Bytes used by every job folder (for logs)."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
