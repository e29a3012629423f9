"""Atomic file writes without heavy imports (the data pipeline does not load torch)."""
import csv
import io
import os
import pickle
import tempfile
from pathlib import Path

from music.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call `write(fileobj)` on a temporary file beside `path`, fsync, then rename it over `path`.

    A failed or interrupted write leaves any previous file untouched. The new file gets the
    usual permissions (0o666 minus the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError) -> UserError:
    kept = " (the previous file is kept)" if path.exists() else ""
    return UserError(f"cannot write {path}: {exc.strerror or exc}{kept}")


def write_text(path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_csv(path, rows: list[dict]) -> None:
    """Write dict rows as a CSV file, atomically; the columns are every key, in first-seen order."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def read_pickle(path, not_found: str, unreadable: str, detail: bool = True):
    """Unpickle a file; a UserError naming the path when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {not_found}")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:  # pickle raises many kinds on a broken or foreign file
        why = f"{type(exc).__name__}: {exc}" if detail else type(exc).__name__
        raise UserError(f"{path}: {unreadable} ({why})") from None
