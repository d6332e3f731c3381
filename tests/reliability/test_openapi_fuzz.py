"""schemathesis against the OpenAPI description over real HTTP.

Every operation gets schema-valid and schema-violating requests. No response
may be a 5xx, and every 4xx must have the documented error body
``{"error": "<Kind>", "detail": "..."}`` (registry/api/errors.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from tests.support.fixtures import LiveRegistry

# Examples per operation and generation mode. With about 50 operations this keeps the
# test near one minute on 2 CPU cores.
EXAMPLES = 6


def check_response(case: Any, response: requests.Response, outcomes: Counter[int]) -> None:
    outcomes[response.status_code] += 1
    label = f"{case.method} {case.formatted_path}"
    assert response.status_code < 500, (label, response.text[:500])
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error", "detail"}, (label, body)
        assert isinstance(body["error"], str) and body["error"], (label, body)
        assert isinstance(body["detail"], str) and body["detail"], (label, body)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_openapi_fuzz_no_5xx(live_registry: LiveRegistry, tiny_base: Path, tiny_lora: Path) -> None:
    live_registry.client.register_base_model("tiny", tiny_base)
    live_registry.client.push("chat", tiny_lora, base_model="tiny")
    schema = schemathesis.openapi.from_dict(live_registry.app.openapi())
    outcomes: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case: Any) -> None:
                try:
                    response = case.call(base_url=live_registry.url, timeout=30)
                except (requests.exceptions.InvalidHeader, UnicodeError, ValueError):
                    reject()  # the HTTP client cannot send this request at all
                check_response(case, response, outcomes)

            try:
                call()
            except Unsatisfiable:
                # An operation without parameters or body has no invalid request to generate.
                assert mode is GenerationMode.NEGATIVE, operation.label

    print(f"schemathesis: {sum(outcomes.values())} requests, statuses {dict(outcomes)}")
    assert sum(outcomes.values()) >= 200
    assert not [status for status in outcomes if status >= 500]
