"""Shared test setup: no proxy or SSL variables leak in from the environment; probes are scoped
to loopback."""

from __future__ import annotations

import pytest
from postgres import postgres_server, postgres_url  # noqa: F401 - fixtures for every test

from blockwatch.probes.scope import Scope

_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
        "all_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    # the user's data directory (XDG) goes to a temporary place in every test
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def loopback_scope() -> Scope:
    return Scope.loopback()
