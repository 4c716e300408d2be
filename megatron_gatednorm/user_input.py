"""User errors, said in one line: the argument parser's and the checks made where an input is read.

A user error (a missing or unreadable file, a folder given for a file, a number out of range)
is a ``ValueError`` whose message names the input and what to do; ``mgn`` prints it as one line
and exits 2. Anything else is an internal error and keeps its traceback. Nothing here imports
torch or Megatron (``mgn launch`` and ``mgn --help`` stay cheap)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line on stderr (exit 2), not the usage
    followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def at_least(value, minimum, flag: str):
    """``value`` if it is ``>= minimum``, else a ``ValueError`` naming ``flag``."""
    if value is None or value < minimum:
        raise ValueError(f"{flag}={value}: expected a number >= {minimum}")
    return value


def existing_file(path, flag: str) -> Path:
    """``path`` if it is a readable file; else a ``ValueError`` naming ``flag`` and the problem."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; expected a file")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{flag} {path}: permission denied (not readable)")
    return p


def existing_dir(path, flag: str, what: str = "folder") -> Path:
    """``path`` if it is a readable folder; else a ``ValueError`` naming ``flag`` and the problem."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{flag} {path}: no such {what}")
    if not p.is_dir():
        raise ValueError(f"{flag} {path} is a file; expected a {what}")
    if not os.access(p, os.R_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: permission denied (not readable)")
    return p


def read_json(path, what: str):
    """The JSON in ``path``; a ``ValueError`` naming it (and ``what`` it is) when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a folder; expected a JSON file") from None
    except PermissionError:
        raise ValueError(f"{what} {path}: permission denied (not readable)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); it is corrupted or truncated: "
                         "restore or rewrite it") from None


def check_output_file(path, flag: str, inputs: Optional[Mapping[str, object]] = None) -> Path:
    """An output file ``path`` that can be written: not a folder, its parent not a file, and not
    one of ``inputs`` (``{flag: path}``) nor inside one of them."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder; expected a file name")
    _check_parent_writable(p, flag, path)
    _check_not_over_inputs(p, flag, inputs)
    return p


def check_output_dir(path, flag: str, inputs: Optional[Mapping[str, object]] = None, contains: bool = True) -> Path:
    """An output folder ``path`` that can be written: not a file, no file among its parents, and
    neither is, lies inside nor (with ``contains``: a command that replaces the folder) contains
    one of ``inputs`` (``{flag: path}``)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path} is a file; expected a folder")
    _check_parent_writable(p, flag, path)
    _check_not_over_inputs(p, flag, inputs, folder=contains)
    return p


def _check_parent_writable(p: Path, flag: str, path) -> None:
    """The nearest existing parent of ``p`` is a folder this process may write into."""
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {path}: {parent} is not writable")
            break


def overlap(out, path, folder: bool = True) -> Optional[str]:
    """How output ``out`` overlaps input ``path`` — ``"is"``, ``"is inside"`` or (``folder``: the
    output is a folder that would hold the input) ``"contains"`` — or None."""
    out_r, inp = Path(out).resolve(), Path(path).resolve()
    if out_r == inp:
        return "is"
    if inp in out_r.parents:
        return "is inside"
    if folder and out_r in inp.parents:
        return "contains"
    return None


def _check_not_over_inputs(out: Path, flag: str, inputs, folder: bool = False) -> None:
    for in_flag, path in (inputs or {}).items():
        how = None if path is None else overlap(out, path, folder)
        if how:
            raise ValueError(f"{flag} {out} {how} the input {in_flag} {path}: writing there would change what is "
                             f"being read; choose a {flag} outside it")


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling renamed over it: a reader (or a
    killed run) never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.mgn-tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
