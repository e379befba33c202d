"""Safe writes: a reader never sees half a file, a crash never leaves one, and nothing the user did not ask
to replace is overwritten or deleted.

Every writer of the workbench goes through :func:`atomic_write` (one file) or :func:`atomic_dir` (a folder):
an existing target is refused unless ``overwrite``; a folder is only ever replaced when it holds nothing but
what the workbench writes there; targets that are, contain or lie inside a protected path (the model a
workbench was loaded from, the package's own shipped weights) are refused even with ``overwrite``. Files
and folders get the permissions the process umask gives (temporary files are created private).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

PACKAGE_DATA = (Path(__file__).parent / "toy" / "weights", Path(__file__).parent / "configs")
MANIFEST = ".workbench-files.json"  # what atomic_dir wrote into a folder: only those may be replaced
OVERWRITE_HINT = "pass --overwrite (overwrite=True in Python) to replace it, or choose another path"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result what an ordinary open()/mkdir() would."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_not_protected(path: str | os.PathLike, protected: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse a target that is, contains or lies inside a protected path (see ``Workbench.read_paths``)."""
    target = Path(path).expanduser().resolve()
    for p in protected:
        p = Path(p).expanduser().resolve()
        if _overlaps(target, p):
            where = ("is" if target == p else "lies inside" if p in target.parents else "contains")
            raise ValueError(f"refusing to write {str(path)!r}: it {where} {str(p)!r}, which this run reads "
                             f"from (a source model or the workbench's own files); choose a path outside it")


def check_target(path: str | os.PathLike, overwrite: bool, protected: Iterable[str | os.PathLike] = ()) -> Path:
    """The checks every writer makes before any work: not protected, and no existing target unless told."""
    path = Path(path)
    check_not_protected(path, protected)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder; give a file path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; {OVERWRITE_HINT}")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, overwrite: bool = True,
                 protected: Iterable[str | os.PathLike] = ()) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The low-level primitive: user-facing writers pass the user's ``overwrite`` (their default is False)."""
    path = check_target(path, overwrite, protected)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the folder {str(path.parent)!r} for {str(path)!r}: {err.strerror}") from err
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        raise OSError(f"cannot write {str(path)!r}: {err.strerror}") from err
    os.close(fd)
    try:
        write(tmp)
        publish_mode(Path(tmp), is_dir=False)
        if not overwrite and path.exists():  # appeared while we wrote: still never replace it
            raise FileExistsError(f"{str(path)!r} appeared while writing; {OVERWRITE_HINT}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)


def owned_files(folder: Path) -> set[str]:
    """The files an earlier :func:`atomic_dir` wrote into ``folder``, from the manifest it left there."""
    try:
        files = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    return {f for f in files if isinstance(f, str)} | {MANIFEST} if isinstance(files, list) else set()


def check_dir_target(folder: str | os.PathLike, overwrite: bool, protected: Iterable[str | os.PathLike] = (),
                     owned: Collection[str] = ()) -> Path:
    """The checks :func:`atomic_dir` makes, for a caller to make before long work."""
    folder = Path(folder)
    check_not_protected(folder, protected)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{str(folder)!r} exists and is a file, not a folder; choose another path")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{str(folder)!r} exists and is not empty; {OVERWRITE_HINT}")
        allowed = set(owned) | owned_files(folder)
        dirs = {p.as_posix() for a in allowed for p in Path(a).parents if p != Path(".")}
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder).as_posix()
            if rel not in (dirs if f.is_dir() and not f.is_symlink() else allowed):
                raise FileExistsError(f"refusing to replace {str(folder)!r}: it holds {rel!r}, which the workbench "
                                      f"did not write there; move it away or choose another folder")
    return folder


def atomic_dir(folder: str | os.PathLike, fill: Callable[[Path], object], *, overwrite: bool = False,
               owned: Collection[str] = (), protected: Iterable[str | os.PathLike] = ()) -> Path:
    """Build a folder with ``fill(tmp_folder)`` beside ``folder``, then swap it into place.

    The folder gets a manifest (``.workbench-files.json``) of the files written. An existing non-empty
    ``folder`` is replaced only with ``overwrite`` and only when every file in it is one the workbench wrote
    there (its manifest, or ``owned``: relative paths). Anything else in it means the folder is not ours:
    refused, not a byte deleted. The old folder is removed only after the new one is complete.
    """
    folder = check_dir_target(folder, overwrite, protected, owned)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as err:
        raise OSError(f"cannot write the folder {str(folder)!r}: {err.strerror}") from err
    old = None
    try:
        fill(tmp)
        (tmp / MANIFEST).write_text(json.dumps(files_under(tmp), indent=0))
        for f in [tmp, *tmp.rglob("*")]:
            publish_mode(f, f.is_dir())
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / "x")
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and (old / "x").exists() and not folder.exists():
            os.replace(old / "x", folder)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def files_under(folder: Path) -> list[str]:
    """Relative paths of the files below ``folder`` (what a manifest lists)."""
    return sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if not f.is_dir())
