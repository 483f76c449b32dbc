"""The files this package keeps inside a dataset folder, and the cheap fingerprint of the
release files that decides when a copy, a verification or a processed cache is stale."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Names inside a dataset folder that belong to this module, not to the OGB release: processed
# caches ("processed", "processed_<digest>") and dot-names (stamps, folders being written).
_VERIFIED = ".pyg_mup_verified"  # fingerprint of the files that last passed verify_files
_RAW_STAMP = "raw.fingerprint"  # in a processed folder: the raw/ files it was made from
_TRANSFORM_STAMP = "pre_transform.txt"  # in a processed folder: describe_transform() of it
_PROCESSED_FILE = "geometric_data_processed.pt"  # what ogb writes into its processed folder


def _is_release_file(rel: Path) -> bool:
    return not rel.parts[0].startswith(("processed", "."))


def _fingerprint(folder: Path, under: str | None = None) -> str:
    """A digest of the names, sizes and modification times of ``folder``'s release files (all,
    or those under ``under``), without reading them: cheap enough for every load."""
    digest = hashlib.sha256()
    for path in sorted((folder / under if under else folder).rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and _is_release_file(rel):
            stat = path.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _writable(path: Path) -> bool:
    """Whether ``path`` may be written. The mode bits count too: root passes ``os.access`` even
    on a folder without write bits, such as the read-only ``shared/`` copy CI lays out."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
