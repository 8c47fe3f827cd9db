"""The e2e support code works, and each check it relies on can fail (controls)."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.support import (
    CA,
    RegistryStartError,
    SkopeoError,
    SourceImage,
    build_oci_layout,
    isolated_env,
    skopeo_digest,
    skopeo_push,
    skopeo_raw_manifest,
    start_registry,
    write_authfile,
)
from tests.support.oci import OCI_LAYER_GZIP, OCI_MANIFEST
from tests.support.registry import REGISTRY_BIN_ENV, find_registry_binary

# --------------------------------------------------------------------- registry


def test_plain_registry_rejects_bad_credentials_and_accepts_good(registry_factory: RegistryFactory) -> None:
    registry = registry_factory()
    assert registry.password.startswith("test-")
    assert registry.password not in repr(registry)

    anonymous = registry.request("GET", "/v2/")
    assert anonymous.status == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="authscope-test"'
    assert registry.request("GET", "/v2/", auth=(registry.username, registry.password + "x")).status == 401
    assert registry.request("GET", "/v2/", auth=("someone-else", registry.password)).status == 401
    assert registry.request("GET", "/v2/", auth=registry.credentials).status == 200


def test_harbor_robot_username_is_taken_literally(registry_factory: RegistryFactory) -> None:
    registry = registry_factory(username="robot$release+ci")
    assert registry.request("GET", "/v2/", auth=("robot$release+ci", registry.password)).status == 200
    assert registry.request("GET", "/v2/", auth=("robotrelease ci", registry.password)).status == 401


def _urlopen_status(url: str, context: ssl.SSLContext) -> int:
    # No proxies: a CI runner's HTTPS_PROXY must not intercept 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_tls_registry_is_trusted_with_generated_ca_only(registry_factory: RegistryFactory, ca: CA) -> None:
    registry = registry_factory("remote", tls=True)
    assert registry.tls
    assert registry.ca_file == ca.cert
    assert registry.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(ca.cert))

    # 401 means the TLS handshake, certificate and SAN checks all passed.
    assert _urlopen_status(f"https://{registry.host}/v2/", trusting) == 401
    assert _urlopen_status(f"https://localhost:{registry.port}/v2/", trusting) == 401
    assert registry.request("GET", "/v2/", auth=registry.credentials).status == 200

    # Control: the system trust store does not know our CA.
    with pytest.raises(urllib.error.URLError) as excinfo:
        _urlopen_status(f"https://{registry.host}/v2/", ssl.create_default_context())
    assert isinstance(excinfo.value.reason, ssl.SSLCertVerificationError)


def test_cert_dir_holds_only_the_ca_certificate(ca: CA) -> None:
    # containers/image reads every *.key in a cert dir as a client key.
    assert sorted(p.name for p in ca.cert_dir.iterdir()) == ["ca.crt"]
    assert (ca.cert_dir / "ca.crt").read_bytes() == ca.cert.read_bytes()
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600


def test_stop_reaps_the_process_and_frees_the_port(registry_factory: RegistryFactory) -> None:
    registry = registry_factory()
    pid, port = registry.pid, registry.port
    assert Path(f"/proc/{pid}").exists()

    registry.stop()
    assert registry.process.returncode is not None
    assert not registry.running()
    # Reaped, not a zombie: the /proc entry is gone.
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    registry.stop()  # idempotent


def test_start_failure_reports_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("htpasswd")
    monkeypatch.setenv(REGISTRY_BIN_ENV, "/bin/false")
    with pytest.raises(RegistryStartError, match="exited with status 1 before listening"):
        start_registry(tmp_path, username="ci-user", password="test-not-used")


def test_inherited_registry_variables_do_not_break_the_registry(
    registry_factory: RegistryFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # authscope scopes export REGISTRY_AUTH_FILE; distribution reads every
    # REGISTRY_* variable as a config override.
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    registry = registry_factory()
    assert registry.request("GET", "/v2/", auth=registry.credentials).status == 200

    # Control: the same config with the variable passed through refuses to start.
    binary = find_registry_binary()
    assert binary is not None
    proc = subprocess.run(
        [binary, "serve", str(registry.config_path)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "configuration error" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ OCI + skopeo


def test_pushed_image_has_the_layout_digest(source_image: SourceImage, e2e_env: dict[str, str]) -> None:
    assert source_image.digest.startswith("sha256:")
    assert source_image.ref == f"{source_image.registry.host}/app:1.0"
    assert skopeo_digest(source_image.ref, source_image.authfile, e2e_env) == source_image.digest
    assert source_image.registry.manifest_digest("app", "1.0") == source_image.digest

    manifest = json.loads(skopeo_raw_manifest(source_image.ref, source_image.authfile, e2e_env))
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["mediaType"] for layer in manifest["layers"]] == [OCI_LAYER_GZIP] * 2


def test_push_to_tls_registry_needs_the_ca(
    registry_factory: RegistryFactory, e2e_env: dict[str, str], tmp_path: Path
) -> None:
    registry = registry_factory("remote", tls=True)
    layout = tmp_path / "layout"
    digest = build_oci_layout(layout, tag="1.0", seed=7)
    authfile = write_authfile(tmp_path / "auth.json", {registry.host: registry.credentials})
    ref = registry.ref("release/app", "1.0")

    # Control first: verifying TLS without the CA fails, and nothing lands.
    with pytest.raises(SkopeoError, match="certificate signed by unknown authority"):
        skopeo_push(layout, "1.0", ref, authfile, e2e_env, tls_verify=True)
    assert registry.manifest_digest("release/app", "1.0") is None

    assert skopeo_push(layout, "1.0", ref, authfile, e2e_env, registry.cert_dir) == digest
    assert skopeo_digest(ref, authfile, e2e_env, cert_dir=registry.cert_dir) == digest
    assert registry.manifest_digest("release/app", "1.0") == digest


def test_push_with_wrong_password_is_refused(
    registry_factory: RegistryFactory, e2e_env: dict[str, str], tmp_path: Path
) -> None:
    registry = registry_factory()
    layout = tmp_path / "layout"
    build_oci_layout(layout, tag="1.0")
    authfile = write_authfile(tmp_path / "auth.json", {registry.host: (registry.username, "test-wrong")})
    with pytest.raises(SkopeoError, match=r"authentication required|unauthorized"):
        skopeo_push(layout, "1.0", registry.ref("app", "1.0"), authfile, e2e_env)
    assert registry.manifest_digest("app", "1.0") is None


def test_skopeo_falls_back_to_docker_config_despite_authfile(
    source_image: SourceImage, e2e_env: dict[str, str], tmp_path: Path
) -> None:
    """Why isolated_env exists: --authfile is not the only file skopeo reads."""
    empty = write_authfile(tmp_path / "empty.json", {})
    with pytest.raises(SkopeoError, match=r"authentication required|unauthorized"):
        skopeo_digest(source_image.ref, empty, e2e_env)

    user, password = source_image.registry.credentials
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    docker_config = Path(e2e_env["DOCKER_CONFIG"], "config.json")
    docker_config.write_text(json.dumps({"auths": {source_image.registry.host: {"auth": auth}}}))
    assert skopeo_digest(source_image.ref, empty, e2e_env) == source_image.digest


# ------------------------------------------------------------------ pure helpers


def test_build_oci_layout_is_reproducible(tmp_path: Path) -> None:
    first = build_oci_layout(tmp_path / "a", seed=1)
    assert build_oci_layout(tmp_path / "b", seed=1) == first
    assert build_oci_layout(tmp_path / "c", seed=2) != first
    assert build_oci_layout(tmp_path / "d", layers=[b"one", b"two", b"three"]) != first

    layout = tmp_path / "a"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == first
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "latest"


def test_build_oci_layout_total_size_and_multiple_tags(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    big = build_oci_layout(layout, total_size=300_000, layer_count=3, tag="big")
    small = build_oci_layout(layout, tag="small")
    index = json.loads((layout / "index.json").read_text())
    assert {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]} == {
        "big": big,
        "small": small,
    }
    manifest = json.loads((layout / "blobs" / "sha256" / big.split(":", 1)[1]).read_bytes())
    compressed = sum(layer["size"] for layer in manifest["layers"])
    # Seeded random payloads do not compress: the image is about total_size.
    assert 300_000 <= compressed <= 300_000 + 3 * 2048


def test_isolated_env_keeps_everything_inside_root(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "REGISTRY_AUTH_FILE": "/run/user/0/containers/auth.json",
        "DOCKER_AUTH_CONFIG": '{"auths": {}}',
        "CI_JOB_TOKEN": "not-a-real-token",
        "AUTHSCOPE_SCOPE_DIR": "/dev/shm",
        "CI": "true",
    }
    env = isolated_env(tmp_path / "iso", base)
    root = (tmp_path / "iso").resolve()
    for key in ("HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_CACHE_HOME", "TMPDIR"):
        path = Path(env[key])
        assert root in path.parents, key
        assert path.is_dir(), key
    assert Path(env["DOCKER_CONFIG"]) == root / "docker"
    assert stat.S_IMODE(Path(env["XDG_RUNTIME_DIR"]).stat().st_mode) == 0o700
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["CI"] == "true"
    for key in ("REGISTRY_AUTH_FILE", "DOCKER_AUTH_CONFIG", "CI_JOB_TOKEN", "AUTHSCOPE_SCOPE_DIR"):
        assert key not in env
    assert not Path(env["DOCKER_CONFIG"], "config.json").exists()
    assert Path(env["DOCKER_CONFIG"]) != Path(env["HOME"], ".docker")
