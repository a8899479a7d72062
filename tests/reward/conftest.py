"""Fixtures for the reward tests: builders of trajectories with chosen tool calls, costs and latencies."""

from __future__ import annotations

import pytest

from tests.helpers import make_task, make_trajectory


@pytest.fixture
def trajectory():
    return make_trajectory


@pytest.fixture
def task():
    return make_task
