"""Where a run's inputs and output live: local paths, or s3:// URIs.

Object storage goes through pyarrow's `S3FileSystem`: credentials, region and endpoint come
from the standard AWS environment variables and config files (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL), never
from the command line, and no message names a secret. Objects are read as streams (Parquet by
ranges), never copied whole to a temporary file first.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import IO, Any

from annotator.errors import AnnotatorError
from annotator.files import (
    DirectoryLock,
    fsync_dir,
    process_alive,
    sha256_file,
    sha256_stream,
    write_atomically,
)

log = logging.getLogger("annotator")

STDOUT = "-"


SCHEMES = ("s3://",)


def is_directory_output(output: str | None) -> bool:
    """`-o DIR/` (a trailing slash) or an existing directory."""
    return (
        bool(output)
        and output != STDOUT
        and (output.endswith(("/", os.sep)) or os.path.isdir(output))
    )


def is_remote(path: Any) -> bool:
    """An object-storage URI (s3://bucket/key), rather than a local path."""
    return str(path).startswith(SCHEMES)


#: the variables that choose the server and the identity (a filesystem is made per setting)
_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_filesystems: dict[tuple[str | None, ...], Any] = {}


def _s3():
    """An S3 filesystem configured by the AWS environment and config files, as every AWS tool
    is; few retries, so that an endpoint that does not answer is reported in seconds."""
    from pyarrow import fs

    setting = tuple(os.environ.get(name) for name in _AWS_SETTINGS)
    if setting not in _filesystems:
        options: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # the AWS SDK's own variables, which pyarrow's constructor does not read
            scheme, _, host = endpoint.rpartition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
        _filesystems[setting] = fs.S3FileSystem(
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=2),
            connect_timeout=5,
            request_timeout=60,
            **options,
        )
    return _filesystems[setting]


def _key(uri: str) -> str:
    """s3://bucket/key -> bucket/key, as pyarrow's filesystem names it."""
    return uri.split("://", 1)[1]


_AWS_ERROR = re.compile(r"AWS Error (\w+) during (\w+) operation(?:: ([^(\n]*))?")

_REASONS = {
    "NO_SUCH_BUCKET": "no such bucket",
    "ACCESS_DENIED": "access denied (check the credentials and the bucket's permissions)",
    "INVALID_ACCESS_KEY_ID": "the access key is not known to the server (check the credentials)",
    "SIGNATURE_DOES_NOT_MATCH": "the secret key does not match (check the credentials)",
    "NETWORK_CONNECTION": "cannot reach the endpoint (check AWS_ENDPOINT_URL or the network)",
}


def storage_error(uri: str, exc: BaseException, doing: str = "") -> AnnotatorError:
    """One line for a failed object-storage call: what, where, and why in plain words."""
    text = str(exc)
    match = _AWS_ERROR.search(text)
    if match:
        reason = _REASONS.get(match[1], f"{match[1].lower().replace('_', ' ')} ({match[2]})")
    else:
        reason = text.splitlines()[0] if text else type(exc).__name__
    return AnnotatorError(f"{doing + ' ' if doing else ''}{uri}: {reason}")


def remote_info(uri: str) -> str | None:
    """ "file", "directory" or None (nothing there) for an object-storage URI; a storage error
    (no such bucket, access denied, endpoint unreachable) is one line."""
    from pyarrow import fs

    path = _key(uri).rstrip("/")
    bucket = path.split("/", 1)[0]
    try:
        info = _s3().get_file_info(path)
        if info.type == fs.FileType.NotFound and _s3().get_file_info(bucket).type != (
            fs.FileType.Directory
        ):
            raise AnnotatorError(f"{uri}: no such bucket {bucket!r}")
    except OSError as exc:
        raise storage_error(uri, exc) from None
    return {fs.FileType.File: "file", fs.FileType.Directory: "directory"}.get(info.type)


def remote_files(uri: str) -> list[tuple[str, str]]:
    """(URI, name relative to `uri`) of every object under a prefix, sorted; names with a part
    that starts with a dot are left out, as in a local folder."""
    from pyarrow import fs

    root = _key(uri).rstrip("/")
    try:
        found = _s3().get_file_info(fs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise storage_error(uri, exc) from None
    scheme = uri.split("://", 1)[0]
    files = []
    for info in found:
        relative = info.path[len(root) + 1 :]
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if info.type == fs.FileType.File and not hidden:
            files.append((f"{scheme}://{info.path}", relative))
    return sorted(files)


def open_remote(uri: str) -> IO[bytes]:
    """A buffered stream of an object (read as it comes, never copied whole first)."""
    return io.BufferedReader(_s3().open_input_stream(_key(uri)))  # type: ignore[arg-type]


def open_remote_file(uri: str) -> Any:
    """A random-access file over an object (Parquet reads its footer, then its row groups)."""
    return _s3().open_input_file(_key(uri))


def remote_fingerprint(uri: str) -> dict[str, Any] | None:
    """Size and modification time of an object: enough to notice it changed before a resume."""
    try:
        info = _s3().get_file_info(_key(uri))
    except OSError:
        return None
    if info.size is None:
        return None
    return {"size": info.size, "mtime_ns": info.mtime_ns}


class LocalFolder:
    """A directory output on this machine (or a shared filesystem): parts are written under a
    pending name, named in the manifest, then renamed onto their own name, so that a listing
    never shows a part the manifest does not name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def make(self) -> None:
        """Created where missing; a failure is one line naming it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AnnotatorError(
                f"{self.path}: cannot create the output directory ({exc.strerror or exc})"
            ) from None

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_text(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def write_text(self, name: str, text: str) -> None:
        """Whole or not at all, and durable before it returns."""
        write_atomically(self.path / name, text, durable=True)

    def delete(self, name: str) -> None:
        (self.path / name).unlink()

    def digest(self, name: str, with_sha256: bool = True) -> tuple[int, str | None] | None:
        """(size, sha256) of a stored file, or None where it is missing."""
        try:
            size = (self.path / name).stat().st_size
            return size, sha256_file(self.path / name) if with_sha256 else None
        except OSError:
            return None

    def writable_path(self, name: str) -> str:
        """Where a writer writes the file to be staged as `name` (it renames its temporary
        file onto it when it closes)."""
        return str(self.path / name)

    def stage(self, name: str) -> None:
        """The closed file is made durable under its (hidden, pending) name."""
        with open(self.path / name, "rb") as handle:
            os.fsync(handle.fileno())
        fsync_dir(self.path)

    def publish(self, staged: str, name: str) -> None:
        """The manifest names the part: renamed from its pending name onto its own."""
        os.replace(self.path / staged, self.path / name)
        fsync_dir(self.path)

    def lock(self, name: str, what: str, wait: float = 0.0) -> Any:
        return DirectoryLock(self.path / name, what).acquire(wait)


def pending_name(name: str) -> str:
    """A staged part's name: hidden (as a local part's temporary file is), and matched by no
    reader's part-*.parquet pattern."""
    return f".{name}.pending"


class RemoteFolder:
    """A directory output in object storage: parts are written to a local scratch folder,
    uploaded under a pending name, named in the manifest, then copied to their own name
    (object stores cannot rename), so that a listing never shows a part the manifest does not
    name."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") + "/"
        self.root = _key(self.uri).rstrip("/")
        self.scratch = tempfile.mkdtemp(prefix="annotator-parts-")
        weakref.finalize(self, shutil.rmtree, self.scratch, True)

    def __str__(self) -> str:
        return self.uri

    def _call(self, doing: str, name: str, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as exc:
            raise storage_error(self.uri + name, exc, doing) from None

    def make(self) -> None:
        """The bucket must exist (it is never created); the prefix needs no creating."""
        remote_info(self.uri)  # no such bucket, no access, no endpoint: one line

    def names(self) -> list[str]:
        from pyarrow import fs

        selector = fs.FileSelector(self.root, allow_not_found=True)
        found = self._call("cannot list", "", _s3().get_file_info, selector)
        return sorted(i.base_name for i in found if i.type == fs.FileType.File)

    def exists(self, name: str) -> bool:
        from pyarrow import fs

        info = self._call("cannot read", name, _s3().get_file_info, f"{self.root}/{name}")
        return info.type == fs.FileType.File

    def read_text(self, name: str) -> str:
        def read() -> bytes:
            with _s3().open_input_stream(f"{self.root}/{name}") as handle:
                return handle.read()

        return self._call("cannot read", name, read).decode("utf-8")

    def write_text(self, name: str, text: str) -> None:
        """One PUT: an object is there whole or not at all."""

        def put() -> None:
            with _s3().open_output_stream(f"{self.root}/{name}") as handle:
                handle.write(text.encode("utf-8"))

        self._call("cannot write", name, put)

    def delete(self, name: str) -> None:
        self._call("cannot delete", name, _s3().delete_file, f"{self.root}/{name}")

    def digest(self, name: str, with_sha256: bool = True) -> tuple[int, str | None] | None:
        """(size, sha256) of a stored object, or None where missing; the sha256 is read back
        by streaming, the size alone comes from the listing."""
        from pyarrow import fs

        key = f"{self.root}/{name}"
        info = self._call("cannot read", name, _s3().get_file_info, key)
        if info.type != fs.FileType.File:
            return None
        if not with_sha256:
            return info.size, None

        def read() -> tuple[int, str]:
            with _s3().open_input_stream(key) as handle:
                return sha256_stream(handle)

        return self._call("cannot read", name, read)

    def writable_path(self, name: str) -> str:
        return os.path.join(self.scratch, name)

    def stage(self, name: str) -> None:
        """The closed file, uploaded under its (hidden, pending) name in one PUT: durable,
        but named by no manifest and matched by no part-* pattern yet."""
        from pyarrow import fs

        local = self.writable_path(name)
        self._call(
            "cannot write",
            name,
            fs.copy_files,
            local,
            f"{self.root}/{name}",
            fs.LocalFileSystem(),
            _s3(),
        )
        os.remove(local)

    def publish(self, staged: str, name: str) -> None:
        """The manifest names the part: copied (on the server) from its pending name to its
        own, the pending object then deleted."""
        pending = f"{self.root}/{staged}"
        self._call("cannot write", name, _s3().copy_file, pending, f"{self.root}/{name}")
        self._call("cannot delete", staged, _s3().delete_file, pending)

    def lock(self, name: str, what: str, wait: float = 0.0) -> Any:
        return Lease(self, name, what).acquire(wait)


LEASE_SECONDS = 60.0  # an object-storage lock lapses this long after its holder's last renewal


class Lease:
    """A lock object in object storage (which has no flock): it names its holder and an expiry
    that a thread of the holder pushes on while the run lives. Another run is refused while the
    lease holds; a lease lapses when its holder dies (at once if the holder was a process of
    this machine that is gone, as after kill -9)."""

    def __init__(self, folder: RemoteFolder, name: str, what: str) -> None:
        self.folder, self.name, self.what = folder, name, what
        self.token = uuid.uuid4().hex
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _record(self) -> str:
        return json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": self.started,
                "expires": time.time() + LEASE_SECONDS,
                "token": self.token,
            }
        )

    def _holder(self) -> dict[str, Any] | None:
        """The live holder's record, or None where there is none or its lease lapsed."""
        if not self.folder.exists(self.name):
            return None
        try:
            held = json.loads(self.folder.read_text(self.name))
        except (ValueError, AnnotatorError):
            return None
        if held.get("expires", 0) < time.time():
            return None
        if held.get("host") == socket.gethostname() and not process_alive(held.get("pid", 0)):
            return None
        return held

    def acquire(self, wait: float = 0.0) -> Lease:
        deadline = time.monotonic() + wait
        while True:
            held = self._holder()
            if held is None or held.get("token") == self.token:
                break
            if time.monotonic() >= deadline:
                raise AnnotatorError(
                    f"{self.what} is in use by another annotate run (pid {held.get('pid')} on "
                    f"{held.get('host')} since {held.get('started')}; lock object "
                    f"{self.folder}{self.name}, its lease lapses {LEASE_SECONDS:.0f} s after the "
                    "holder stops): wait for it to end, or use another output directory"
                )
            time.sleep(0.5)
        self.folder.write_text(self.name, self._record())
        self.thread = threading.Thread(target=self._renew, daemon=True, name="annotator-lease")
        self.thread.start()
        return self

    def _renew(self) -> None:
        while not self.stop.wait(LEASE_SECONDS / 3):
            try:
                self.folder.write_text(self.name, self._record())
            except AnnotatorError as exc:  # the next renewal may get through
                log.warning("%s", exc)

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
            try:
                self.folder.delete(self.name)
            except AnnotatorError:
                pass  # it lapses by itself


def folder_of(output: str) -> LocalFolder | RemoteFolder:
    """The directory output `output` names: a local path or an s3:// prefix."""
    return RemoteFolder(output) if is_remote(output) else LocalFolder(output)


#: a directory output: local (or a shared filesystem) or in object storage
Folder = LocalFolder | RemoteFolder
