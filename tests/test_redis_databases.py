"""RedisService hands each stack a logical database of its own, emptied, up to the server's limit."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from devservers.redis_server import start_redis, stop_redis
from tests.support.services import EMBEDDED_DATABASES, RedisService, _die_with_parent
from tests.support.stacks import free_port


def test_the_embedded_server_has_the_databases_the_stacks_take(redis_service):
    assert redis_service.databases == EMBEDDED_DATABASES
    assert redis_service.client().config_get("databases") == {"databases": str(EMBEDDED_DATABASES)}


def test_an_external_server_gives_each_database_once_emptied_then_names_its_limit(monkeypatch):
    directory = Path(tempfile.mkdtemp(prefix="mbdb-", dir="/tmp"))  # short: the socket path must fit
    port = free_port()
    process = start_redis(directory / "redis.sock", directory, port=port, persist=False, databases=3,
                          preexec_fn=_die_with_parent)
    try:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/0")
        service = RedisService(directory)
        assert service.process is None and service.databases == 3  # read with CONFIG GET
        service.client(1).set("left-over", "from an earlier run")
        assert [service.fresh_db(), service.fresh_db(), service.fresh_db()] == [0, 1, 2]
        assert service.client(1).exists("left-over") == 0
        assert service.url_for_db(2) == f"redis://127.0.0.1:{port}/2"
        limit = r"all 3 are handed out; the external REDIS_URL .* has `databases` 3"
        with pytest.raises(RuntimeError, match=limit):
            service.fresh_db()
    finally:
        stop_redis(process)
        shutil.rmtree(directory, ignore_errors=True)
