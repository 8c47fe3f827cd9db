"""`authscope fanout` end to end: real registries, real crane / skopeo / regctl.

Every test sets up what a GitLab release job has: a "local" plain-HTTP
registry holding the source image, which the base Docker config is logged in
to with `authscope login`, and three target registries: `one` (plain HTTP,
password in a variable), `two` (TLS with a CA given by `ca_file:`, relative
to the targets file) and `three` (plain HTTP, a Harbor-style robot username
`robot$release+ci` taken literally, password in a file). Every password is an
obviously fake `test-<hex>`; no test secret may appear in anything authscope
prints or writes, nor in any process's argv.

Digests are always read back independently (the registry's own
Docker-Content-Digest, over HTTP from this process), never from authscope's
reports alone.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import RegistryFactory, fake_password, require_tools
from tests.support import CA, Registry, SourceImage, publish_image

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
AUTHSCOPE = [sys.executable, "-m", "authscope"]
TAGS = ("1.0", "latest")
ROBOT = "robot$release+ci"


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


class Fleet:
    """One release job: the local registry with the source, three targets, a logged-in base."""

    def __init__(self, tmp_path: Path, env: Mapping[str, str], factory: RegistryFactory, ca: CA) -> None:
        self.tmp = tmp_path
        self.local = factory("local", username="ci-user")
        self.source: SourceImage = publish_image(self.local, tmp_path / "source", env)
        self.one = factory("one", username="ci-one")
        self.two = factory("two", tls=True, username="ci-two")
        self.three = factory("three", username=ROBOT)
        self.ca = ca
        self.targets = {"one": self.one, "two": self.two, "three": self.three}
        self.repos = {"one": "release/app", "two": "release/app", "three": "mirror/app"}

        # The targets file lives in its own directory; authscope runs elsewhere.
        self.conf = tmp_path / "conf"
        (self.conf / "certs").mkdir(parents=True)
        (self.conf / "secrets").mkdir()
        shutil.copyfile(ca.cert, self.conf / "certs" / "ca.crt")
        (self.conf / "secrets" / "three.pw").write_text(self.three.password + "\n")
        (self.conf / "secrets" / "three.pw").chmod(0o600)
        self.cwd = tmp_path / "job"
        self.cwd.mkdir()

        e = dict(env)
        e["PATH"] = f"{TOOLS_BIN}{os.pathsep}{e['PATH']}"
        e["LANG"] = "C.UTF-8"
        e["GITLAB_CI"] = "true"  # a release job: GitLab's collapsible sections in the log
        self.scopes = tmp_path / "scopes"
        self.scopes.mkdir(mode=0o700)
        e["AUTHSCOPE_SCOPE_DIR"] = str(self.scopes)
        e["LOCAL_HOST"] = self.local.host
        e["LOCAL_PASSWORD"] = self.local.password
        e["ONE_PASSWORD"] = self.one.password
        e["TWO_PASSWORD"] = self.two.password
        self.env = e
        self.base = Path(e["DOCKER_CONFIG"]) / "config.json"
        self.reports = tmp_path / "reports"
        self.reports.mkdir()

        every = [self.local, self.one, self.two, self.three]
        self.secrets: list[str] = [s for r in every for s in (r.password, b64(r.username, r.password))]

        result = self.authscope("login", self.local.host, "-u", "ci-user", "--password-env", "LOCAL_PASSWORD")
        assert result.returncode == 0, result.stderr
        self.base_before = self.base.read_bytes()

    # -- targets files -------------------------------------------------------------------

    def targets_file(self, tool: str) -> Path:
        """The standard file: ${VAR} expansion, a CA and a password file relative to it."""
        text = f"""\
source:
  image: ${{LOCAL_HOST}}/app:1.0
  insecure: true
tags: ["1.0", "${{SECOND_TAG:-latest}}"]
tool: {tool}
targets:
  - name: one
    registry: {self.one.host}
    repository: release/app
    insecure: true
    username: ci-one
    password_env: ONE_PASSWORD
  - name: two
    registry: {self.two.host}
    repository: release/app
    ca_file: certs/ca.crt
    username: ci-two
    password_env: TWO_PASSWORD
  - name: three
    registry: {self.three.host}
    repository: mirror/app
    insecure: true
    username: {ROBOT}
    password_file: secrets/three.pw
"""
        path = self.conf / f"{tool}.yml"
        path.write_text(text)
        return path

    def custom_file(self, name: str, commands: Mapping[str, Sequence[str]], **top: Any) -> Path:
        """tool: custom; ``commands`` maps a target's name to its command."""
        doc: dict[str, Any] = {
            "source": {"image": f"{self.local.host}/app:1.0", "insecure": True},
            "tags": list(TAGS),
            "tool": "custom",
            **top,
            "targets": [],
        }
        for target, command in commands.items():
            entry = self.target_entry(target)
            entry["command"] = list(command)
            doc["targets"].append(entry)
        path = self.conf / f"{name}.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def target_entry(self, name: str) -> dict[str, Any]:
        registry = self.targets[name]
        entry: dict[str, Any] = {"name": name, "registry": registry.host, "repository": self.repos[name]}
        if name == "two":
            entry["ca_file"] = "certs/ca.crt"
        else:
            entry["insecure"] = True
        entry["username"] = registry.username
        if name == "three":
            entry["password_file"] = "secrets/three.pw"
        else:
            entry["password_env"] = f"{name.upper()}_PASSWORD"
        return entry

    # -- running ---------------------------------------------------------------------------

    def assert_no_secrets(self, *texts: str) -> None:
        for text in texts:
            for secret in self.secrets:
                assert secret not in text, "a test secret leaked"

    def authscope(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*AUTHSCOPE, *args],
            env=dict(self.env if env is None else env),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.assert_no_secrets(result.stdout, result.stderr)
        return result

    def report_args(self) -> list[str]:
        return ["--junit", str(self.junit), "--dotenv", str(self.dotenv), "--json", str(self.json)]

    @property
    def junit(self) -> Path:
        return self.reports / "junit.xml"

    @property
    def dotenv(self) -> Path:
        return self.reports / "fanout.env"

    @property
    def json(self) -> Path:
        return self.reports / "fanout.json"

    def fanout(self, path: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = self.authscope("fanout", "-f", str(path), *self.report_args(), *args, env=env)
        for report in (self.junit, self.dotenv, self.json):
            if report.exists():
                self.assert_no_secrets(report.read_text())
        assert self.scopes_left() == [], "a scope outlived the fan-out"
        return result

    def fanout_signalled(
        self,
        path: Path,
        signum: int,
        running: int = 1,
        env: Mapping[str, str] | None = None,
        before_signal: Callable[[], None] | None = None,
    ) -> tuple[int, str, str]:
        """A fan-out signalled once ``running`` targets' commands printed
        "started NAME" (and ``before_signal`` ran): (exit code, stdout, stderr)."""
        out_path, err_path = self.tmp / "fanout.out", self.tmp / "fanout.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [*AUTHSCOPE, "fanout", "-f", str(path), *self.report_args()],
                env=dict(self.env if env is None else env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        try:
            deadline = time.monotonic() + 30
            while len(started(out_path.read_text())) < running:
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "the tools never started"
                time.sleep(0.05)
            if before_signal is not None:
                before_signal()
            proc.send_signal(signum)
            returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stdout, stderr = out_path.read_text(), err_path.read_text()
        self.assert_no_secrets(stdout, stderr)
        return returncode, stdout, stderr

    def scopes_left(self) -> list[str]:
        return sorted(p.name for p in self.scopes.iterdir())

    # -- reading back ---------------------------------------------------------------------

    def digest(self, name: str, tag: str) -> str | None:
        return self.targets[name].manifest_digest(self.repos[name], tag)

    def catalog(self, name: str) -> list[str]:
        registry = self.targets[name]
        response = registry.request("GET", "/v2/_catalog", auth=registry.credentials)
        assert response.status == 200, response
        return list(json.loads(response.body)["repositories"])

    def log_sizes(self) -> dict[str, int]:
        return {r.name: r.log_path.stat().st_size for r in (self.local, self.one, self.two, self.three)}

    def report(self) -> dict[str, Any]:
        return dict(json.loads(self.json.read_text()))

    def junit_cases(self) -> dict[str, ET.Element]:
        root = ET.fromstring(self.junit.read_bytes())
        return {case.get("name") or "": case for case in root.iter("testcase")}

    def dotenv_values(self) -> dict[str, str]:
        out = {}
        for line in self.dotenv.read_text().splitlines():
            key, _, value = line.partition("=")
            assert key.replace("_", "").isalnum() and key.isascii(), line
            out[key] = value
        return out


@pytest.fixture
def fleet(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Fleet:
    require_tools("skopeo", "openssl")
    return Fleet(tmp_path, e2e_env, registry_factory, ca)


def tool_path(name: str) -> str:
    found = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        require_tools(name)
    return found or name


# -- a sampler of every process's argv ---------------------------------------------------------


class ArgvSampler:
    """Reads /proc/*/cmdline in a loop: what every process on the host was started with."""

    def __init__(self, secrets_: Iterable[str], tools: Iterable[str]) -> None:
        self.secrets = [s.encode() for s in secrets_]
        self.tools = set(tools)
        self.leaks: list[str] = []
        self.seen: dict[str, list[str]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="argv-sampler", daemon=True)

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        raw = f.read()
                except OSError:  # gone, or not ours to read
                    continue
                if not raw:
                    continue
                argv = [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]
                name = os.path.basename(argv[0])
                for secret in self.secrets:
                    if secret in raw:
                        self.leaks.append(f"pid {pid}: {name}")
                if name in self.tools:
                    self.seen.setdefault(name, []).append(" ".join(argv))
            self.samples += 1
            time.sleep(0.002)


# -- the happy path, with each tool ---------------------------------------------------------------


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_fanout_lands_every_tag_everywhere(tool: str, fleet: Fleet) -> None:
    tool_path(tool)
    path = fleet.targets_file(tool)
    with ArgvSampler(fleet.secrets, {tool}) as sampler:
        result = fleet.fanout(path)
    assert result.returncode == 0, result.stdout + result.stderr

    # Every target holds the source's digest under every tag, read independently.
    for name in fleet.targets:
        for tag in TAGS:
            assert fleet.digest(name, tag) == fleet.source.digest, (name, tag)
    assert fleet.base.read_bytes() == fleet.base_before  # the base was never written

    # No secret in any argv on the host, and the sampler did watch the tool run.
    assert sampler.leaks == []
    assert sampler.samples > 10
    assert tool in sampler.seen, f"the sampler never saw {tool} run ({sampler.samples} samples)"
    seen = "\n".join(sampler.seen[tool])
    assert fleet.source.digest in seen  # copied by digest
    assert fleet.two.host in seen and fleet.three.host in seen

    # The log: a collapsed section per target and the summary table.
    for name in fleet.targets:
        assert "section_start:" in result.stdout and f":authscope_{name}[collapsed=true]" in result.stdout
    assert "success, 3/3 targets landed" in result.stdout

    # JUnit: one passing testcase per target.
    cases = fleet.junit_cases()
    assert sorted(cases) == ["one", "three", "two"]
    root = ET.fromstring(fleet.junit.read_bytes())
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "0", "0")
    for case in cases.values():
        assert case.find("failure") is None and case.find("skipped") is None

    # dotenv: what later jobs need.
    env = fleet.dotenv_values()
    assert env["AUTHSCOPE_STATUS"] == "success"
    assert env["AUTHSCOPE_DIGEST"] == fleet.source.digest
    assert env["AUTHSCOPE_SOURCE"] == fleet.source.ref
    assert env["AUTHSCOPE_TARGETS_TOTAL"] == "3"
    assert env["AUTHSCOPE_TARGETS_OK"].split(",") == ["one", "two", "three"]
    assert env["AUTHSCOPE_TARGETS_FAILED"] == env["AUTHSCOPE_TARGETS_SKIPPED"] == ""
    assert sorted(env["AUTHSCOPE_DESTINATIONS"].split()) == sorted(
        f"{fleet.targets[n].host}/{fleet.repos[n]}:{tag}" for n in fleet.targets for tag in TAGS
    )
    assert len(fleet.dotenv.read_bytes()) <= 5 * 1024

    # JSON: versioned, every target verified.
    doc = fleet.report()
    assert doc["version"] == 1 and doc["status"] == "success" and doc["tool"] == tool
    assert doc["digest"] == fleet.source.digest and doc["signal"] is None
    assert doc["counts"] == {"ok": 3, "failed": 0, "skipped": 0, "interrupted": 0}
    for target in doc["targets"]:
        assert target["status"] == "ok" and target["attempts"] == 1
        assert target["digests"] == {tag: fleet.source.digest for tag in TAGS}
        assert target["tool"] == tool


# -- failures -----------------------------------------------------------------------------------------


def python_401s(registry: Registry) -> int:
    """GET /v2/ answered 401 to authscope's own client (its credential check)."""
    return sum(
        1
        for line in registry.log_path.read_text(errors="replace").splitlines()
        if '"GET /v2/ HTTP/1.1" 401' in line and "authscope/" in line
    )


def test_wrong_password_fails_one_target_the_others_land(fleet: Fleet) -> None:
    wrong = fake_password()
    fleet.secrets += [wrong, b64("ci-two", wrong)]
    env = dict(fleet.env, TWO_PASSWORD=wrong)
    result = fleet.fanout(fleet.targets_file("crane"), "--retries", "2", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 3 target(s) did not land" in result.stderr

    for name in ("one", "three"):
        for tag in TAGS:
            assert fleet.digest(name, tag) == fleet.source.digest
    assert fleet.catalog("two") == []
    # A 401 is permanent: asked once (anonymously, then with the credentials), never retried.
    assert 1 <= python_401s(fleet.two) <= 2

    cases = fleet.junit_cases()
    failure = cases["two"].find("failure")
    assert failure is not None
    assert fleet.two.host in (failure.get("message") or "") and "401" in (failure.get("message") or "")
    assert "password_env TWO_PASSWORD" in (failure.text or "")
    assert cases["one"].find("failure") is None and cases["three"].find("failure") is None
    assert "two: FAILED" in result.stdout  # its section, open (not collapsed)
    assert ":authscope_two" in result.stdout and ":authscope_two[collapsed=true]" not in result.stdout

    doc = fleet.report()
    assert doc["status"] == "partial"
    assert {t["name"]: t["status"] for t in doc["targets"]} == {"one": "ok", "two": "failed", "three": "ok"}
    env_values = fleet.dotenv_values()
    assert env_values["AUTHSCOPE_TARGETS_FAILED"] == "two"
    assert env_values["AUTHSCOPE_TARGETS_OK"] == "one,three"


def test_config_errors_exit_2_list_everything_and_push_nothing(fleet: Fleet) -> None:
    before = fleet.log_sizes()
    bad = fleet.conf / "bad.yml"
    bad.write_text(
        f"""\
source: ${{NO_SUCH_SOURCE}}/app:1.0
tool: crane
targets:
  - name: one
    registy: {fleet.one.host}
    repository: release/app
    username: ci-one
    password_env: ONE_PASSWORD
  - name: two
    registry: {fleet.two.host}
    repository: release/app
    ca_file: certs/missing.crt
    username: ci-two
    password_env: TWO_PASSWORD
"""
    )
    result = fleet.fanout(bad)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nothing ran" in result.stderr
    assert f"{bad}:1: source: ${{NO_SUCH_SOURCE}} is not set" in result.stderr
    assert f"{bad}:5: targets[0].registy: unknown key; did you mean 'registry'?" in result.stderr
    assert f"{bad}:12: targets[1].ca_file: certs/missing.crt: no such file" in result.stderr

    # Valid file, missing secrets: every one reported, before anything runs.
    (fleet.conf / "secrets" / "three.pw").unlink()
    env = {k: v for k, v in fleet.env.items() if k != "TWO_PASSWORD"}
    result = fleet.fanout(fleet.targets_file("crane"), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "2 problems; nothing ran" in result.stderr
    assert "targets[two].password_env: $TWO_PASSWORD is not set or empty" in result.stderr
    assert f"targets[three].password_file: {fleet.conf / 'secrets' / 'three.pw'}" in result.stderr

    for name in fleet.targets:
        assert fleet.catalog(name) == []
    after = fleet.log_sizes()
    # Nothing contacted any registry but our own catalog checks.
    assert after["local"] == before["local"]
    assert fleet.base.read_bytes() == fleet.base_before


def test_timeout_fails_that_target_only(fleet: Fleet) -> None:
    crane = tool_path("crane")
    mark = str(secrets.randbelow(10**6))
    copy = [crane, "copy", "{source}", "{destination}"]
    path = fleet.custom_file(
        "timeout",
        {"one": ["sh", "-c", f"sleep 41.{mark}"], "two": copy, "three": copy},
    )
    started = time.monotonic()
    result = fleet.fanout(path, "--timeout", "2")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 20
    doc = fleet.report()
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["one"]["status"] == "failed"
    assert "timed out" in by_name["one"]["error"]
    assert by_name["two"]["status"] == by_name["three"]["status"] == "ok"
    for name in ("two", "three"):
        for tag in TAGS:
            assert fleet.digest(name, tag) == fleet.source.digest
    assert fleet.catalog("one") == []
    failure = fleet.junit_cases()["one"].find("failure")
    assert failure is not None and "timed out" in (failure.get("message") or "")
    assert fleet.scopes_left() == []
    assert not processes_with(f"41.{mark}"), "the timed-out command outlived its target"


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_transient_failure_retried_permanent_401_not(fleet: Fleet) -> None:
    crane = tool_path("crane")
    counters = fleet.tmp / "counters"
    counters.mkdir()
    # Fails with a 503 on its very first call, then copies for real.
    flaky = write_script(
        fleet.tmp / "flaky.sh",
        f'''n=$(cat "{counters}/$3" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{counters}/$3"
if [ "$n" = 1 ]; then
  echo "GET https://$4/v2/: unexpected status code 503 Service Unavailable" >&2
  exit 1
fi
exec {crane} copy "$1" "$2"
''',
    )
    # The registry refuses the login, every time.
    denied = write_script(
        fleet.tmp / "denied.sh",
        f'''n=$(cat "{counters}/$3" 2>/dev/null || echo 0); echo $((n + 1)) > "{counters}/$3"
echo "Error: POST https://$4/v2/release/app/blobs/uploads/: UNAUTHORIZED: authentication required" >&2
exit 1
''',
    )
    args = ["{source}", "{destination}", "{name}", "{registry}"]
    path = fleet.custom_file("retries", {"one": ["sh", str(flaky), *args], "two": ["sh", str(denied), *args]})
    result = fleet.fanout(path, "--retries", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    doc = fleet.report()
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["one"]["status"] == "ok" and by_name["one"]["attempts"] == 2
    assert by_name["one"]["digests"] == {tag: fleet.source.digest for tag in TAGS}
    assert (counters / "one").read_text().strip() == "3"  # fail, then both tags
    for tag in TAGS:
        assert fleet.digest("one", tag) == fleet.source.digest

    assert by_name["two"]["status"] == "failed" and by_name["two"]["attempts"] == 1
    assert (counters / "two").read_text().strip() == "1"  # a 401 is never retried
    assert "password_env TWO_PASSWORD" in by_name["two"]["hint"]
    assert "looks transient; retrying" in result.stdout
    assert fleet.catalog("two") == []


def test_fail_fast_skips_later_targets(fleet: Fleet) -> None:
    wrong = fake_password()
    fleet.secrets += [wrong, b64("ci-one", wrong)]
    env = dict(fleet.env, ONE_PASSWORD=wrong)
    result = fleet.fanout(fleet.targets_file("crane"), "--fail-fast", "--jobs", "1", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    cases = fleet.junit_cases()
    assert cases["one"].find("failure") is not None
    for name in ("two", "three"):
        skipped = cases[name].find("skipped")
        assert skipped is not None and "--fail-fast" in (skipped.get("message") or "")
        assert cases[name].find("failure") is None
        assert fleet.catalog(name) == []
    root = ET.fromstring(fleet.junit.read_bytes())
    assert (root.get("failures"), root.get("skipped")) == ("1", "2")
    doc = fleet.report()
    assert doc["counts"] == {"ok": 0, "failed": 1, "skipped": 2, "interrupted": 0}
    assert fleet.dotenv_values()["AUTHSCOPE_TARGETS_SKIPPED"] == "two,three"


def test_a_copy_that_lands_other_bits_fails_verification(fleet: Fleet, e2e_env: dict[str, str]) -> None:
    """Invariant 7: a tool that exits 0 but leaves another image under the tag fails the target."""
    crane = tool_path("crane")
    other = publish_image(fleet.local, fleet.tmp / "other", e2e_env, repository="other", tag="1.0", seed=7)
    assert other.digest != fleet.source.digest
    wrong = [crane, "copy", other.ref, "{destination}"]
    right = [crane, "copy", "{source}", "{destination}"]
    result = fleet.fanout(fleet.custom_file("verify", {"one": wrong, "two": right}))
    assert result.returncode == 1, result.stdout + result.stderr
    by_name = {t["name"]: t for t in fleet.report()["targets"]}
    assert by_name["one"]["status"] == "failed"
    assert other.digest in by_name["one"]["error"] and fleet.source.digest in by_name["one"]["error"]
    assert by_name["two"]["status"] == "ok"
    assert fleet.digest("one", "1.0") == other.digest  # what the tool really did


def test_source_not_logged_in_fails_before_any_copy(fleet: Fleet) -> None:
    fleet.base.unlink()
    result = fleet.fanout(fleet.targets_file("crane"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"authscope login {fleet.local.host}" in result.stderr
    doc = fleet.report()
    assert doc["status"] == "failed" and doc["digest"] is None and "cannot read the source" in doc["error"]
    assert [t["status"] for t in doc["targets"]] == ["failed"] * 3
    assert len(fleet.junit_cases()) == 3
    for name in fleet.targets:
        assert fleet.catalog(name) == []


def test_dry_run_contacts_nothing(fleet: Fleet) -> None:
    before = fleet.log_sizes()
    path = fleet.targets_file("skopeo")
    result = fleet.authscope("fanout", "-f", str(path), "--dry-run", *fleet.report_args())
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith(f"plan from {path}: 3 target(s)")
    assert "password_env $ONE_PASSWORD (set)" in out and "password_env $TWO_PASSWORD (set)" in out
    assert f"password_file {fleet.conf / 'secrets' / 'three.pw'} (exists)" in out
    assert f"username '{ROBOT}'" in out
    assert f"CA {fleet.conf / 'certs' / 'ca.crt'}" in out
    assert out.count("  $ skopeo copy") == 6
    assert "dry run: nothing was contacted, copied or written" in out
    time.sleep(0.2)
    assert fleet.log_sizes() == before
    assert fleet.scopes_left() == []
    assert fleet.base.read_bytes() == fleet.base_before
    assert not any(p.exists() for p in (fleet.junit, fleet.dotenv, fleet.json))

    # Missing secrets: the plan says which, and the exit code is 2.
    env = {k: v for k, v in fleet.env.items() if k != "ONE_PASSWORD"}
    result = fleet.authscope("fanout", "-f", str(path), "--dry-run", env=env)
    assert result.returncode == 2
    assert "password_env $ONE_PASSWORD (NOT SET)" in result.stdout
    assert "$ONE_PASSWORD is not set" in result.stderr
    assert fleet.log_sizes() == before


# -- signals -------------------------------------------------------------------------------------------


def processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if marker.encode() in raw and b"pytest" not in raw:
            found.append(pid)
    return found


def started(log: str) -> list[str]:
    """Targets whose command printed "started NAME" (relayed as "[NAME] started NAME")."""
    return re.findall(r"^\[([\w-]+)\] started \1$", log, re.MULTILINE)


@pytest.mark.parametrize(
    ("signum", "code", "jobs"),
    [(signal.SIGINT, 130, 3), (signal.SIGTERM, 143, 1)],
    ids=["SIGINT-all-running", "SIGTERM-two-queued"],
)
def test_signal_interrupts_cleans_up_and_reports(signum: int, code: int, jobs: int, fleet: Fleet) -> None:
    """Running targets' tools get the signal; queued ones never start; all are reported."""
    mark = str(secrets.randbelow(10**6))
    slow = write_script(fleet.tmp / "slow.sh", f'echo "started $1"\nsleep 43.{mark}\necho "not interrupted"\n')
    path = fleet.custom_file("signals", {name: ["sh", str(slow), "{name}"] for name in fleet.targets}, jobs=jobs)

    def one_live_scope_per_running_target() -> None:
        assert len(fleet.scopes_left()) == jobs

    returncode, stdout, stderr = fleet.fanout_signalled(
        path, signum, running=jobs, before_signal=one_live_scope_per_running_target
    )
    assert returncode == code, stdout + stderr
    assert "not interrupted" not in stdout
    assert len(started(stdout)) == jobs  # queued targets never started
    assert fleet.scopes_left() == []
    assert not processes_with(f"43.{mark}"), "a tool outlived the interrupted fan-out"
    assert f"interrupted by signal {int(signum)}" in stderr

    doc = fleet.report()
    assert doc["status"] == "interrupted" and doc["signal"] == int(signum)
    assert doc["counts"]["interrupted"] == 3
    assert all(t["status"] == "interrupted" for t in doc["targets"])
    not_started = [t["name"] for t in doc["targets"] if t["error"].startswith("not started")]
    assert len(not_started) == 3 - jobs
    for case in fleet.junit_cases().values():
        failure = case.find("failure")
        assert failure is not None and failure.get("type") == "interrupted"
    env_values = fleet.dotenv_values()
    assert env_values["AUTHSCOPE_STATUS"] == "interrupted"
    assert env_values["AUTHSCOPE_TARGETS_FAILED"] == "one,two,three"
    for report in (fleet.junit, fleet.dotenv, fleet.json):
        fleet.assert_no_secrets(report.read_text())
    assert fleet.base.read_bytes() == fleet.base_before


# -- the base guard ------------------------------------------------------------------------------------


def test_command_rewriting_the_base_is_caught_restored_and_exits_3(fleet: Fleet) -> None:
    crane = tool_path("crane")
    rogue = write_script(
        fleet.tmp / "rogue.sh",
        f'{crane} copy "$1" "$2" && printf \'{{"auths": {{}}}}\' > "$BASE_CONFIG"\n',
    )
    copy = [crane, "copy", "{source}", "{destination}"]
    path = fleet.custom_file(
        "guard", {"one": ["sh", str(rogue), "{source}", "{destination}"], "two": copy, "three": copy}
    )
    env = dict(fleet.env, BASE_CONFIG=str(fleet.base))
    before = json.loads(fleet.base_before)
    # One at a time: the later targets open their scopes after the guard restored the base.
    result = fleet.fanout(path, "--jobs", "1", env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "BASE INTEGRITY" in result.stderr
    assert f"auths entry '{fleet.local.host}'" in result.stdout and "restored" in result.stdout
    after = json.loads(fleet.base.read_text())
    assert after["auths"] == before["auths"]
    for name in fleet.targets:
        for tag in TAGS:
            assert fleet.digest(name, tag) == fleet.source.digest
    doc = fleet.report()
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name["one"]["restored"] and not by_name["two"]["restored"]


# -- masking what commands print ----------------------------------------------------------------------


def test_command_output_is_masked(fleet: Fleet) -> None:
    """A command that dumps its environment and config (set -x style debugging): the
    scope's own secrets are [MASKED] in the log and in every report."""
    dump = write_script(fleet.tmp / "dump.sh", 'echo "own=$ONE_PASSWORD"; cat "$DOCKER_CONFIG/config.json"; exit 1\n')
    path = fleet.custom_file("mask", {"one": ["sh", str(dump)]}, retries=0)
    result = fleet.fanout(path)  # asserts no test secret anywhere
    assert result.returncode == 1
    assert "own=[MASKED]" in result.stdout
    failure = fleet.junit_cases()["one"].find("failure")
    assert failure is not None and "own=[MASKED]" in (failure.text or "")


def test_other_targets_secrets_are_masked_too(fleet: Fleet) -> None:
    dump = write_script(fleet.tmp / "dump.sh", 'echo "other=$TWO_PASSWORD"; exit 1\n')
    crane = tool_path("crane")
    path = fleet.custom_file(
        "mask-other", {"one": ["sh", str(dump)], "two": [crane, "copy", "{source}", "{destination}"]}, retries=0
    )
    result = subprocess.run(
        [*AUTHSCOPE, "fanout", "-f", str(path), *fleet.report_args()],
        env=fleet.env,
        cwd=fleet.cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert fleet.two.password not in result.stdout + result.stderr
    assert fleet.two.password not in fleet.junit.read_text() + fleet.json.read_text()
