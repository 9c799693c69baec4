"""The CRD tests ask what the API server alone stores and shows: no operator may write statuses meanwhile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import session_operators_stopped


@pytest.fixture(scope="module", autouse=True)
def no_operator() -> Iterator[None]:
    """The session's running operators stopped for the module, started again after it."""
    with session_operators_stopped():
        yield
