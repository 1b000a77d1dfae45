"""One writer per target: an flock on a hidden lock file beside it."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from ortrefine.bundle.names import lock_path
from ortrefine.errors import ExportError


class _Lock:
    """flock on the target's lock file. Only a file this run created, or an empty one (a killed
    run's), is written or removed: a file of that name the user keeps is left as it was."""

    def __init__(self, final: Path):
        self.path = lock_path(final)
        self.fd: int | None = None
        self.ours = False

    def _open(self) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return self._open()
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ExportError(f"{self.path} is a symlink, not an ortrefine lock; remove it or choose another output folder") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ExportError(f"{self.path} is not an ortrefine lock file; remove it or choose another output folder")
        return fd, False

    def acquire(self, final: Path) -> None:
        import fcntl

        while True:
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise ExportError(f"another ortrefine run ({holder or 'unknown pid'}) is writing {final}; wait for it or choose another output folder") from None
            try:  # the previous holder may have unlinked the file between our open and flock
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            size = os.fstat(fd).st_size
            self.ours = created or size == 0 or os.pread(fd, 4, 0) == b"pid "
            if not self.ours:
                os.close(fd)
                raise ExportError(f"{self.path} exists and was not written by ortrefine; move it away or choose another output folder")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            try:
                if os.fstat(self.fd).st_ino == os.lstat(self.path).st_ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def _lock_free(lock_file: Path) -> bool:
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
