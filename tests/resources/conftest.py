"""The CRD tests ask what the API server alone stores and shows: no operator may write statuses meanwhile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import SESSION_OPERATORS


@pytest.fixture(scope="module", autouse=True)
def no_operator() -> Iterator[None]:
    """The session's running operators stopped for the module, started again after it."""
    stopped = [op for op in SESSION_OPERATORS if op.proc is not None and op.proc.alive()]
    for op in stopped:
        op.stop()
    yield
    for op in stopped:
        op.start()
