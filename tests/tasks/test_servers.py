"""Preflight: a server that is down or refuses our credentials is named within seconds."""

import time

import pytest

from tasks.servers import ServerUnavailable, check_mlflow, check_prefect, check_redis
from tests.helpers.servers import free_port, redis_server


def _refused_fast(call, *args) -> str:
    start = time.monotonic()
    with pytest.raises(ServerUnavailable) as caught:
        call(*args)
    assert time.monotonic() - start < 10
    return str(caught.value)


def test_dead_servers_are_named_without_their_credentials():
    port = free_port()
    said = _refused_fast(check_mlflow, f"http://ops:s3cret@127.0.0.1:{port}", "exp")
    assert said.startswith(f"MLflow tracking server at http://127.0.0.1:{port} did not answer")
    said = _refused_fast(check_redis, f"redis://:s3cret@127.0.0.1:{port}/0")
    assert said.startswith(f"Redis at redis://127.0.0.1:{port}/0 did not answer")
    said = _refused_fast(check_prefect, f"http://127.0.0.1:{port}/api")
    assert said.startswith(f"Prefect API at http://127.0.0.1:{port}/api did not answer")
    assert "s3cret" not in said


def test_redis_with_a_wrong_password_is_refused_and_the_right_one_passes(tmp_path):
    with redis_server(tmp_path / "redis", "127.0.0.1", "right-one") as url:
        check_redis(url)
        said = _refused_fast(check_redis, url.replace("right-one", "wrong-one"))
        assert "refused the credentials" in said and "wrong-one" not in said


def test_a_running_prefect_server_passes(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    check_prefect(PREFECT_API_URL.value())
