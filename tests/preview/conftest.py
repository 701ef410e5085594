"""Fixtures of the live-preview tests."""

from __future__ import annotations

import pytest

from preview_helpers import free_tcp_url


@pytest.fixture
def stream_url() -> str:
    """A loopback ZeroMQ endpoint for a test's publisher."""
    return free_tcp_url()
