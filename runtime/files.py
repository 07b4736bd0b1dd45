"""Files written whole or not at all: atomic writes (a hidden temporary sibling `.<name>.<random>.tmp`,
fsynced, then renamed), the text, JSON, pickle and CSV result writers built on them, and `staged_outputs`,
which writes a set of files (a report, a script's partitions) and moves them into place together.

A process killed at any moment leaves either the previous complete file or the new
complete file under the final name, plus at most a hidden `.<name>.*.tmp` sibling (or a hidden
`.staging.*.tmp` folder) that `remove_stale_temporaries` deletes (the trainers do so when resuming).
A write that fails (a full disk) names the file it was writing, not the temporary.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from runtime.errors import UserError

TEMP_SUFFIX = ".tmp"
# Checkpoints were once written through `.<name>.*.partial`; experiment folders may still hold such leftovers.
_OLD_CHECKPOINT_SUFFIX = ".partial"


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp creates 0600; these are ordinary files
        os.replace(temp_name, path)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError) and error.filename in (None, temp_name):
            # The user knows the file by its final name; the temporary is gone.
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    fsync_folder(path.parent)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in `folder` durable (best effort: not every file system supports it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def output_folder(path: str | Path, option: str) -> Path:
    """Create the folder an option names (with its parents) before any work, so that a file in its place
    or a read-only location is reported at once, not after the scoring."""
    path = Path(path)
    blocker = next((part for part in (path, *path.parents) if part.exists() and not part.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{option} {path}: {blocker} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UserError(f"{option} {path}: cannot create the folder (permission denied)") from None
    except OSError as error:
        raise UserError(f"{option} {path}: cannot create the folder ({error.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder is not writable")
    return path


def check_output_place(path: str | Path, option: str, *, folder: bool = True) -> Path:
    """Refuse, before any work, an output place that cannot be written: a file where a folder goes (or a
    folder where a file goes), a file among its parents, or a nearest existing folder that is not writable.
    Creates nothing."""
    path = Path(path)
    kind, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists():
        if path.is_dir() != folder:
            raise UserError(f"{option} {path}: is a {other}; expected a {kind}")
        existing = path if folder else path.parent
    else:
        existing = next(part for part in path.parents if part.exists())
        if not existing.is_dir():
            raise UserError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {existing} is not writable")
    return path


def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy `source` to `target` through a temporary sibling, like every other written file."""
    with open(source, "rb") as reader, atomic_open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the hidden temporary files (and staging folders) that killed writers left anywhere under `folder`."""
    removed = []
    for pattern in (f".*{TEMP_SUFFIX}", f".*{_OLD_CHECKPOINT_SUFFIX}"):
        for path in sorted(Path(folder).rglob(pattern)):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
            elif path.is_dir() and path.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


_STAGING_PREFIX = ".staging."


class StagedOutputs:
    """A set of output files built in hidden staging folders beside their destinations (same file system,
    so that moving them in is a rename), then moved into place together by `commit`.

    Until `commit`, nothing under a final name changes: a failure while computing or writing (a full disk)
    leaves every earlier output as it was. `remove` names earlier outputs that this run replaces with
    nothing (a plot the new report does not have), deleted at commit, so that a reused folder holds only
    this run's files."""

    def __init__(self) -> None:
        self._staging: dict[Path, Path] = {}  # destination folder -> its staging folder
        self._created: list[Path] = []  # folders made for the outputs, removed again if nothing is committed
        self._files: dict[Path, Path] = {}  # final path -> staged path
        self._removed: set[Path] = set()

    def path(self, final: str | Path) -> Path:
        """Where to write the file that becomes `final` at commit."""
        final = Path(final)
        folder = final.parent
        if folder not in self._staging:
            try:
                missing = [part for part in (folder, *folder.parents) if not part.exists()]
                folder.mkdir(parents=True, exist_ok=True)
                self._created += missing  # deepest first
                self._staging[folder] = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, suffix=TEMP_SUFFIX,
                                                              dir=folder))
            except OSError as error:
                raise OSError(error.errno, error.strerror, str(final)) from None
        staged = self._staging[folder] / final.name
        self._files[final] = staged
        self._removed.discard(final)
        return staged

    def write_bytes(self, final: str | Path, data: bytes) -> None:
        self._write(final, data, "wb")

    def write_text(self, final: str | Path, text: str) -> None:
        self._write(final, text, "w")

    def _write(self, final: str | Path, data: str | bytes, mode: str) -> None:
        staged = self.path(final)
        try:
            with open(staged, mode) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(final)) from None

    def remove(self, final: str | Path) -> None:
        """Delete `final` at commit, unless this run writes it."""
        final = Path(final)
        if final not in self._files:
            self._removed.add(final)

    def commit(self) -> None:
        """Move every staged file into place. If a move fails (its error names the final path), the files
        already moved are put back as they were (through hard links kept meanwhile) and the staging removed."""
        mode = 0o666 & ~_umask()
        # (final, a hard link to the file it replaces, or None where there was none): undone if a later move
        # fails, so that the set stays the earlier run's.
        moved: list[tuple[Path, Path | None]] = []
        for final, staged in self._files.items():
            previous: Path | None = staged.parent / f".{final.name}.previous"
            undoable = True
            try:
                os.link(final, previous, follow_symlinks=False)
            except FileNotFoundError:
                previous = None
            except OSError:
                undoable = False  # no hard links on this file system: this one file cannot be put back
            try:
                os.chmod(staged, mode)
                os.replace(staged, final)
            except OSError as error:
                _undo(moved)
                self.discard()
                raise OSError(error.errno, error.strerror, str(final)) from None
            if undoable:
                moved.append((final, previous))
        for final in self._removed:
            final.unlink(missing_ok=True)
        for folder in {*(final.parent for final in self._files), *(final.parent for final in self._removed)}:
            fsync_folder(folder)
        self._created.clear()
        self.discard()

    def discard(self) -> None:
        for staging in self._staging.values():
            shutil.rmtree(staging, ignore_errors=True)
        self._staging.clear()
        for folder in self._created:  # nothing was committed: leave no empty output folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        self._created.clear()


def _undo(moved: list[tuple[Path, Path | None]]) -> None:
    """Put back the files that `StagedOutputs.commit` replaced (best effort: it is already failing)."""
    for final, previous in reversed(moved):
        try:
            if previous is None:
                final.unlink(missing_ok=True)
            else:
                os.replace(previous, final)
        except OSError:
            pass


@contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """`StagedOutputs` committed when the block ends normally and discarded when it raises."""
    outputs = StagedOutputs()
    try:
        yield outputs
    except BaseException:
        outputs.discard()
        raise
    outputs.commit()



def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def json_text(value: Any) -> str:
    """The text of every JSON result file (`write_json`, and those staged in a `StagedOutputs`)."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, value: Any) -> None:
    write_text(path, json_text(value))


def write_pickle(path: str | Path, value: Any) -> None:
    with atomic_open(path, "wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text(path, buffer.getvalue())
