"""The integrity record (``.mgn-manifest.json``) the project writes into every folder it makes.

It lists every file the project wrote there, with its size and sha256, and names the tool,
version and time. It serves two purposes:

* reading (:func:`verify_manifest`): a checkpoint or export whose files changed after they were
  written (a few corrupted bytes, a truncated shard, an edit) is refused, naming the file, instead
  of converting or resuming into garbage; a folder without a manifest (written by Megatron-LM or
  transformers themselves) is read as before;
* replacing (:func:`check_replaceable`): ``--overwrite`` only replaces a folder the project wrote
  and that holds nothing it did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from megatron_gatednorm.checkpoint.errors import CheckpointError, capped_listing

MANIFEST = ".mgn-manifest.json"
TOOL = "megatron-gatednorm"


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> List[str]:
    """Every regular file under ``folder`` (relative POSIX paths), the manifest itself excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return out


def write_manifest(folder, kind: str) -> Path:
    """Record every file under ``folder`` (size + sha256) in ``folder/.mgn-manifest.json``;
    ``kind`` says what the folder is (``"megatron-checkpoint"``, ``"hf-export"``, ...)."""
    from megatron_gatednorm import __version__

    folder = Path(folder)
    files = {rel: dict(size=(folder / rel).stat().st_size, sha256=sha256_of(folder / rel)) for rel in _files(folder)}
    record = dict(tool=TOOL, version=__version__, kind=kind,
                  time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), files=files)
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def read_manifest(folder) -> Optional[dict]:
    """The manifest of ``folder``, or None if it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if record.get("tool") != TOOL or not isinstance(files, dict):
            raise ValueError("not written by megatron-gatednorm")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: unreadable integrity manifest ({e}); pass --no-verify to read the folder without checking it"
        ) from None
    return record


def verify_manifest(folder, used: Iterable[str] = ()) -> bool:
    """Check every file the manifest of ``folder`` lists (present, same size, same sha256) and
    that each file of ``used`` (relative paths the reader is about to read) is listed. Returns
    False (nothing checked) if the folder has no manifest; raises :class:`CheckpointError`
    naming the files otherwise."""
    folder = Path(folder)
    record = read_manifest(folder)
    if record is None:
        return False
    files: Dict[str, dict] = record["files"]
    missing, changed = [], []
    for rel, info in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            missing.append(rel)
        elif path.stat().st_size != info.get("size") or sha256_of(path) != info.get("sha256"):
            changed.append(rel)
    unlisted = sorted(set(used) - set(files))
    problems = []
    if changed:
        problems.append(f"changed since they were written (size or sha256 differs): {capped_listing(changed)}")
    if missing:
        problems.append(f"missing: {capped_listing(missing)}")
    if unlisted:
        problems.append(f"not written with the folder (not in {MANIFEST}): {capped_listing(unlisted)}")
    if problems:
        raise CheckpointError(
            f"{folder}: files do not match {MANIFEST}: " + "; ".join(problems)
            + ": the folder is corrupt or was modified; re-create it, or pass --no-verify to read it anyway"
        )
    return True


def check_replaceable(folder) -> None:
    """Refuse (``CheckpointError``) to replace ``folder`` unless the project wrote it: it has a
    manifest and holds no file the manifest does not list."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; --overwrite replaces only a folder mgn wrote")
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(
            f"{folder}: --overwrite replaces only a folder mgn wrote, and this one has no {MANIFEST}; "
            "choose another --out or remove it yourself"
        )
    record = read_manifest(folder)
    extra = sorted(set(_files(folder)) - set(record["files"]))
    if extra:
        raise CheckpointError(
            f"{folder}: holds files mgn did not write ({capped_listing(extra)}); --overwrite would delete them: "
            "move them away or choose another --out"
        )
