"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis): never a 5xx, never a hang.

A real uvicorn server on 127.0.0.1 (tiny column, one loaded head and refused ones); schemathesis
generates valid and invalid requests for every operation (random multipart bodies, head names,
``top`` values) and sends them over HTTP. The examples per operation are bounded so that the run
stays within ~30 s on two cores.
"""

import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from test_serve import serving, trained  # noqa: E402, F401 - trained is a fixture

from colhead import service  # noqa: E402

FAST = {"precision": "fp32", "device": "cpu"}
MAX_SECONDS = 10  # one request's answer; a hang fails the test instead of stalling it
EXAMPLES = 12  # per operation: 6 operations x 12 requests, ~10 s on two cores


@pytest.fixture(scope="module")
def base_url(trained):  # noqa: F811
    app = service.create_app("tiny", trained["heads"], max_images=8, request_timeout_s=5, **FAST)
    with serving(app) as client:
        yield str(client.base_url)


def test_no_server_error_and_no_hang(base_url):
    api = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embed", "/v1/predict", "/healthz"}
    for op in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=op.as_strategy())
        def fuzz(case):
            t = time.monotonic()
            case.call_and_validate(
                base_url=base_url, checks=[not_a_server_error], timeout=MAX_SECONDS
            )
            assert time.monotonic() - t < MAX_SECONDS, f"{case.method} {case.path} hung"

        fuzz()
