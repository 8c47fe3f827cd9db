"""A restore is always reported by a real fan-out (issue 12, item 2).

A target's command wipes the base and then fails, fails transiently and is
retried, or is signalled; a pull_once pull wipes it. In each case the guard
restores the base, the run exits 3, `BASE INTEGRITY` is printed and the JSON
and JUnit reports name what was restored. Before this, a target that failed
after the wipe lost the guard's findings (exit 1), and a signal hid them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RegistryFactory, require_tools
from tests.e2e.test_fanout import Fleet, tool_path, write_script
from tests.support import CA


@pytest.fixture
def fleet(tmp_path: Path, e2e_env: dict[str, str], registry_factory: RegistryFactory, ca: CA) -> Fleet:
    require_tools("skopeo", "openssl")
    return Fleet(tmp_path, e2e_env, registry_factory, ca)


WIPE = 'printf \'{"auths": {}}\' > "$BASE_CONFIG"\n'


def _env(fleet: Fleet) -> dict[str, str]:
    return dict(fleet.env, BASE_CONFIG=str(fleet.base))


def _assert_reported(fleet: Fleet, stdout: str, stderr: str, target: str) -> dict[str, Any]:
    note = f"auths entry '{fleet.local.host}' was removed by a tool outside its scope; restored"
    assert "BASE INTEGRITY" in stderr and note in stderr, stderr
    assert json.loads(fleet.base.read_text())["auths"] == json.loads(fleet.base_before)["auths"]
    doc = fleet.report()
    assert doc["restored"] == [f"{target}: {note}"]
    by_name = {t["name"]: t for t in doc["targets"]}
    assert by_name[target]["restored"] == [note]
    failure = fleet.junit_cases()[target].find("failure")
    assert failure is not None and note in (failure.text or "")
    assert fleet.dotenv_values()["AUTHSCOPE_BASE_RESTORED"] == "true"
    assert f"{target}  " in stdout and "(BASE RESTORED)" in stdout
    return doc


def test_wipe_then_failed_target_exits_3(fleet: Fleet) -> None:
    rogue = write_script(fleet.tmp / "rogue.sh", WIPE + "echo 'no such thing' >&2\nexit 1\n")
    path = fleet.custom_file("wipe-fail", {"one": ["sh", str(rogue)]}, retries=0)
    result = fleet.fanout(path, env=_env(fleet))
    assert result.returncode == 3, result.stdout + result.stderr
    doc = _assert_reported(fleet, result.stdout, result.stderr, "one")
    assert doc["targets"][0]["status"] == "failed"
    assert fleet.junit_cases()["one"].find("failure").get("type") == "base-integrity"  # type: ignore[union-attr]


def test_control_failed_target_without_a_wipe_exits_1(fleet: Fleet) -> None:
    """Control: the same failing command, no wipe: exit 1 and nothing restored."""
    plain = write_script(fleet.tmp / "plain.sh", "echo 'no such thing' >&2\nexit 1\n")
    path = fleet.custom_file("fail", {"one": ["sh", str(plain)]}, retries=0)
    result = fleet.fanout(path, env=_env(fleet))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BASE INTEGRITY" not in result.stderr
    assert fleet.report()["restored"] == []
    assert fleet.dotenv_values()["AUTHSCOPE_BASE_RESTORED"] == "false"


def test_wipe_then_transient_failure_and_successful_retry_exits_3(fleet: Fleet) -> None:
    crane = tool_path("crane")
    counter = fleet.tmp / "count"
    flaky = write_script(
        fleet.tmp / "flaky.sh",
        f'''n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{counter}"
if [ "$n" = 1 ]; then
  {WIPE.strip()}
  echo "GET https://$3/v2/: unexpected status code 503 Service Unavailable" >&2
  exit 1
fi
exec {crane} copy --insecure "$1" "$2"
''',
    )
    path = fleet.custom_file("wipe-retry", {"one": ["sh", str(flaky), "{source}", "{destination}", "{registry}"]})
    result = fleet.fanout(path, "--retries", "1", env=_env(fleet))
    assert result.returncode == 3, result.stdout + result.stderr
    doc = _assert_reported(fleet, result.stdout, result.stderr, "one")
    assert doc["targets"][0]["status"] == "ok" and doc["targets"][0]["attempts"] == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_wipe_then_signal_exits_3(fleet: Fleet, signum: int) -> None:
    slow = write_script(fleet.tmp / "slow.sh", WIPE + 'echo "started $1"\nsleep 30\n')
    path = fleet.custom_file("wipe-signal", {"one": ["sh", str(slow), "{name}"]})
    returncode, stdout, stderr = fleet.fanout_signalled(path, signum, env=_env(fleet))
    assert returncode == 3, stdout + stderr
    assert f"interrupted by signal {int(signum)}" in stderr
    doc = _assert_reported(fleet, stdout, stderr, "one")
    assert doc["signal"] == int(signum) and doc["targets"][0]["status"] == "interrupted"
    assert fleet.scopes_left() == []


def test_pull_once_pull_that_wipes_the_base_exits_3(fleet: Fleet, tmp_path: Path) -> None:
    """The pull runs in a scope of its own; a rogue `crane pull` that writes the
    base is caught there and reported under "pull"."""
    crane = tool_path("crane")
    shim = tmp_path / "shim"
    shim.mkdir()
    write_script(
        shim / "crane",
        f'if [ "$1" = pull ]; then {WIPE.strip()}; fi\nexec {crane} "$@"\n',
    )
    path = fleet.targets_file("crane")
    env = _env(fleet)
    env["PATH"] = f"{shim}:{env['PATH']}"
    result = fleet.fanout(path, "--pull-once", "--target", "one", env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    note = f"auths entry '{fleet.local.host}' was removed by a tool outside its scope; restored"
    assert "BASE INTEGRITY" in result.stderr and f"pull: {note}" in result.stderr
    assert fleet.report()["restored"] == [f"pull: {note}"]
    assert fleet.digest("one", "1.0") == fleet.source.digest  # the target still landed
    assert json.loads(fleet.base.read_text())["auths"] == json.loads(fleet.base_before)["auths"]
