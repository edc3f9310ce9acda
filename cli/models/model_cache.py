"""A model folder built once into a cache directory: written to a temporary folder, given a
manifest (size and SHA-256 of every file), then renamed into place. A later use checks the
manifest, so a partial or damaged folder is rebuilt rather than served."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger("yaie.model_cache")
MANIFEST = ".yaie-manifest.json"
# Files up to this size are hashed at every use; bigger ones (the weights: hashing 0.5 GB costs
# about 2 s a start) have their size checked then, and their hash only when the folder is built.
HASH_AT_USE_MAX_BYTES = 64 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, recipe: str) -> None:
    """Records every file of folder (size, SHA-256) and the recipe that built it."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(folder)
    }
    manifest = {"recipe": recipe, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def check_folder(folder: Path, recipe: str) -> str | None:
    """None when folder is complete and intact (as its manifest says it was built by recipe),
    else what is wrong with it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        recorded = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST} (a partial or foreign folder)"
    if manifest.get("recipe") != recipe:
        return f"built by {manifest.get('recipe')!r}, not {recipe!r}"
    present = {str(p.relative_to(folder)) for p in _files(folder)}
    if present != set(recorded):
        return f"files differ from the manifest: {sorted(present ^ set(recorded))}"
    for name, entry in recorded.items():
        path = folder / name
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, not {entry['size']}"
        if entry["size"] <= HASH_AT_USE_MAX_BYTES and _sha256(path) != entry["sha256"]:
            return f"{name} does not have the recorded SHA-256"
    return None


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive lock on lock_path: one builder at a time (processes and threads)."""
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_folder(final: Path, recipe: str, build: Callable[[Path], None]) -> Path:
    """final, built by build(empty_temporary_folder) unless it is already there and intact.
    Concurrent callers wait for one build; a failed build leaves nothing behind."""
    if check_folder(final, recipe) is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        problem = check_folder(final, recipe)
        if problem is None:  # another caller built it while we waited
            return final
        if final.exists():
            logger.warning("rebuilding %s: %s", final, problem)
            _remove(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            build(tmp)
            write_manifest(tmp, recipe)
            for path in [tmp, *tmp.rglob("*")]:  # mkdtemp (and some writers) made them private
                path.chmod(0o755 if path.is_dir() else 0o644)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove(folder: Path) -> None:
    """Moves folder aside first, so that no reader sees it half deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
    os.rename(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)
