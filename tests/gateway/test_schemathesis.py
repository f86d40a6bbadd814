"""schemathesis against contract/openapi.yaml and the running gateway: whatever it sends,
no 5xx, and every response (status, content type, headers, body) is one the contract declares.

The suite runs a fixed (derandomized) set of 30 examples per operation, so CI is repeatable;
`SCHEMATHESIS_EXAMPLES=200 pytest tests/gateway/test_schemathesis.py` explores randomly."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from control_room.gateway.auth import mint_token
from control_room.settings import default_contract_file
from tests.helpers import TEST_JWT_SECRET, running_gateway

schema = schemathesis.openapi.from_path(default_contract_file())

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def gateway_url(module_db_url: str) -> Iterator[str]:
    # waits are real (Prefer: wait=N); keep them short so generated requests stay quick
    with running_gateway(module_db_url, pool_max_size=4, claim_wait_max_seconds=0.2) as url:
        yield url


@pytest.fixture(scope="module")
def service_token() -> str:
    return mint_token(TEST_JWT_SECRET, role="service_role", ttl_seconds=3600)


@schema.parametrize()
@settings(max_examples=int(os.environ.get("SCHEMATHESIS_EXAMPLES", "30")), deadline=None,
          derandomize=os.environ.get("SCHEMATHESIS_EXAMPLES") is None,
          suppress_health_check=list(HealthCheck))
def test_the_gateway_keeps_the_contract(case: schemathesis.Case[Any], gateway_url: str,
                                        service_token: str) -> None:
    case.call_and_validate(
        base_url=f"{gateway_url}/rest/v1",
        headers={"Authorization": f"Bearer {service_token}", "Content-Profile": "ops"},
        checks=CHECKS,
    )
