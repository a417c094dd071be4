"""app/storage.py: both export storages, a directory and an S3-compatible store (moto's real
server process on 127.0.0.1), held to the same promises: a file appears whole or not at
all, and a failed write leaves nothing behind."""
from __future__ import annotations

import json
import os
import time
import tracemalloc
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from app.models import utcnow
from app.storage import (
    MIN_PART_SIZE,
    ExportStorage,
    LocalStorage,
    MultipartUpload,
    S3Storage,
    StorageError,
    export_storage,
    exports_dir,
    s3_client,
)
from tests.support.stacks import free_port

#: Every kind of character a post may hold, and one of each UTF-8 length.
TEXT = '{"posts": [{"body": "é 日本 🎉 \\u2028 </script> \\"quoted\\""}]}\n'


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> ExportStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "exports")
    server = request.getfixturevalue("s3_server")
    return S3Storage(server.new_bucket(), "exports", client=server.client(), part_size=MIN_PART_SIZE)


@pytest.fixture
def s3_storage(s3_server) -> S3Storage:
    return S3Storage(s3_server.new_bucket(), "exports", client=s3_server.client(), part_size=MIN_PART_SIZE)


def read_back(storage: ExportStorage, name: str) -> bytes:
    with storage.open_reader(name) as stream:
        return stream.read()


def unfinished(storage: ExportStorage) -> list[str]:
    """What a writer that has not finished leaves in the store: temporary files, or
    multipart uploads."""
    if isinstance(storage, LocalStorage):
        return sorted(p.name for p in storage.directory.glob(".*")) if storage.directory.is_dir() else []
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    return sorted(upload["Key"] for upload in uploads)


# --- writing -----------------------------------------------------------------------------------


def test_text_written_reads_back_byte_for_byte(storage):
    with storage.open_writer("posts-1.json") as out:
        out.write(TEXT)
    assert read_back(storage, "posts-1.json") == TEXT.encode("utf-8")
    assert storage.size("posts-1.json") == len(TEXT.encode("utf-8"))


def test_bytes_written_read_back_byte_for_byte(storage):
    data = bytes(range(256)) * 3
    with storage.open_writer("posts-2.json", "wb") as out:
        out.write(data)
    assert read_back(storage, "posts-2.json") == data


def test_an_empty_file_is_a_file(storage):
    with storage.open_writer("posts-empty.json"):
        pass
    assert storage.exists("posts-empty.json") and storage.size("posts-empty.json") == 0
    assert read_back(storage, "posts-empty.json") == b""


def test_nothing_is_visible_until_the_writer_closes(storage):
    with storage.open_writer("posts-3.json") as out:
        out.write(TEXT)
        out.flush()
        assert not storage.exists("posts-3.json")
        assert [f.name for f in storage.list_files()] == []
    assert storage.exists("posts-3.json")
    assert [f.name for f in storage.list_files()] == ["posts-3.json"]
    assert unfinished(storage) == []


def test_an_error_inside_the_writer_leaves_nothing(storage):
    with pytest.raises(RuntimeError, match="stopped midway"):
        with storage.open_writer("posts-4.json") as out:
            out.write(TEXT * 1000)
            out.flush()
            raise RuntimeError("stopped midway")
    assert not storage.exists("posts-4.json")
    assert list(storage.list_files()) == []
    assert unfinished(storage) == []  # no temporary file, no incomplete multipart upload


def test_a_failed_rewrite_keeps_the_file_that_was_there(storage):
    with storage.open_writer("posts-5.json") as out:
        out.write("first")
    with pytest.raises(RuntimeError):
        with storage.open_writer("posts-5.json") as out:
            out.write("second")
            raise RuntimeError("stopped")
    assert read_back(storage, "posts-5.json") == b"first"
    with storage.open_writer("posts-5.json") as out:
        out.write("third")
    assert read_back(storage, "posts-5.json") == b"third"


def test_size_exists_and_delete(storage):
    with storage.open_writer("posts-6.json") as out:
        out.write("12345")
    assert storage.exists("posts-6.json") and storage.size("posts-6.json") == 5
    storage.delete("posts-6.json")
    assert not storage.exists("posts-6.json")
    storage.delete("posts-6.json")  # already gone: nothing happens
    with pytest.raises(FileNotFoundError):
        storage.size("posts-6.json")
    with pytest.raises(FileNotFoundError):
        read_back(storage, "posts-6.json")


@pytest.mark.parametrize("name", ["", "../posts.json", "a/posts.json", ".posts.json.1.tmp", "a\\b"])
def test_a_name_is_a_plain_file_name(storage, name):
    with pytest.raises(ValueError, match="plain file name"):
        storage.exists(name)


def test_list_files_gives_each_finished_file_with_its_time(storage):
    before = utcnow() - timedelta(seconds=5)
    for name in ("posts-a.json", "posts-b.json"):
        with storage.open_writer(name) as out:
            out.write(name)
    listed = {f.name: f.modified for f in storage.list_files()}
    assert sorted(listed) == ["posts-a.json", "posts-b.json"]
    assert all(before <= modified <= utcnow() + timedelta(seconds=5) for modified in listed.values())


# --- S3: parts, memory, aborts ----------------------------------------------------------------


def test_a_large_file_goes_up_in_parts_of_at_least_the_part_size(s3_storage):
    line = "é" * 1023 + "\n"  # 2 KiB
    lines = int(2.5 * MIN_PART_SIZE) // len(line.encode())
    with s3_storage.open_writer("posts-big.json") as out:
        for _ in range(lines):
            out.write(line)
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key=s3_storage.key("posts-big.json"))
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 MiB, 5 MiB, the rest
    assert head["ContentLength"] == lines * len(line.encode())
    with s3_storage.open_reader("posts-big.json") as stream:
        assert stream.read().decode("utf-8") == line * lines


def test_memory_holds_one_part_whatever_the_size(s3_storage):
    chunk = "x" * 65536
    with s3_storage.open_writer("posts-warm.json") as out:  # boto3's models and connections, loaded once
        out.write(chunk)
    tracemalloc.start()
    try:
        with s3_storage.open_writer("posts-flat.json") as out:
            for _ in range(5 * MIN_PART_SIZE // len(chunk)):
                out.write(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s3_storage.size("posts-flat.json") == 5 * MIN_PART_SIZE
    assert peak < 1.5 * MIN_PART_SIZE, peak  # one part in memory, never a second copy or the file


def test_an_upload_closed_without_completing_is_aborted(s3_storage):
    """A writer dropped half-way (garbage collected, say) never publishes half a file."""
    key = s3_storage.key("posts-7.json")
    upload = MultipartUpload(s3_storage.client, s3_storage.bucket, key, MIN_PART_SIZE)
    upload.write(b"x" * (MIN_PART_SIZE + 1))  # one part already sent
    assert unfinished(s3_storage) == ["exports/posts-7.json"]
    upload.close()
    assert unfinished(s3_storage) == [] and not s3_storage.exists("posts-7.json")
    with pytest.raises(ValueError):
        upload.write(b"more")


def test_a_store_that_cannot_be_reached_is_an_os_error(s3_server):
    client = s3_client(endpoint_url=f"http://127.0.0.1:{free_port()}", aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")
    storage = S3Storage("nowhere", client=client)
    with pytest.raises(StorageError, match="s3://nowhere/posts-8.json"):
        storage.exists("posts-8.json")
    with pytest.raises(OSError, match="could not start uploading s3://nowhere/posts-8.json"):
        with storage.open_writer("posts-8.json"):
            pass


def test_the_part_size_is_at_least_s3s_minimum(s3_server):
    with pytest.raises(ValueError, match="part_size"):
        S3Storage("a-bucket", client=s3_server.client(), part_size=MIN_PART_SIZE - 1)


# --- what the cleanup removes -------------------------------------------------------------------


def test_unfinished_local_writes_are_removed_after_the_cutoff(tmp_path):
    storage = LocalStorage(tmp_path)
    old, new = tmp_path / ".posts-old.json.1.tmp", tmp_path / ".posts-new.json.2.tmp"
    old.write_text("{")
    new.write_text("{")
    day_ago = time.time() - 24 * 3600 - 60
    os.utime(old, (day_ago, day_ago))
    assert storage.discard_unfinished(utcnow() - timedelta(hours=24)) == 1
    assert not old.exists() and new.exists()
    assert list(storage.list_files()) == []  # a temporary file is never listed as finished


def test_unfinished_uploads_are_aborted_after_the_cutoff(s3_storage):
    client, bucket = s3_storage.client, s3_storage.bucket
    client.create_multipart_upload(Bucket=bucket, Key=s3_storage.key("posts-9.json"))
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/posts-9.json")  # not this storage's
    # moto dates every upload 2010-11-10: a cutoff before then keeps it, one after removes it.
    assert s3_storage.discard_unfinished(datetime(2001, 1, 1, tzinfo=timezone.utc)) == 0
    assert unfinished(s3_storage) == ["elsewhere/posts-9.json", "exports/posts-9.json"]
    assert s3_storage.discard_unfinished(utcnow() - timedelta(hours=24)) == 1
    assert unfinished(s3_storage) == ["elsewhere/posts-9.json"]


def test_s3_lists_only_its_prefix(s3_storage):
    s3_storage.client.put_object(Bucket=s3_storage.bucket, Key="elsewhere.json", Body=b"{}")
    s3_storage.client.put_object(Bucket=s3_storage.bucket, Key="exports/deeper/posts-x.json", Body=b"{}")
    with s3_storage.open_writer("posts-10.json") as out:
        out.write("{}")
    assert [f.name for f in s3_storage.list_files()] == ["posts-10.json"]


# --- downloads --------------------------------------------------------------------------------


def test_a_local_download_sends_the_file_as_an_attachment(app, tmp_path):
    storage = LocalStorage(tmp_path)
    with storage.open_writer("posts-11.json") as out:
        out.write(TEXT)
    with app.test_request_context("/exports/x"):
        response = storage.download("posts-11.json", "ann-posts.json", "application/json")
        response.direct_passthrough = False
        assert response.status_code == 200 and response.get_data() == TEXT.encode()
    assert response.headers["Content-Disposition"] == "attachment; filename=ann-posts.json"
    assert response.mimetype == "application/json"


@pytest.mark.parametrize(("download_name", "disposition"), [
    ("ann-posts.json", "attachment; filename=ann-posts.json"),
    ("анна-posts.json",
     "attachment; filename=-posts.json; filename*=UTF-8''%D0%B0%D0%BD%D0%BD%D0%B0-posts.json"),
])
def test_an_s3_download_is_a_redirect_to_a_short_lived_link_that_gives_the_bytes(
        app, s3_storage, download_name, disposition):
    with s3_storage.open_writer("posts-12.json") as out:
        out.write(TEXT)
    with app.test_request_context("/exports/x"):
        response = s3_storage.download("posts-12.json", download_name, "application/json")
    assert response.status_code == 302 and response.headers["Cache-Control"] == "no-store"
    link = response.headers["Location"]
    endpoint = s3_storage.client.meta.endpoint_url
    assert link.startswith(f"{endpoint}/{s3_storage.bucket}/exports/posts-12.json?")
    assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["60"]

    with urllib.request.urlopen(link, timeout=10) as fetched:
        assert fetched.read() == TEXT.encode("utf-8")
        assert fetched.headers["Content-Disposition"] == disposition
        assert fetched.headers["Content-Type"] == "application/json"


# --- which storage an app uses ----------------------------------------------------------------


def test_an_app_without_a_storage_url_keeps_exports_in_exports_dir(app):
    with app.app_context():
        storage = export_storage()
        assert isinstance(storage, LocalStorage) and storage.directory == exports_dir()
        assert export_storage() is storage  # built once per app


def test_an_s3_storage_url_reaches_the_store_through_boto3s_own_variables(make_app, s3_server, monkeypatch):
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    app = make_app(EXPORTS_STORAGE_URL=f"s3://{bucket}/some/prefix", EXPORTS_DOWNLOAD_URL_SECONDS="30")
    with app.app_context():
        storage = export_storage()
        assert isinstance(storage, S3Storage)
        assert (storage.bucket, storage.prefix, storage.url_seconds) == (bucket, "some/prefix", 30)
        with storage.open_writer("posts-13.json") as out:
            json.dump({"posts": []}, out)
    body = s3_server.client().get_object(Bucket=bucket, Key="some/prefix/posts-13.json")["Body"].read()
    assert json.loads(body) == {"posts": []}


def test_an_unreachable_store_is_503_with_a_reason_for_downloads_and_status(make_app, monkeypatch):
    """The store is down: the download and the progress poll say so, never a 500."""
    import sqlalchemy as sa

    from app.extensions import db
    from app.models import Task, TaskState, User
    from tests.conftest import AuthActions

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    app = make_app(EXPORTS_STORAGE_URL="s3://unreachable-bucket/exports")
    auth = AuthActions(app.test_client())
    auth.signup("sam")
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "sam"))
        db.session.add(Task(id="t-down", name="export_posts", description="Exporting posts...", user_id=user.id,
                            state=TaskState.SUCCESS, progress=100, finished=utcnow(),
                            result_location="posts-t-down.json"))
        db.session.commit()
    download = auth.get("/exports/t-down")
    assert download.status_code == 503 and "cannot be reached just now" in download.get_data(as_text=True)
    status = auth.get("/tasks/t-down", headers={"Accept": "application/json"})
    assert status.status_code == 503 and "cannot be reached just now" in status.get_json()["message"]
