"""Writing an output file so that nothing is lost: a temporary file beside the target, synced, then renamed
into place. An existing target is replaced only with `force`, and a failed write leaves it untouched and is one
`OutputError` (a full disk, an I/O error, a bucket refusing the upload: `jaxkd.errors`).

Outputs may be cloud URLs (`gs://`, `jaxkd.io.paths`): the temporary object is written beside the target, then
moved onto it (GCS replaces an object whole: a reader sees the old or the new one), and the checks ask the
bucket instead of the filesystem."""

import os
import secrets
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from jaxkd.errors import UserError, output_error, write_errors
from jaxkd.io.paths import as_path, check_cloud_location, is_cloud_object, is_url


def existing_ancestor(path: Path) -> Path:
    """`path` if it exists, else its nearest parent that does."""
    return path if path.exists() else next(p for p in path.absolute().parents if p.exists())


def check_writable(folder: Path, what: str) -> None:
    """One line if nothing can be created in the existing `folder` (read-only filesystem, no permission): a
    file is created there and removed, which is what the real write will need (root ignores permission bits,
    so asking `os.access` would not do)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(f"{what}: cannot write in {folder} ({error.strerror or error})") from None


def check_output(out, force: bool, directory: bool = False) -> Path:
    """Refuses, before any work is done, an output that holds something to keep or that writing would fail on:
    a directory where a file goes (unless `directory`), an existing output without `force`, a path under a file,
    a place where nothing can be written."""
    out = as_path(out)
    if is_url(out):
        check_cloud_location(out, str(out), probe_folder=out.parent)
    if out.is_dir() and not directory:
        raise UserError(f"{out}: is a directory (give a file name)")
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (pass --force to replace it)")
    if is_url(out):
        return out
    existing = existing_ancestor(out.parent)
    if not existing.is_dir():
        raise UserError(f"{out}: lies under {existing}, which is not a directory")
    check_writable(existing, str(out))
    return out


def check_output_directory(directory, flag: str) -> Path:
    """Refuses an output directory (given as `flag`) that is a file, lies under one or cannot be written in,
    before any work is done, without creating it: a refused command leaves nothing behind."""
    directory = as_path(directory)
    if is_url(directory):
        check_cloud_location(directory, f"{flag} {directory}", probe_folder=directory)
        if is_cloud_object(directory):
            raise UserError(f"{flag} {directory}: exists and is not a directory")
        return directory
    existing = existing_ancestor(directory)
    if not existing.is_dir():
        where = "exists" if existing == directory else f"lies under {existing}, which exists"
        raise UserError(f"{flag} {directory}: {where} and is not a directory")
    check_writable(existing, f"{flag} {directory}")
    return directory


def write_atomically(out, write: Callable[[BinaryIO], None], force: bool, what: str = "the output") -> None:
    """Calls `write(binary_file)` on a temporary file beside `out`, then renames it to `out`."""
    out = as_path(out)
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (pass --force to replace it)")
    if is_url(out):
        _write_object_atomically(out, write, what)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                _write_reporting_os_errors(write, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(staging, out)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
    except OSError as error:
        raise output_error(out, what, error) from None


class _RecordingFile:
    """A binary file that remembers the first OSError its writes raised."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name):
        return getattr(self.file, name)


def _write_reporting_os_errors(write: Callable[[BinaryIO], None], file: BinaryIO) -> None:
    """`write(file)`; a writer that hides a failed write behind its own exception (torch.save's zip writer on a
    full disk: RuntimeError "unexpected pos ...") raises the OSError instead, so that the cause is named."""
    recording = _RecordingFile(file)
    try:
        write(recording)
    except OSError:
        raise
    except Exception:
        if recording.error is None:
            raise
        raise recording.error from None


def _write_object_atomically(out, write: Callable[[BinaryIO], None], what: str) -> None:
    """`write_atomically` in cloud storage: a temporary object beside `out`, moved onto it once complete."""
    staging = out.parent / f".{out.name}.{secrets.token_hex(8)}.tmp"
    try:
        with staging.open("wb") as file:
            _write_reporting_os_errors(write, file)
        staging.replace(out)
    except write_errors() as error:
        raise output_error(out, what, error) from None
    finally:
        try:
            if staging.exists():
                staging.unlink()
        except OSError:
            pass


def write_text_atomically(text: str, out, force: bool, what: str = "the output") -> None:
    write_atomically(out, lambda file: file.write(text.encode()), force, what)
