"""Issue 15, part 1, with pull_once: a re-run of a landed release reads no blob from the source.

With pull_once the source is pulled into a local layout by the first target
that needs a copy, once, under a lock; a target that is up to date never asks
for it. Real registries (docker-registry: its access log is the record of
what the source was asked) and the real crane and skopeo, on the fleet of
tests/e2e/test_fanout.py (targets `one`, `two` over TLS, `three`; tags 1.0
and latest). The controls: the first run, and `--force`, do pull, and read
each blob of the source once for the three targets. A pull that fails fails
every target that needed it, names the pull, and runs once; targets that are
up to date stay ok.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import RegistryFactory
from tests.e2e.fanout_helpers import tool_paths
from tests.e2e.test_fanout import TAGS, Fleet, tool_path, write_script
from tests.e2e.test_rerun import WRITES, Requests
from tests.support import CA, Registry, publish_image

PULLING = "authscope: pulling the source once into "


@pytest.fixture
def fleet(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Fleet:
    tool_paths("crane", "skopeo")
    return Fleet(tmp_path, e2e_env, registry_factory, ca)


def _registries(fleet: Fleet) -> dict[str, Registry]:
    return {"local": fleet.local, **fleet.targets}


def _targets(fleet: Fleet) -> dict[str, dict[str, object]]:
    return {t["name"]: t for t in json.loads(fleet.json.read_text())["targets"]}


def _blob_reads(asked: list[tuple[str, str]]) -> Counter[str]:
    return Counter(uri for method, uri in asked if method == "GET" and "/blobs/" in uri)


@pytest.mark.parametrize("tool", ["crane", "skopeo"])
def test_rerun_with_pull_once_pulls_nothing_and_reads_no_blob_from_the_source(fleet: Fleet, tool: str) -> None:
    path = fleet.targets_file(tool)
    first = Requests(_registries(fleet))
    result = fleet.fanout(path, "--pull-once")
    assert result.returncode == 0, result.stdout + result.stderr
    # The control: the first run pulled, once, and read each of the source's blobs once for three targets.
    assert result.stdout.count(PULLING) == 1, result.stdout
    reads = _blob_reads(first.since("local"))
    assert reads and set(reads.values()) == {1}, reads
    assert all(t["changed"] is True for t in _targets(fleet).values())

    again = Requests(_registries(fleet))
    result = fleet.fanout(path, "--pull-once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert PULLING not in result.stdout and "[pull]" not in result.stdout, result.stdout
    source = again.since("local")
    assert not [r for r in source if "/blobs/" in r[1]], source  # no blob read from the source
    assert not [r for r in source if r[0] in WRITES], source
    targets = _targets(fleet)
    for name in fleet.targets:
        assert (targets[name]["status"], targets[name]["changed"]) == ("ok", False), targets[name]
        assert targets[name]["digests"] == {tag: fleet.source.digest for tag in TAGS}
        asked = again.since(name)
        assert not [r for r in asked if r[0] in WRITES], asked  # nothing pushed
        assert not [r for r in asked if r[0] == "GET" and r[1] != "/v2/"], asked  # HEAD only
    assert result.stdout[result.stdout.index("fan-out of") :].count("UP TO DATE") == 3
    assert fleet.base.read_bytes() == fleet.base_before


@pytest.mark.parametrize("tool", ["crane", "skopeo"])
def test_control_force_with_pull_once_pulls_once_for_every_target(fleet: Fleet, tool: str) -> None:
    path = fleet.targets_file(tool)
    assert fleet.fanout(path, "--pull-once").returncode == 0
    again = Requests(_registries(fleet))
    result = fleet.fanout(path, "--pull-once", "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(PULLING) == 1, result.stdout  # three targets waited for one pull
    reads = _blob_reads(again.since("local"))
    assert reads and set(reads.values()) == {1}, reads  # the source read once, not once per target
    assert all(t["changed"] is True for t in _targets(fleet).values())
    for name in fleet.targets:
        assert any(m == "PUT" and "/manifests/" in u for m, u in again.since(name)), name


def test_a_moved_tag_with_pull_once_is_pulled_once_and_copied_only_there(fleet: Fleet, e2e_env: dict[str, str]) -> None:
    path = fleet.targets_file("skopeo")
    assert fleet.fanout(path, "--pull-once").returncode == 0
    publish_image(fleet.one, fleet.tmp / "other", e2e_env, repository="release/app", tag="latest", seed=99)
    again = Requests(_registries(fleet))
    result = fleet.fanout(path, "--pull-once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(PULLING) == 1, result.stdout
    assert _blob_reads(again.since("local")), "the target that needed a copy got it from a pull"
    assert {n: t["changed"] for n, t in _targets(fleet).items()} == {"one": True, "two": False, "three": False}
    assert fleet.digest("one", "latest") == fleet.source.digest
    writes = [r for r in again.since("one") if r[0] in WRITES]
    assert ("PUT", "/v2/release/app/manifests/latest") in writes
    assert not [r for r in writes if r[1].endswith("/manifests/1.0")], writes
    for name in ("two", "three"):
        assert not [r for r in again.since(name) if r[0] in WRITES]


def test_a_failed_pull_fails_every_target_that_needed_it_and_runs_once(
    fleet: Fleet, tmp_path: Path, e2e_env: dict[str, str]
) -> None:
    path = fleet.targets_file("crane")
    assert fleet.fanout(path, "--pull-once").returncode == 0
    for name in ("one", "three"):  # moved: these two need a copy, two is up to date
        publish_image(
            fleet.targets[name], fleet.tmp / f"other-{name}", e2e_env, repository=fleet.repos[name], tag="1.0", seed=7
        )
    crane = tool_path("crane")
    shim = tmp_path / "shim"
    shim.mkdir()
    calls = tmp_path / "pulls"
    write_script(
        shim / "crane",
        f'if [ "$1" = pull ]; then echo pull >> {calls}; echo "Error: GET {fleet.local.host}: MANIFEST_UNKNOWN" >&2; '
        f'exit 1; fi\nexec {crane} "$@"\n',
    )
    env = dict(fleet.env, PATH=f"{shim}:{fleet.env['PATH']}")
    result = fleet.fanout(path, "--pull-once", "--retries", "0", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert calls.read_text().splitlines() == ["pull"]  # tried once, for both targets that needed it
    targets = _targets(fleet)
    for name in ("one", "three"):
        assert targets[name]["status"] == "failed" and targets[name]["changed"] is False, targets[name]
        assert "not copied: the source was not pulled once (could not pull " in str(targets[name]["error"])
        assert fleet.digest(name, "1.0") != fleet.source.digest  # nothing copied from a layout that isn't there
    assert (targets["two"]["status"], targets["two"]["changed"]) == ("ok", False)
    report = json.loads(fleet.json.read_text())
    assert str(report["error"]).startswith(f"{fleet.local.host}: could not pull "), report["error"]
    assert f"error: {fleet.local.host}: could not pull " in result.stderr
    assert fleet.base.read_bytes() == fleet.base_before
