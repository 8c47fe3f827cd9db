"""Fixtures for end-to-end tests against real registries and real clients.

Needs docker-registry (or upstream `registry`), skopeo, htpasswd (apache2-utils)
and openssl. Locally a missing tool skips the tests that need it; with
CI=true it fails them, so a CI image that lost a tool cannot go green by
skipping everything.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    CA,
    Registry,
    SourceImage,
    find_registry_binary,
    isolated_env,
    publish_image,
    start_registry,
)
from tests.support.tokenauth import Signer, TokenRegistry, start_token_registry

E2E_DIR = Path(__file__).resolve().parent

_INSTALL_HINT = "Debian: apt-get install docker-registry skopeo apache2-utils openssl"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here because pyproject.toml may not list the marker yet, and
    # --strict-markers would otherwise reject it.
    config.addinivalue_line(
        "markers", "e2e: end-to-end test against real registries and clients (docker-registry, skopeo)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only ours. `-m "not e2e"`
    # then deselects everything under tests/e2e without per-module pytestmark.
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_tools(*tools: str) -> None:
    """Skip (locally) or fail (CI=true) unless every tool is on PATH.

    "registry" means the distribution registry binary under any of its names.
    """
    missing = []
    for tool in tools:
        found = find_registry_binary() if tool == "registry" else shutil.which(tool)
        if found is None:
            missing.append("docker-registry" if tool == "registry" else tool)
    if not missing:
        return
    message = f"e2e tools not found: {', '.join(missing)} ({_INSTALL_HINT})"
    if _in_ci():
        pytest.fail(f"{message}; CI=true, so end-to-end tests must run", pytrace=False)
    pytest.skip(message)


def fake_password() -> str:
    """A password that is obviously a test value if it ever shows up anywhere."""
    return "test-" + secrets.token_hex(8)


@pytest.fixture
def e2e_env(tmp_path: Path) -> dict[str, str]:
    """An environment with HOME, XDG dirs, TMPDIR and DOCKER_CONFIG inside tmp_path/env."""
    return isolated_env(tmp_path / "env")


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """A throwaway CA shared by the session's TLS registries."""
    require_tools("openssl")
    return CA.create(tmp_path_factory.mktemp("ca"))


class RegistryFactory:
    """Starts registries for one test; `stop_all()` runs at teardown."""

    def __init__(self, workdir: Path, request: pytest.FixtureRequest) -> None:
        self._workdir = workdir
        self._request = request
        self.started: list[Registry] = []

    def __call__(
        self,
        name: str = "registry",
        *,
        tls: bool = False,
        username: str = "ci-user",
        password: str | None = None,
    ) -> Registry:
        """Start a registry; `tls=True` serves a cert from the session `ca`."""
        taken = {r.name for r in self.started}
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}-{n}"
        # Asked for lazily so plain-HTTP tests do not need openssl.
        ca_: CA | None = self._request.getfixturevalue("ca") if tls else None
        registry = start_registry(
            self._workdir,
            username=username,
            password=password if password is not None else fake_password(),
            tls=ca_,
            name=unique,
        )
        self.started.append(registry)
        return registry

    def stop_all(self) -> None:
        for registry in self.started:
            registry.stop()


@pytest.fixture
def registry_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RegistryFactory]:
    """`registry_factory(name="registry", *, tls=False, username="ci-user", password=None) -> Registry`."""
    require_tools("registry", "htpasswd")
    factory = RegistryFactory(tmp_path / "registries", request)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def source_image(registry_factory: RegistryFactory, e2e_env: dict[str, str], tmp_path: Path) -> SourceImage:
    """`app:1.0` pushed with skopeo to a fresh plain-HTTP "local" registry."""
    require_tools("skopeo")
    registry = registry_factory("local")
    return publish_image(registry, tmp_path / "source", e2e_env, repository="app", tag="1.0")


@pytest.fixture(scope="session")
def token_signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """One RSA token-signing key for the session's token registries (keygen is the slow part)."""
    require_tools("openssl")
    return Signer.create(tmp_path_factory.mktemp("token-signer"))


class TokenRegistryFactory:
    """Starts Harbor-like token registries (tests/support/tokenauth.py) for one test."""

    def __init__(self, workdir: Path, request: pytest.FixtureRequest, signer: Signer) -> None:
        self._workdir = workdir
        self._request = request
        self._signer = signer
        self.started: list[TokenRegistry] = []

    def __call__(self, name: str = "harbor", *, tls: bool = False) -> TokenRegistry:
        ca_: CA | None = self._request.getfixturevalue("ca") if tls else None
        registry = start_token_registry(
            self._workdir, tls=ca_, name=f"{name}-{len(self.started) + 1}", signer=self._signer
        )
        self.started.append(registry)
        return registry

    def stop_all(self) -> None:
        for registry in self.started:
            registry.stop()


@pytest.fixture
def token_registry_factory(
    tmp_path: Path, request: pytest.FixtureRequest, token_signer: Signer
) -> Iterator[TokenRegistryFactory]:
    """`token_registry_factory(name="harbor", *, tls=False) -> TokenRegistry` (accounts: tokenauth.default_accounts)."""
    require_tools("registry", "openssl")
    factory = TokenRegistryFactory(tmp_path / "token-registries", request, token_signer)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def token_registry(token_registry_factory: TokenRegistryFactory) -> TokenRegistry:
    """A plain-HTTP Harbor-like token registry (realm on localhost)."""
    return token_registry_factory()
