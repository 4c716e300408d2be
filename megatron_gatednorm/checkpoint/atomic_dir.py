"""Output folders that appear whole or not at all, never overlap their inputs, and replace only
what the project wrote.

Work happens in a visible temporary sibling ``.NAME.mgn-tmp-<pid>-xxxx`` that is renamed to
``NAME`` on success and removed on error; one left behind by a killed run is removed by the next
run into the same parent once process ``<pid>`` is gone. The finished folder gets ordinary
permissions (the umask's, not ``mkdtemp``'s 0700) and an integrity manifest
(:mod:`.manifest`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Optional

from megatron_gatednorm.checkpoint.errors import CheckpointError
from megatron_gatednorm.checkpoint.manifest import check_replaceable, write_manifest
from megatron_gatednorm.user_input import overlap

_LEFTOVER = re.compile(r"\.mgn-(?:tmp|old)-(\d+)-")


def check_outside_inputs(out, inputs: Mapping[str, Optional[object]], out_flag: str = "--out") -> None:
    """Refuse an output folder that is, contains, or is inside one of ``inputs`` (``{flag: path}``;
    None values are skipped): writing it would replace or mix with what is being read."""
    for flag, path in inputs.items():
        how = None if path is None else overlap(out, path)
        if how:
            raise CheckpointError(
                f"{out_flag} {out} {how} the input {flag} {path}: writing it would destroy or mix with what is "
                f"being read; choose an {out_flag} outside {path}"
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(out) -> None:
    """Remove temporary siblings of ``out`` (``.NAME.mgn-tmp-<pid>-*``, ``.NAME.mgn-old-<pid>-*``)
    whose process is no longer alive."""
    out = Path(out)
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{glob_escape(out.name)}.mgn-*"):
        m = _LEFTOVER.search(p.name[len(out.name) + 1:])
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_permissions(folder) -> None:
    """Folders 0777 and files 0666 (0777 if executable) less the umask, under ``folder`` and itself."""
    mask = _umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(folder):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o777 & ~mask)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            executable = os.stat(p).st_mode & 0o111
            os.chmod(p, (0o777 if executable else 0o666) & ~mask)


def check_output_parents(out) -> None:
    """Refuse an output whose nearest existing parent is a file (nothing could be created there)."""
    out = Path(out)
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise CheckpointError(f"{out}: {parent} is a file, not a folder; choose another output")
            return


def _temp_sibling(out: Path) -> Path:
    """A fresh ``.NAME.mgn-tmp-<pid>-*`` folder beside ``out`` (its parents created), after removing
    those that killed runs left (:func:`remove_leftovers`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.mgn-tmp-{os.getpid()}-", dir=out.parent))


@contextlib.contextmanager
def files_into(out, last: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary sibling of folder ``out``; on success move its files into ``out`` (created
    if missing: then the whole folder is renamed), each file replaced whole and ``last`` moved
    last; on error delete it. A killed run leaves no partial file under ``out``, and its temporary
    folder is removed by the next run (:func:`remove_leftovers`)."""
    out = Path(out)
    check_output_parents(out)
    tmp = _temp_sibling(out)
    try:
        yield tmp
        ordinary_permissions(tmp)
        if not out.exists():
            os.replace(tmp, out)
            return
        names = sorted(os.listdir(tmp), key=lambda n: (n == last, n))
        for name in names:
            os.replace(tmp / name, out / name)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_output_dir(out, overwrite: bool = False, kind: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; rename it to ``out`` on success, delete it on error.

    ``out`` may exist only with ``overwrite``, and then only if the project wrote it
    (:func:`~.manifest.check_replaceable`). With ``kind`` the finished folder gets an integrity
    manifest of every file in it."""
    out = Path(out)
    check_output_parents(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise CheckpointError(f"{out}: output folder already exists (pass --overwrite to replace it)")
        check_replaceable(out)
    tmp = _temp_sibling(out)
    try:
        yield tmp
        ordinary_permissions(tmp)
        if kind is not None:
            os.chmod(write_manifest(tmp, kind), 0o666 & ~_umask())
        if out.exists():
            check_replaceable(out)  # still only what the project wrote
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.mgn-old-{os.getpid()}-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
