"""Where a dataset is loaded from: the root given (or the default one), checked, and copied to a
writable cache when it is read-only (as is the dataset embedded in this package)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pyg_mup.data.files import _fingerprint, _is_release_file, _writable
from pyg_mup.data.tasks import EMBEDDED_DATASET, DatasetError, check_name, folder_name, marker
from pyg_mup.data.verify import _check_folder, _download_help

EMBEDDED_ROOT = Path(__file__).resolve().parents[1] / "datasets"


def default_cache_dir() -> Path:
    """Where read-only roots are copied: ``$PYG_MUP_CACHE`` or ``~/.cache/pyg_mup``."""
    env = os.environ.get("PYG_MUP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "pyg_mup"


def default_root() -> Path:
    """Where ``ogb`` downloads datasets when no ``--root`` is given."""
    return default_cache_dir() / "ogb"


def _skip_caches(folder: Path) -> Callable[[str, list[str]], list[str]]:
    """A ``shutil.copytree`` ``ignore`` that leaves out ``folder``'s processed caches and
    dot-names (only at its top level, where this module puts them)."""

    def ignore(where: str, names: list[str]) -> list[str]:
        top = Path(where) == folder
        return [name for name in names if top and not _is_release_file(Path(name))]

    return ignore


def _loadable_in_place(folder: Path) -> bool:
    processed = folder / "processed"
    return _writable(folder) and (not processed.exists() or _writable(processed))


def _cached_copy(folder: Path, cache_dir: Path) -> Path:
    """Copy ``folder``'s release files (no processed caches) into the cache once; return the
    cache's root.

    A copy is keyed by ``folder``'s absolute path and by the fingerprint of its files, and once
    in place it is never replaced: ``ogb`` processes inside it, so replacing a copy would pull
    files from under a concurrent loader (a DDP rank, a sweep worker). Each loader that finds no
    copy writes one into a temporary folder and renames it into place; the first rename wins and
    the others discard theirs. When ``folder``'s files change, the new fingerprint gets a new
    copy and the older copies are removed.
    """
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DatasetError(f"cache_dir {cache_dir} is a file, not a folder")
    copies = cache_dir / "ogb" / hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    root = copies / _fingerprint(folder)[:16]
    target = root / folder.name
    if not target.is_dir():
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        except OSError as error:
            raise DatasetError(
                f"cannot write the dataset cache in cache_dir {cache_dir} ({error.strerror}); "
                "pass a writable cache_dir or set $PYG_MUP_CACHE"
            ) from error
        try:
            shutil.copytree(folder, tmp / folder.name, ignore=_skip_caches(folder))
            for path in (tmp / folder.name).rglob("*"):
                path.chmod(path.stat().st_mode | 0o200)
            with contextlib.suppress(OSError):  # a concurrent loader's copy landed first
                os.replace(tmp / folder.name, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise DatasetError(f"could not install the dataset copy {target}")
    for stale in copies.iterdir():
        if stale == root:
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return root


def _dataset_folder(name: str, root: Path) -> Path:
    """The folder ``ogb`` uses under ``root``: ``<name with _>_pyg`` if present, as ``ogb``."""
    pyg = root / f"{folder_name(name)}_pyg"
    return pyg if pyg.exists() else root / folder_name(name)


def _resolve(name: str, root: str | Path | None, cache_dir: str | Path | None) -> tuple[Path, Path]:
    """(the writable root ``ogb`` loads from, the root the dataset was found in)."""
    check_name(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if root is None:
        if name == EMBEDDED_DATASET:
            return _cached_copy(EMBEDDED_ROOT / folder_name(name), cache), EMBEDDED_ROOT
        root = default_root()
        root.mkdir(parents=True, exist_ok=True)
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetError(
            f"dataset root {root} is a file; pass the folder that holds {folder_name(name)}/"
        )
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist; {_download_help(name, root)}")
    if root.name == folder_name(name) and (root / marker(name)).is_file():
        root = root.parent  # the dataset folder itself was given; ogb wants the one above
    folder = _dataset_folder(name, root)
    if folder.exists():
        _check_folder(name, folder, root)
        writable = root if _loadable_in_place(folder) else _cached_copy(folder, cache)
        return writable, root
    if not _writable(root):
        raise DatasetError(
            f"{name} is not in {root}, which is read-only; {_download_help(name, root)}"
        )
    return root, root


def resolve_root(name: str, root: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """The writable root ``ogb`` should load ``name`` from, after checking what is there.

    - ``root=None`` and the embedded dataset: a cache copy of the package's copy.
    - ``root=None`` otherwise: :func:`default_root`, where ``ogb`` downloads if needed.
    - a root holding the dataset folder: checked complete; copied to the cache if read-only.
    - a root without it: returned as is, for ``ogb`` to download into (it must be writable).
    """
    return _resolve(name, root, cache_dir)[0]
