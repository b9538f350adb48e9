"""Atomic writes: a reader (or a process killed at any moment) sees the old complete file or the new complete one,
never a partial one under the final name.

- `write_atomic(path, data)`: bytes, or a function that writes to an open binary file, to a temporary sibling in the
  same directory (so the rename never crosses filesystems), fsync'ed, then `os.replace`d over `path`.
- `r1lab.infra.callbacks.AtomicCheckpointIO`: Lightning's checkpoint writer, the same way (set as a trainer plugin in
  configs/trainer/default.yaml). Lightning's own `TorchCheckpointIO` writes through an fsspec transaction whose
  temporary file lives in the system temp directory: when that is another filesystem than the checkpoint directory
  (a local /tmp, checkpoints on a shared disk), the final "move" is a copy into the final name, and a kill during the
  copy leaves a truncated `last.ckpt`.
- `replace_dir(tmp, final)`: put a finished directory in place; on Linux one atomic `renameat2(RENAME_EXCHANGE)`.
- `remove_stale_tmp(run_dir)`: what a killed run left behind (`.<name>.tmp.<pid>` files, `<name>.tmp` directories),
  removed when the next run starts in the same directory (r1lab.train and r1lab.sample call it).
"""

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TMP_FILE = re.compile(r"\..+\.tmp\.\d+")  # write_atomic's temporary file: .<name>.tmp.<pid>


def remove_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (`.<name>.tmp.<pid>`, anywhere below) and directories (`<name>.tmp`, directly in
    it) that a killed run left in `run_dir`; returns what was removed. Call it when the run starts, before anything
    writes there (rank zero only under DDP).

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "checkpoints").mkdir(); (d / "model.tmp").mkdir()
    >>> for name in ("checkpoints/.last.ckpt.tmp.4242", "checkpoints/last.ckpt", "notes.tmp"): (d / name).touch()
    >>> sorted(str(p.relative_to(d)) for p in remove_stale_tmp(d)), sorted(p.name for p in d.rglob("*"))
    (['checkpoints/.last.ckpt.tmp.4242', 'model.tmp'], ['checkpoints', 'last.ckpt', 'notes.tmp'])
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.rglob(".*.tmp.*") if p.is_file() and _TMP_FILE.fullmatch(p.name)]
    stale += [p for p in run_dir.glob("*.tmp") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[Any], None]) -> Path:
    """Write `data` (bytes, or a function given the open binary file) to `path` through a hidden temporary sibling.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = write_atomic(d / "a.txt", b"new"); (d / "a.txt").read_bytes(), sorted(p.name for p in d.iterdir())
    (b'new', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            data(f) if callable(data) else f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system or filesystem cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(tmp: Path, final: Path) -> Path:
    """Move the finished directory `tmp` to `final`, replacing what is there.

    Where `final` exists, the two are swapped in one atomic step and the old one (now at `tmp`) deleted. Without
    renameat2 it takes two renames, `final` -> `final.old` and `tmp` -> `final`; a kill between them leaves no
    `final` but both complete directories, which `r1lab.infra.hf.check_model_dir` reports.
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        tmp.rename(final)
    elif _exchange(tmp, final):
        shutil.rmtree(tmp)
    else:
        old = final.parent / f"{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    _fsync_dir(final.parent)
    return final
