"""Fixtures the service tests share (a module may define its own to change one)."""

from __future__ import annotations

import pytest

from deliberate.models import Role


@pytest.fixture
def org(factory):
    return factory.organisation()


@pytest.fixture
def member(factory, org):
    return factory.user(Role.MEMBER, organisation=org)


@pytest.fixture
def facilitator(factory):
    return factory.user(Role.FACILITATOR)
