"""Issue 15, part 1 end to end: re-running a landed release pushes nothing.

Real registries (docker-registry, its access log is the request log) and the
real tools (crane, skopeo, regctl). The fleet of tests/e2e/test_fanout.py: a
local registry with the source, targets `one` (plain HTTP), `two` (TLS, its
CA by `ca_file:`) and `three` (a robot user, its password in a file), tags
1.0 and latest. A release is fanned out, then run again: every target must
come back `changed: false`, UP TO DATE, a passing JUnit testcase that says
so, listed in AUTHSCOPE_TARGETS_UNCHANGED, and the registries' logs must show
no PUT / POST / PATCH / DELETE, no manifest GET at any target (HEAD only: a
GET is a pull on Harbor) and no blob read from the source. The controls: the
first run, and `--force`, do push. A tag moved to another image is the only
one copied again.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import tool_paths
from tests.e2e.test_fanout import TAGS, Fleet
from tests.support import CA, Registry, publish_image

_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3})')
WRITES = {"PUT", "POST", "PATCH", "DELETE"}


class Requests:
    """What each registry was asked from now on, read from its access log."""

    def __init__(self, registries: dict[str, Registry]) -> None:
        self.registries = registries
        self.offsets = {name: r.log_path.stat().st_size for name, r in registries.items()}

    def since(self, name: str) -> list[tuple[str, str]]:
        path = self.registries[name].log_path
        size = -1
        while size != path.stat().st_size:  # the log is written as requests complete: let it settle
            size = path.stat().st_size
            time.sleep(0.2)
        with open(path, "rb") as f:
            f.seek(self.offsets[name])
            text = f.read().decode("utf-8", "replace")
        return [(m["method"], m["uri"]) for m in _ACCESS.finditer(text)]


@pytest.fixture
def fleet(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Fleet:
    tool_paths("crane", "skopeo", "regctl")
    return Fleet(tmp_path, e2e_env, registry_factory, ca)


def _registries(fleet: Fleet) -> dict[str, Registry]:
    return {"local": fleet.local, **fleet.targets}


def _json(fleet: Fleet) -> dict[str, dict[str, object]]:
    import json

    return {t["name"]: t for t in json.loads(fleet.json.read_text())["targets"]}


def _dotenv(fleet: Fleet) -> dict[str, str]:
    return dict(line.split("=", 1) for line in fleet.dotenv.read_text().splitlines() if "=" in line)


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_rerun_of_a_landed_release_pushes_nothing_and_says_so(fleet: Fleet, tool: str) -> None:
    path = fleet.targets_file(tool)
    first = Requests(_registries(fleet))
    result = fleet.fanout(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(t["changed"] is True for t in _json(fleet).values())
    for name in fleet.targets:  # the control: the first run pushed
        assert any(m == "PUT" and "/manifests/" in u for m, u in first.since(name)), name
    assert any(m == "GET" and "/blobs/" in u for m, u in first.since("local"))  # and read the source's blobs

    again = Requests(_registries(fleet))
    result = fleet.fanout(path)
    assert result.returncode == 0, result.stdout + result.stderr
    targets = _json(fleet)
    for name in fleet.targets:
        assert (targets[name]["status"], targets[name]["changed"]) == ("ok", False), targets[name]
        assert targets[name]["digests"] == {tag: fleet.source.digest for tag in TAGS}
        assert f"[{name}] up to date: 1.0, latest already hold {fleet.source.digest}; nothing copied" in result.stdout
        asked = again.since(name)
        assert not [r for r in asked if r[0] in WRITES], asked  # nothing pushed
        assert not [r for r in asked if r[0] == "GET" and r[1] != "/v2/"], asked  # HEAD only: no pull counted
        assert sorted(u for m, u in asked if m == "HEAD") == sorted(
            f"/v2/{fleet.repos[name]}/manifests/{tag}" for tag in TAGS
        )  # one round trip per tag: the check is the digest check
    source = again.since("local")
    assert not [r for r in source if "/blobs/" in r[1]], source  # no blob read from the source
    assert not [r for r in source if r[0] in WRITES], source
    table = result.stdout[result.stdout.index("fan-out of") :]
    assert table.count("UP TO DATE") == 3, table
    assert _dotenv(fleet)["AUTHSCOPE_TARGETS_UNCHANGED"] == "one,two,three"
    junit = ET.parse(fleet.junit).getroot()
    assert junit.get("failures") == "0" and len(junit.findall(".//testcase")) == 3
    for case in junit.findall(".//testcase"):
        assert case.find("failure") is None and case.find("skipped") is None
        assert "up to date: every tag already held the source digest; nothing was copied" in (
            case.findtext("system-out") or ""
        )
    assert fleet.base.read_bytes() == fleet.base_before


def test_control_force_pushes_again(fleet: Fleet) -> None:
    path = fleet.targets_file("crane")
    assert fleet.fanout(path).returncode == 0
    again = Requests(_registries(fleet))
    result = fleet.fanout(path, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(t["changed"] is True for t in _json(fleet).values())
    assert "UP TO DATE" not in result.stdout and _dotenv(fleet)["AUTHSCOPE_TARGETS_UNCHANGED"] == ""
    for name in fleet.targets:
        assert any(m == "PUT" and "/manifests/" in u for m, u in again.since(name)), name


def test_force_true_in_the_file_pushes_that_target_again(fleet: Fleet) -> None:
    path = fleet.targets_file("crane")
    assert fleet.fanout(path).returncode == 0
    text = path.read_text().replace(
        "    password_env: TWO_PASSWORD\n", "    password_env: TWO_PASSWORD\n    force: true\n"
    )
    path.write_text(text)
    again = Requests(_registries(fleet))
    result = fleet.fanout(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {n: t["changed"] for n, t in _json(fleet).items()} == {"one": False, "two": True, "three": False}
    assert any(m == "PUT" for m, _ in again.since("two"))
    assert not any(m in WRITES for m, _ in again.since("one"))


@pytest.mark.parametrize("tool", ["crane", "skopeo", "regctl"])
def test_a_moved_tag_is_the_only_one_copied_again(fleet: Fleet, tool: str, e2e_env: dict[str, str]) -> None:
    path = fleet.targets_file(tool)
    assert fleet.fanout(path).returncode == 0
    # Someone moved one:latest to another image.
    other = publish_image(fleet.one, fleet.tmp / "other", e2e_env, repository="release/app", tag="latest", seed=99)
    assert other.digest != fleet.source.digest and fleet.digest("one", "latest") == other.digest
    again = Requests(_registries(fleet))
    result = fleet.fanout(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fleet.digest("one", "latest") == fleet.source.digest and fleet.digest("one", "1.0") == fleet.source.digest
    targets = _json(fleet)
    assert {n: t["changed"] for n, t in targets.items()} == {"one": True, "two": False, "three": False}
    assert f"[one] 1.0 already holds {fleet.source.digest}; copying only latest" in result.stdout
    writes = [r for r in again.since("one") if r[0] in WRITES]
    assert ("PUT", "/v2/release/app/manifests/latest") in writes
    assert not [r for r in writes if r[1].endswith("/manifests/1.0")], writes  # the right tag was not re-pushed
    assert not [r for r in writes if "/blobs/" in r[1]], writes  # its blobs were all there
    for name in ("two", "three"):
        assert not [r for r in again.since(name) if r[0] in WRITES]
