"""The authscope image (Containerfile, scripts/build-image) runs a real fan-out.

The image is built once per session with ./scripts/build-image into an
oci-archive, cached under .e2e/image by a hash of its inputs (the checkout's
package, the Containerfile, the build scripts, the tools). Each test makes a
working container of it with buildah and runs, as a CI job would, the job's
script inside (`buildah run --isolation chroot --network host`: `podman run`
is refused on machines where crun cannot set RLIMIT_NPROC, buildah runs the
same image with the same user), with the targets file and the job's
variables in a mounted job directory (the variables in a file the script
sources: never a secret in an argv), against the test registries on the host.

The base is the image user's ~/.docker, read from the container's mounted
root file system. The control runs the reported loop (login, copy, logout,
wipe) in the same image without authscope and shows the base losing the
source's login.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.support import Registry, publish_image, skopeo_digest, write_authfile

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / ".e2e" / "image"
TOOLS = ("crane", "regctl", "cosign", "oras")
UID = 1000  # the image's user (Containerfile)
HOME = "/home/authscope"
WIPE = 'echo \'{"auths":{}}\' > "$DOCKER_CONFIG/config.json"'


def _tool(name: str) -> Path:
    for directory in (REPO_ROOT / ".tools" / "bin", *map(Path, os.environ.get("PATH", "").split(os.pathsep))):
        if (directory / name).is_file():
            return directory / name
    require_tools(name)
    raise AssertionError(name)


def inputs_hash() -> str:
    """What the image is made of: a change to any of it builds a new one."""
    digest = hashlib.sha256()
    files = [REPO_ROOT / "Containerfile", REPO_ROOT / "pyproject.toml", REPO_ROOT / "scripts" / "build-image"]
    files += [REPO_ROOT / "scripts" / "image-install-wheels.py", *sorted((REPO_ROOT / "plugin").rglob("*.py"))]
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    for name in TOOLS:
        stat = _tool(name).stat()
        digest.update(f"{name} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def image() -> Path:
    """The image as an oci-archive, built by ./scripts/build-image (or cached)."""
    require_tools("buildah", "mmdebstrap", "strip")
    tools = {name: _tool(name) for name in TOOLS}
    archive = CACHE / f"authscope-{inputs_hash()}.oci.tar"
    if not archive.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        for old in CACHE.glob("authscope-*.oci.tar"):
            old.unlink()
        env = dict(os.environ, PATH=os.pathsep.join([*{str(p.parent) for p in tools.values()}, os.environ["PATH"]]))
        partial = archive.with_suffix(".part")
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "build-image"), "--cache", str(CACHE), f"oci-archive:{partial}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        partial.rename(archive)
    return archive


class Container:
    """A buildah working container of the image; `run` is a CI job's shell in it."""

    def __init__(self, archive: Path, job: Path) -> None:
        self.job = job
        self.id = subprocess.run(
            ["buildah", "from", "--quiet", f"oci-archive:{archive}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.strip()
        self.root = Path(
            subprocess.run(["buildah", "mount", self.id], capture_output=True, text=True, check=True).stdout.strip()
        )

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        for path in [self.job, *self.job.rglob("*")]:
            os.chown(path, UID, UID)
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "--network", "host", "-v", f"{self.job}:/job"]
            + [self.id, "--", "sh", "-c", f"cd /job && . /job/job.env && {script}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    @property
    def base(self) -> Path:
        return self.root / HOME.lstrip("/") / ".docker" / "config.json"

    def remove(self) -> None:
        subprocess.run(["buildah", "umount", self.id], capture_output=True, check=False)
        subprocess.run(["buildah", "rm", self.id], capture_output=True, check=False)


class Job:
    """A release job's registries, targets file and variables (a job directory)."""

    def __init__(self, tmp_path: Path, factory: RegistryFactory, env: dict[str, str]) -> None:
        self.local = factory("local", username="ci-user")
        self.source = publish_image(self.local, tmp_path / "source", env)
        self.one = factory("one", username="ci-one")
        self.two = factory("two", tls=True, username="ci-two")
        self.dir = tmp_path / "job"
        (self.dir / "certs").mkdir(parents=True)
        assert self.two.ca_file is not None
        shutil.copyfile(self.two.ca_file, self.dir / "certs" / "ca.crt")
        variables = {
            "CI": "true",
            "GITLAB_CI": "true",
            "CI_REGISTRY": self.local.host,
            "CI_REGISTRY_USER": self.local.username,
            "CI_REGISTRY_PASSWORD": self.local.password,
            "ONE_PASSWORD": self.one.password,
            "TWO_PASSWORD": self.two.password,
        }
        env_file = self.dir / "job.env"
        env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in variables.items()))
        env_file.chmod(0o600)
        self.secrets = [r.password for r in (self.local, self.one, self.two)]
        self.verify_env = dict(env)
        self.verify_auth = write_authfile(
            tmp_path / "verify" / "auth.json", {r.host: r.credentials for r in (self.local, self.one, self.two)}
        )

    def targets(self, tool: str, **commands: list[str]) -> str:
        text = f"source:\n  image: {self.local.host}/app:1.0\n  insecure: true\ntags: ['1.0', latest]\ntool: {tool}\n"
        text += "targets:\n"
        for name, registry in (("one", self.one), ("two", self.two)):
            text += f"  - name: {name}\n    registry: {registry.host}\n    repository: release/app\n"
            text += f"    username: {registry.username}\n    password_env: {name.upper()}_PASSWORD\n"
            text += "    ca_file: certs/ca.crt\n" if registry.tls else "    insecure: true\n"
            if name in commands:
                text += f"    command: {json.dumps(commands[name])}\n"
        (self.dir / "authscope.yml").write_text(text)
        return "authscope.yml"

    def digest(self, registry: Registry, tag: str) -> str:
        return skopeo_digest(
            f"{registry.host}/release/app:{tag}", self.verify_auth, self.verify_env, cert_dir=registry.cert_dir
        )

    def assert_no_secrets(self, *texts: str) -> None:
        for text in texts:
            for secret in self.secrets:
                assert secret not in text, "a test secret leaked"


@pytest.fixture
def job(tmp_path: Path, registry_factory: RegistryFactory, e2e_env: dict[str, str]) -> Job:
    return Job(tmp_path, registry_factory, e2e_env)


@pytest.fixture
def container(image: Path, job: Job) -> Iterator[Container]:
    c = Container(image, job.dir)
    try:
        yield c
    finally:
        c.remove()


LOGIN = 'authscope login "$CI_REGISTRY" -u "$CI_REGISTRY_USER" --password-env CI_REGISTRY_PASSWORD'
REPORTS = "--junit junit.xml --dotenv fanout.env --json fanout.json"


def test_image_labels_user_and_tools(image: Path) -> None:
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci-archive:{image}"], capture_output=True, text=True, check=True
        ).stdout
    )["config"]
    import authscope

    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == authscope.__version__
    assert labels["org.opencontainers.image.title"] == "authscope"
    assert len(labels["org.opencontainers.image.revision"]) == 40
    assert labels["org.opencontainers.image.source"]
    assert config["User"] == "authscope" and config.get("Entrypoint") in (None, [])
    assert config["Cmd"] == ["/bin/sh"]


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_fanout_in_the_image_lands_everywhere_and_keeps_the_base(tool: str, job: Job, container: Container) -> None:
    path = job.targets(tool)
    result = container.run(f"{LOGIN} && authscope fanout -f {path} {REPORTS}")
    job.assert_no_secrets(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "success, 2/2 targets landed" in result.stdout
    for registry in (job.one, job.two):
        for tag in ("1.0", "latest"):
            assert job.digest(registry, tag) == job.source.digest
    report = json.loads((job.dir / "fanout.json").read_text())
    assert report["status"] == "success" and report["tool"] == tool
    assert json.loads(container.base.read_text())["auths"].keys() == {job.local.host}


def test_seed_scenario_wiping_logout_in_the_image_keeps_the_base(job: Job, container: Container) -> None:
    """Each target's command logs out and wipes its config (the reported crane
    0.16.1 loop); the second target still reads the source, the base is byte-identical."""
    wipe = ["sh", "-c", f'crane copy "$1" "$2" && crane auth logout "$3" && {WIPE}', "wipe"]
    command = [*wipe, "{source}", "{destination}", "{registry}"]
    path = job.targets("custom", one=command, two=command)
    first = container.run(LOGIN)
    assert first.returncode == 0, first.stderr
    before = container.base.read_bytes()
    result = container.run(f"authscope fanout -f {path} --jobs 1 {REPORTS}")
    job.assert_no_secrets(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert container.base.read_bytes() == before
    for registry in (job.one, job.two):
        assert job.digest(registry, "1.0") == job.source.digest


def test_control_the_same_loop_without_authscope_loses_the_source_login(job: Job, container: Container) -> None:
    assert container.run(LOGIN).returncode == 0
    src = f"{job.local.host}/app:1.0"
    loop = ""
    for name, registry in (("one", job.one), ("two", job.two)):
        loop += (
            f'printf %s "${name.upper()}_PASSWORD" | crane auth login {registry.host} -u {registry.username} '
            f"--password-stdin && SSL_CERT_FILE=/job/certs/ca.crt crane copy {src} {registry.host}/release/app:1.0 "
            f"&& crane auth logout {registry.host} && DOCKER_CONFIG=$HOME/.docker && {WIPE}; "
        )
    result = container.run(loop)
    job.assert_no_secrets(result.stdout, result.stderr)
    hosts = set(json.loads(container.base.read_text())["auths"])
    assert job.local.host not in hosts  # the source's login is gone
    assert job.digest(job.one, "1.0") == job.source.digest
    assert "UNAUTHORIZED" in result.stderr or "unauthorized" in result.stderr.lower()  # two could not read it
