"""Fixtures the web tests share (a module may define its own to change one)."""

from __future__ import annotations

import pytest

from deliberate.models import Role


@pytest.fixture
def org(factory):
    return factory.organisation("Welcome Network")


@pytest.fixture
def facilitator(factory):
    return factory.user(Role.FACILITATOR, name="Fran Facilitator")


@pytest.fixture
def member(factory, org):
    return factory.user(Role.MEMBER, organisation=org, name="Mo Member")


@pytest.fixture
def as_facilitator(login_as, facilitator):
    return login_as(facilitator)
