"""Where results and prompts live: a local folder or a URI (s3://...), written atomically through pyarrow.fs.

Writes go to a hidden temporary name in the same folder and are then renamed (an S3 PUT of a whole object
is atomic anyway), so a reader never sees half a file and a rewrite replaces a file whole. Names starting
with "." or "_" are skipped by pyarrow, pandas and `dualprompt.results` when a results folder is read: run
state (`_ray/`), the sweep's settings (`_sweep.json`), prompts (`_prompts/`) and reports (`_report/`) live
next to the rows without disturbing `pandas.read_parquet(folder)`.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import DualpromptError

# A sweep's settings (its plan: configuration, search bounds, samples requested, final seeds) live next to its
# rows, so a results folder that is copied or committed without `_ray/` keeps them; sweeps before this file
# wrote them into `_ray/`, where they are still read.
SETTINGS_FILE = "_sweep.json"
LEGACY_SETTINGS_FILE = "_ray/sweep.json"


class StorageError(DualpromptError):
    """A storage path cannot be used (not writable, not reachable from a node); one sentence with the fix."""


def one_line(error: BaseException) -> str:
    """An exception's message on one line without a final period (for embedding in a sentence)."""
    return " ".join(str(error).split()).rstrip(".")[:300] or type(error).__name__


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def open_storage(path_or_uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (relative allowed) or a URI such as s3://bucket/x."""
    text = os.fspath(path_or_uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise StorageError(f"Cannot open storage {text!r}: {one_line(error)}.") from None


def saved_settings(fs: pafs.FileSystem, root: str) -> tuple[dict, str] | None:
    """A sweep's saved settings and the path they were read from (`SETTINGS_FILE` next to the rows, else
    `LEGACY_SETTINGS_FILE`), or None where it has none; a file that is not JSON raises ValueError."""
    for name in (SETTINGS_FILE, LEGACY_SETTINGS_FILE):
        path = join(root, name)
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as stream:
                return json.loads(stream.read()), path
    return None


def join(directory: str, *names: str) -> str:
    """`directory/name/...` for a local path or a URI."""
    return "/".join([directory.rstrip("/"), *names])


def write_atomically(write, path_or_uri: str) -> str:
    """Call `write(filesystem, temporary_path)`, then rename the result onto `path_or_uri`; return it."""
    fs, inner = open_storage(path_or_uri)
    folder, name = inner.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(fs, temporary)
        fs.move(temporary, inner)
    except BaseException:
        try:
            fs.delete_file(temporary)
        except OSError:
            pass
        raise
    return path_or_uri


def write_bytes_atomically(data: bytes, path_or_uri: str) -> str:
    """Write `data` as one file, atomically (see `write_atomically`)."""

    def write(fs: pafs.FileSystem, temporary: str) -> None:
        with fs.open_output_stream(temporary) as stream:
            stream.write(data)

    return write_atomically(write, path_or_uri)


def read_bytes(path_or_uri: str) -> bytes:
    fs, inner = open_storage(path_or_uri)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def check_writable(directory_or_uri: str | os.PathLike, flag: str = "--storage-path") -> None:
    """Raise StorageError unless a file can be created (and removed) under `directory_or_uri`."""
    text = os.fspath(directory_or_uri)
    fs, root = open_storage(text)
    probe = f"{root.rstrip('/')}/.write-probe-{uuid.uuid4().hex}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as stream:
            stream.write(b"ok")
        fs.delete_file(probe)
    except Exception as error:  # noqa: BLE001 - any storage failure means the same thing to the user
        raise StorageError(f"Cannot write results to {text!r} ({one_line(error)}); pass a writable {flag}.") from None


def list_files(path_or_uri: str | os.PathLike, suffix: str) -> list[str]:
    """Files directly in a folder ending in `suffix`, hidden and `_` names skipped, sorted (a file: itself)."""
    fs, root = open_storage(path_or_uri)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [root]
    if info.type != pafs.FileType.Directory:
        return []
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.base_name.endswith(suffix)
                  and not e.base_name.startswith((".", "_")))
