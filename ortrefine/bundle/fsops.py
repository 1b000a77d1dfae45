"""File-system steps the writers need to be safe: a rename that never replaces, a create that
never follows a symlink, and signals deferred over a few renames."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_RENAME_NOREPLACE = 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing `dst` (renameat2 where the
    kernel has it; elsewhere a check just before the rename, made safe among ortrefine writers by the lock)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        AT_FDCWD = -100
        if renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving inside the block take effect right after it.

    Masking the signals would not do: a process-directed signal goes to any thread that does not
    mask it (onnxruntime's and torch's), and Python then runs its handler in the main thread at
    the next bytecode. So the handlers themselves are swapped for a recorder.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                if pending[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), pending[0])



def _write_new(path: Path, text: str) -> None:
    """Create `path` (never through a symlink, never over an existing file) with `text`, synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
