"""The paths the commands take and write: a local path, or a cloud storage URL (`gs://bucket/prefix`).

A URL becomes an `etils.epath.Path` (for `gs://`, etils goes through fsspec's `gcsfs`; Orbax, TensorStore,
TFDS and tensorboardX reach the same bucket through their own GCS clients), a local path stays a
`pathlib.Path`; both offer the pathlib operations jaxkd uses (exists, is_dir, open, read_text, rename, `/`).
Cloud storage has no directories (a prefix exists once an object lies under it) and no appends or file
locks: the few places that differ ask `is_url`.

`check_cloud_location` turns the mistakes a cloud path can hold (no such bucket, no permission, an endpoint
that does not answer) into one line, before a command does any work; it asks the same client (fsspec's
`gcsfs`) directly, to bound its wait: the client retries failed connections for over a minute.
"""

import os
import secrets
import shutil
from pathlib import Path

from jaxkd.errors import UserError

# How long the check of a cloud path waits for the store to answer (JAXKD_CLOUD_CHECK_TIMEOUT_S overrides it).
CLOUD_CHECK_TIMEOUT_S = 30.0


def is_url(path) -> bool:
    """Whether `path` names cloud storage (`scheme://...`) rather than a local file."""
    return "://" in str(path)


def as_path(path):
    """`path` (a string or path) as a path object: an `epath.Path` for a URL, else a `pathlib.Path` with `~`
    expanded."""
    if is_url(path):
        from etils import epath

        return epath.Path(str(path))
    return Path(path).expanduser()


def absolute(path):
    """`as_path(path)`, made absolute when local (a URL already is)."""
    path = as_path(path)
    return path if is_url(path) else path.absolute()


def remove_tree(path) -> None:
    """Removes the directory `path` (a prefix, in cloud storage) and everything under it, if it exists."""
    path = as_path(path)
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        if path.exists():
            path.rmtree()
    except OSError:
        pass


def resolved(path):
    """`path` as one location however it is written (to compare and to key by): a local path absolute with its
    links resolved, a URL as an `epath.Path` without a trailing '/'."""
    return as_path(str(path).rstrip("/")) if is_url(path) else as_path(path).absolute().resolve()


def bucket_of(path) -> str:
    """`gs://bucket/a/b` -> `gs://bucket`."""
    scheme, rest = str(path).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def check_cloud_location(path, what: str, probe_folder=None) -> None:
    """One line (UserError) if the bucket of the URL `path` does not exist or cannot be reached, or, given a
    `probe_folder`, nothing can be written in it (a small probe object is written and removed, as
    `jaxkd.io.safe_write.check_writable` does on disk)."""
    import fsspec

    bucket = bucket_of(path)
    seconds = float(os.environ.get("JAXKD_CLOUD_CHECK_TIMEOUT_S", CLOUD_CHECK_TIMEOUT_S))
    try:
        filesystem, name = fsspec.core.url_to_fs(bucket)
        exists = filesystem.exists(name, **({"timeout": seconds} if filesystem.async_impl else {}))
    except ImportError:
        raise UserError(f"{what}: {bucket.split('://')[0]}:// paths need the cloud clients: "
                        f"pip install 'jaxkd[cloud]'") from None
    except fsspec.exceptions.FSTimeoutError:
        raise UserError(f"{what}: cannot reach {bucket} (no answer in {seconds:g} s)") from None
    except Exception as error:  # the client's many ways to fail to connect (aiohttp, auth, HTTP errors)
        if isinstance(error, PermissionError) or str(error).startswith("Forbidden"):  # gcsfs: HTTP 403
            raise UserError(f"{what}: no permission to read {bucket} ({_reason(error)})") from None
        raise UserError(f"{what}: cannot reach {bucket} ({_reason(error)})") from None
    if not exists:
        raise UserError(f"{what}: no such bucket {bucket}")
    if probe_folder is not None:
        probe = as_path(probe_folder) / f".jaxkd-write-check-{secrets.token_hex(8)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except Exception as error:
            raise UserError(f"{what}: cannot write in {probe.parent} ({_reason(error)})") from None


def is_cloud_object(url) -> bool:
    """Whether an object is stored under exactly the name `url` (a file, not a prefix that others lie under).
    Asked directly, not as `exists() and not is_dir()`: those are two requests, and an object written and
    removed under the prefix between them (another process's write check) would make a prefix look like a
    file."""
    import fsspec

    filesystem, name = fsspec.core.url_to_fs(str(url))
    return filesystem.isfile(name)


def input_exists(path, what: str) -> bool:
    """Whether the input `path` exists; for a URL, its bucket is checked first (one line if there is none or it
    cannot be reached), so that a missing file and an unreachable store are told apart."""
    if is_url(path):
        check_cloud_location(path, what)
    return as_path(path).exists()
