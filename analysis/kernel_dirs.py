"""Private folders of report kernels (IPC sockets and connection file): their prefix, listing
and sweeping. Kept apart from :mod:`analysis.kernelpool` so that a batch run that starts no
kernel (nothing to render) does not import nbformat and jupyter_client."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["KERNEL_DIR_PREFIX", "kernel_dirs", "sweep_kernel_dirs"]

#: Prefix of a kernel's private folder (IPC sockets and connection file):
#: ``<tmp>/ipso-kernel-<pid of the process that owns the kernel>-<random>``.
KERNEL_DIR_PREFIX = "ipso-kernel-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kernel_dirs(owner: int | None = None) -> list[Path]:
    """Kernel folders in the temporary directory (of process `owner` only, when given)."""
    base = Path(tempfile.gettempdir())
    out = []
    for d in base.glob(f"{KERNEL_DIR_PREFIX}*"):
        parts = d.name[len(KERNEL_DIR_PREFIX):].split("-", 1)
        if d.is_dir() and parts[0].isdigit() and (owner is None or int(parts[0]) == owner):
            out.append(d)
    return out


def sweep_kernel_dirs(owner: int | None = None) -> int:
    """Remove kernel folders whose owning process is gone (all of `owner`'s, when given and that
    process is gone): what a killed worker could not clean up. Its kernel exits by itself (it
    watches its parent, see :class:`WarmKernel`). Returns the number removed."""
    n = 0
    for d in kernel_dirs(owner):
        pid = int(d.name[len(KERNEL_DIR_PREFIX):].split("-", 1)[0])
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n
