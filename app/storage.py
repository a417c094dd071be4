"""Where export files live: a directory on this machine, or an S3-compatible object store.

``EXPORTS_STORAGE_URL`` chooses. Empty, the files are in ``EXPORTS_DIR``, and the web
process and the workers must share that disk. ``s3://bucket`` or ``s3://bucket/prefix``,
they are objects in a store that every process reaches through boto3 and its standard
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), so web and worker need no disk in common.

Either way a file appears whole or not at all: a reader never sees half an export, and
a write that fails leaves nothing a reader could find. Every failure to reach or use
the store is an :class:`OSError`, as a full disk is.
"""
from __future__ import annotations

import io
import logging
import os
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Literal
from urllib.parse import quote, urlsplit

from flask import Flask, Response, current_app, redirect, send_file
from werkzeug.http import dump_options_header

#: What a part of a multipart upload holds (boto3's own default). S3 wants every part but
#: the last to be at least MIN_PART_SIZE; memory holds one part at a time.
PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024

WriteMode = Literal["w", "wb"]
logger = logging.getLogger(__name__)


class StorageError(OSError):
    """The store could not be reached, or refused a request."""


@dataclass(frozen=True)
class StoredFile:
    name: str
    modified: datetime


class ExportStorage(ABC):
    """The files of one app's exports, each known by a plain file name."""

    @abstractmethod
    def open_writer(self, name: str, mode: WriteMode = "w") -> AbstractContextManager[IO]:
        """A file object to write ``name`` into (``"w"``: text, UTF-8; ``"wb"``: bytes).
        The file appears, replacing any of that name, only when the ``with`` block ends
        without an error; after an error nothing of it is left."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def size(self, name: str) -> int:
        """Bytes in ``name``; :class:`FileNotFoundError` if there is no such file."""

    @abstractmethod
    def open_reader(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """``name``'s bytes as a stream; :class:`FileNotFoundError` if there is no such file."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; nothing happens if it is not there."""

    @abstractmethod
    def download(self, name: str, download_name: str, mimetype: str) -> Response:
        """The response that gives the browser ``name`` as an attachment ``download_name``.
        Call it only once the user may have the file: the response hands it over."""

    @abstractmethod
    def list_files(self) -> Iterator[StoredFile]:
        """Every finished file, in no particular order."""

    @abstractmethod
    def discard_unfinished(self, started_before: datetime) -> int:
        """Remove what writers that never finished (their process died) left behind,
        if they started before ``started_before``; how many were removed."""

    @abstractmethod
    def location(self, name: str) -> str:
        """Where ``name`` is, for messages and logs."""


def export_storage(app: Flask | None = None) -> ExportStorage:
    """The storage ``EXPORTS_STORAGE_URL`` names, built once per app (on first use, so a
    prefork worker builds its S3 client in the child that uses it)."""
    app = app or current_app._get_current_object()
    storage = app.extensions.get("export_storage")
    if storage is None:
        storage = app.extensions["export_storage"] = _storage_for(app)
    return storage


def exports_dir(app: Flask | None = None) -> Path:
    """``EXPORTS_DIR``; a relative one is inside the instance folder, so that the web
    process, the worker and ``send_file`` (which resolves relative paths against the
    app's package, not the working directory) all agree where the files are."""
    app = app or current_app
    return Path(app.instance_path) / app.config["EXPORTS_DIR"]


def _storage_for(app: Flask) -> ExportStorage:
    url = app.config.get("EXPORTS_STORAGE_URL") or ""
    if not url:
        return LocalStorage(exports_dir(app))
    parts = urlsplit(url)  # checked by config.exports_storage_url: s3://bucket[/prefix]
    return S3Storage(parts.netloc, parts.path.strip("/"),
                     url_seconds=app.config["EXPORTS_DOWNLOAD_URL_SECONDS"])


def _checked(name: str) -> str:
    """A plain file name: never a path out of the directory or prefix, never a temporary's."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"an export file name must be a plain file name, found {name!r}")
    return name


def attachment_header(download_name: str) -> str:
    """``Content-Disposition: attachment`` for ``download_name`` as Werkzeug's ``send_file``
    writes it: an ASCII ``filename``, plus the UTF-8 ``filename*`` when the name needs it."""
    try:
        download_name.encode("ascii")
    except UnicodeEncodeError:
        simple = unicodedata.normalize("NFKD", download_name).encode("ascii", "ignore").decode("ascii")
        quoted = quote(download_name, safe="!#$&+^`|~")
        return dump_options_header("attachment", {"filename": simple, "filename*": f"UTF-8''{quoted}"})
    return dump_options_header("attachment", {"filename": download_name})


# --- a directory -----------------------------------------------------------------------------


class LocalStorage(ExportStorage):
    """Files in a directory, written under a temporary name (``.NAME.PID.tmp``), synced,
    then renamed."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / _checked(name)

    @contextmanager
    def open_writer(self, name: str, mode: WriteMode = "w") -> Iterator[IO]:
        destination = self.path(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, mode, encoding="utf-8" if mode == "w" else None) as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, destination)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def open_reader(self, name: str) -> IO[bytes]:
        return open(self.path(name), "rb")

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def download(self, name: str, download_name: str, mimetype: str) -> Response:
        return send_file(self.path(name), mimetype=mimetype, as_attachment=True, download_name=download_name,
                         max_age=0)

    def list_files(self) -> Iterator[StoredFile]:
        if not self.directory.is_dir():
            return
        for entry in os.scandir(self.directory):
            if not entry.name.startswith(".") and entry.is_file():
                yield StoredFile(entry.name, datetime.fromtimestamp(entry.stat().st_mtime, timezone.utc))

    def discard_unfinished(self, started_before: datetime) -> int:
        if not self.directory.is_dir():
            return 0
        removed = 0
        for temporary in self.directory.glob(".*.tmp"):
            if temporary.stat().st_mtime < started_before.timestamp():
                temporary.unlink(missing_ok=True)
                removed += 1
        return removed

    def location(self, name: str) -> str:
        return str(self.path(name))


# --- an S3-compatible object store -----------------------------------------------------------


def s3_client(**settings):
    """A boto3 S3 client configured from the environment as boto3 reads it (``AWS_*``;
    ``settings``, such as ``endpoint_url``, go to boto3's ``client()`` and win), with
    timeouts and retries fit for a web request, Signature Version 4 for the presigned
    links, and path-style addressing, which every S3-compatible store serves."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"},
                    signature_version="s3v4", s3={"addressing_style": "path"})
    # A session of its own: boto3's default session is not safe to build clients from
    # in several threads at once (gunicorn's threads on their first download).
    return boto3.session.Session().client("s3", config=config, **settings)


@contextmanager
def _store_errors(action: str, where: str) -> Iterator[None]:
    """Boto's errors as :class:`StorageError`, whose message says what was being done where."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if _not_found(exc):
            raise FileNotFoundError(f"{where} does not exist") from exc
        raise StorageError(f"could not {action} {where}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"could not {action} {where}: {exc}") from exc


def _not_found(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


class S3Storage(ExportStorage):
    """Objects under ``prefix/`` in ``bucket``, written by multipart upload one part at a
    time; downloads are redirects to a presigned URL that lives ``url_seconds``."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None, part_size: int = PART_SIZE,
                 url_seconds: int = 60) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), "
                             f"found {part_size}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client()
        self.part_size = part_size
        self.url_seconds = url_seconds

    def key(self, name: str) -> str:
        return f"{self.prefix}/{_checked(name)}" if self.prefix else _checked(name)

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    @contextmanager
    def open_writer(self, name: str, mode: WriteMode = "w") -> Iterator[IO]:
        upload = MultipartUpload(self.client, self.bucket, self.key(name), self.part_size)
        buffered = io.BufferedWriter(upload)
        stream = io.TextIOWrapper(buffered, encoding="utf-8") if mode == "w" else buffered
        try:
            yield stream
            stream.flush()
            upload.complete()
        finally:
            upload.close()  # aborts unless complete; the wrappers are closed with it, unflushed

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except FileNotFoundError:
            return False
        return True

    def size(self, name: str) -> int:
        with _store_errors("read the size of", self.location(name)):
            return self.client.head_object(Bucket=self.bucket, Key=self.key(name))["ContentLength"]

    @contextmanager
    def open_reader(self, name: str) -> Iterator[IO[bytes]]:
        with _store_errors("read", self.location(name)):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        with body, _store_errors("read", self.location(name)):
            yield body

    def delete(self, name: str) -> None:
        with _store_errors("delete", self.location(name)):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(name))

    def download(self, name: str, download_name: str, mimetype: str) -> Response:
        with _store_errors("sign a download URL for", self.location(name)):
            url = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.key(name),
                        "ResponseContentDisposition": attachment_header(download_name),
                        "ResponseContentType": mimetype},
                ExpiresIn=self.url_seconds,
            )
        response = redirect(url)
        response.headers["Cache-Control"] = "no-store"  # the URL is a credential, if a short-lived one
        return response

    def _under_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def list_files(self) -> Iterator[StoredFile]:
        under = self._under_prefix()
        with _store_errors("list", f"s3://{self.bucket}/{under}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=under)
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(under):]
                    if name and "/" not in name and not name.startswith("."):
                        yield StoredFile(name, item["LastModified"])

    def discard_unfinished(self, started_before: datetime) -> int:
        under, removed = self._under_prefix(), 0
        with _store_errors("abort the unfinished uploads in", f"s3://{self.bucket}/{under}"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                     Prefix=under):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < started_before:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        removed += 1
        return removed


class MultipartUpload(io.RawIOBase):
    """A write-only stream that sends S3 what it is given one part at a time, so memory
    holds at most one part (plus one write) whatever the size of the object.

    :meth:`complete` makes the object; closing without it aborts the upload, so a
    stream dropped half-way (an error, a killed generator, garbage collection) never
    publishes half a file.
    """

    def __init__(self, client, bucket: str, key: str, part_size: int = PART_SIZE) -> None:
        super().__init__()
        self.client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.location = f"s3://{bucket}/{key}"
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._done = True  # nothing to abort until the upload exists
        with _store_errors("start uploading", self.location):
            self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self._done = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError(f"write to {self.location} after its upload ended")
        view = memoryview(data)
        self._buffer += view
        if len(self._buffer) >= self.part_size:
            self._send_part()
        return view.nbytes

    def _send_part(self) -> None:
        number = len(self._parts) + 1
        with _store_errors(f"upload part {number} of", self.location):
            reply = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                            PartNumber=number, Body=self._buffer)
        self._parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        self._buffer.clear()

    def complete(self) -> None:
        """Send the last part (the only one, of any size, for a small or empty file) and
        make the object."""
        if self._buffer or not self._parts:
            self._send_part()
        with _store_errors("finish uploading", self.location):
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                  MultipartUpload={"Parts": self._parts})
        self._done = True

    def close(self) -> None:
        if not self.closed:
            try:
                if not self._done:
                    self._abort()
            finally:
                self._buffer = bytearray()
                super().close()

    def _abort(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._done = True
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except (BotoCoreError, ClientError) as exc:
            # The error that stopped the writer is the one to raise; the export cleanup
            # aborts what is left (ExportStorage.discard_unfinished).
            logger.warning("Could not abort the upload of %s (%s); the export cleanup will",
                           self.location, exc)
