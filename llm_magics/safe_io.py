"""Safe writes and checked reads for the folders llm-magics writes (indexes, adapters, checkpoints, caches).

Two guarantees, for any folder of files:

- **Swapped whole.** `atomic_folder(target)` hands out an empty staging folder
  beside `target`; when the block ends without an error the staging folder
  takes `target`'s place in one step (Linux's `renameat2(RENAME_EXCHANGE)`,
  else two renames that the next save or load repairs). A crash or a kill at
  any moment leaves the old folder or the new one under the name, whole —
  never half of each — and the next `atomic_folder` / `clean_stale` on the
  same target removes what an interrupted save left behind.
- **Checked on load.** `write_manifest(folder)` records every file's size and
  SHA-256 in `llm_magics_checksums.json` (write it last, inside the block);
  `verify_manifest(folder)` returns what no longer matches, as short lines.

    from llm_magics.safe_io import atomic_folder, write_manifest, verify_manifest

    with atomic_folder(path) as staging:
        save_file(tensors, staging / "weights.safetensors")
        write_manifest(staging)
    ...
    problems = verify_manifest(path)          # [] when every listed file is as written
    if problems:
        raise UsageError(f"{path}: {problems[0]}; ...what to do...")

A folder a person shares with the project (an adapter saved into their own
folder beside notes) is saved with `keep_others=True`: files the previous
manifest did not list are carried into the new folder (hard links, no copy),
so only the files the project owns are replaced.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UsageError

CHECKSUMS = "llm_magics_checksums.json"
FORMAT = 1
_SUFFIX = r"[a-z0-9_]{8}"            # tempfile.mkdtemp's random part
STALE_LEGACY_S = 600                 # a staging folder without a pid (older versions) is stale after this


# ---- checksums ------------------------------------------------------------------------------
def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | Path, files: Iterable[str] | None = None) -> dict:
    """Record size and SHA-256 of `files` (paths relative to `folder`; default: every file in it).

    Call it last, when every file is written; the files are flushed to disk on the way."""
    folder = Path(folder)
    if files is None:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and not p.is_symlink() and p.name != CHECKSUMS)
    entries = {}
    for rel in files:
        path = folder / rel
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        entries[str(rel)] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    data = {"format": FORMAT, "files": entries}
    scratch = folder / f".{CHECKSUMS}.tmp"
    with open(scratch, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, folder / CHECKSUMS)
    return data


def has_manifest(folder: str | Path) -> bool:
    return (Path(folder) / CHECKSUMS).is_file()


def listed_files(folder: str | Path) -> set[str] | None:
    """The files `folder`'s manifest lists (None: no readable manifest)."""
    try:
        files = json.loads((Path(folder) / CHECKSUMS).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return set(files) if isinstance(files, dict) else None


def verify_manifest(folder: str | Path, required: bool = False, sizes_only: bool = False) -> list[str]:
    """What in `folder` no longer matches its manifest, one short line each ([] when whole).

    `required`: a folder without a manifest is a problem (else it is taken as written by an older
    version). `sizes_only` skips the checksums (fast; catches truncation, not changed bytes)."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.exists():
        return [f"{CHECKSUMS} is missing"] if required else []
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict) or not isinstance(data.get("format"), int):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return [f"{CHECKSUMS} is not a valid checksum list"]
    if data["format"] > FORMAT:
        return [f"{CHECKSUMS} was written by a newer llm-magics (format {data['format']})"]
    problems = []
    for rel, entry in files.items():
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts:
            problems.append(f"{CHECKSUMS} names a file outside the folder ({rel!r})")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) \
                or not isinstance(entry.get("sha256"), str):
            problems.append(f"{CHECKSUMS} has an invalid entry for {rel}")
            continue
        file = folder / rel
        if not file.is_file():
            problems.append(f"{rel} is missing")
            continue
        size = file.stat().st_size
        if size != entry["size"]:
            problems.append(f"{rel} has {size:,} bytes where {entry['size']:,} were written (truncated or changed)")
        elif not sizes_only and sha256_file(file) != entry["sha256"]:
            problems.append(f"{rel} does not match the checksum recorded when it was written (damaged or changed)")
    return problems


# ---- atomic folder swap -------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_folder(target: str | Path, *, keep_others: bool = False, owned: Iterable[str] = ()) -> Iterator[Path]:
    """An empty staging folder that replaces `target` whole when the block ends without an error.

    On an error (or an interrupt) inside the block `target` is left as it was and the staging
    folder removed. `keep_others`: entries of the old `target` that its manifest does not list,
    that are not named in `owned` and that the new folder does not have are carried over (hard
    links), so a save touches only the files it owns. A `target` that is a file, or a parent that
    cannot be written, is a UsageError naming it."""
    target = Path(target).expanduser()
    if target.is_symlink():
        target = target.resolve()         # the link stays; the folder it points to is replaced
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} is a file, not a folder; pick a folder name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-{os.getpid()}-", dir=target.parent))
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}; pick a folder you can write to") from None
    try:
        yield staging
        if keep_others and target.is_dir():
            _carry_over(target, staging, set(owned))
        _replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def clean_stale(target: str | Path) -> list[Path]:
    """Remove what interrupted saves of `target` left beside it; put an orphaned old folder back.

    A staging folder whose process still runs (another kernel saving now) is left alone."""
    target = Path(target)
    parent = target.parent
    done: list[Path] = []
    if not parent.is_dir():
        return done
    prefix = f".{target.name}."
    current = re.compile(rf"(new|old)-(\d+)-{_SUFFIX}")
    legacy = re.compile(rf"(new|old)-{_SUFFIX}")
    for entry in sorted(parent.iterdir(), key=lambda p: p.name):
        if not entry.name.startswith(prefix) or not entry.is_dir() or entry.is_symlink():
            continue
        rest = entry.name[len(prefix):]
        match, old = current.fullmatch(rest), legacy.fullmatch(rest)
        if match:
            kind, pid = match.group(1), int(match.group(2))
            if pid == os.getpid() or _alive(pid):
                continue
        elif old:
            kind = old.group(1)
            if time.time() - entry.stat().st_mtime < STALE_LEGACY_S:
                continue
        else:
            continue
        if kind == "old" and not target.exists():
            with contextlib.suppress(OSError):
                entry.rename(target)      # killed between the two renames: the old folder comes back
                done.append(entry)
                continue
        shutil.rmtree(entry, ignore_errors=True)
        done.append(entry)
    return done


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    func = _renameat2()
    if func is None:
        return False
    if func(-100, os.fsencode(str(a)), -100, os.fsencode(str(b)), 2) == 0:   # AT_FDCWD, RENAME_EXCHANGE
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):       # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), str(b))


_RENAMEAT2: list = []


def _renameat2():
    if not _RENAMEAT2:
        func = None
        with contextlib.suppress(Exception):
            func = ctypes.CDLL(None, use_errno=True).renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            func.restype = ctypes.c_int
        _RENAMEAT2.append(func)
    return _RENAMEAT2[0]


def _replace(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    if exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)     # now the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _carry_over(old: Path, new: Path, owned: set[str]) -> None:
    listed = listed_files(old) or set()
    owned = owned | {CHECKSUMS} | {Path(rel).parts[0] for rel in listed if Path(rel).parts}
    for entry in old.iterdir():
        if entry.name in owned or os.path.lexists(new / entry.name):
            continue
        _link_tree(entry, new / entry.name)


def _link_tree(source: Path, dest: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), dest)
    elif source.is_dir():
        dest.mkdir()
        for entry in source.iterdir():
            _link_tree(entry, dest / entry.name)
        shutil.copystat(source, dest)
    else:
        try:
            os.link(source, dest)
        except OSError:
            shutil.copy2(source, dest)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
