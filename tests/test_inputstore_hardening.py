"""Hardening (issue 12): hostile targets files and an ever-growing journal.

Item 13: YAML aliases that never end (an anchor that contains its own
alias) or that expand a few hundred bytes into billions of values ("billion
laughs") are refused with exit 2, naming the file and the line, in well
under a second and a few MB. Each has a control showing what the bound and
the cycle check stand between: the node graph really is cyclic, and without
the bound the expansion grows ninefold per level.

Item 5 (unit side; tests/e2e/test_default_store.py runs the real docker
CLI): a scope's config always holds the sentinel entry, its commands find
refusing store shims first on PATH, the shims read nothing from stdin, and
the sentinel never stays in the base.

Item 14: the journal beside the base (`config.json.authscope`) stays under
64 KB whatever the history (control: without pruning 800 registries take it
past), and a scope opened before a burst of logins/logouts that prunes the
journal does not resurrect an entry that was logged out meanwhile (control:
ignoring the horizon, the guard would), while it still restores the base's
login that a tool removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from authscope import base as B
from authscope import dockerconfig as dc
from authscope import scope, targets
from authscope.errors import TargetsFileError
from tests.helpers import LOCAL_PASSWORD, TARGET_PASSWORD, read_json, write_config

# -- item 13: YAML aliases ------------------------------------------------------------------

SOURCE = "source: h.example/app:1\n"


def laughs(levels: int, width: int = 9) -> str:
    """A "billion laughs" file: each anchor holds ``width`` aliases of the one before."""
    lines = [SOURCE.rstrip("\n"), "a0: &a0 [" + ",".join(["lol"] * width) + "]"]
    for n in range(1, levels):
        lines.append(f"a{n}: &a{n} [" + ",".join([f"*a{n - 1}"] * width) + "]")
    lines.append(f"targets: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "authscope.yml"
    path.write_text(text)
    return str(path)


def run_fanout(main: Callable[..., int], path: str) -> tuple[int, float, int]:
    """(exit code, seconds, peak bytes allocated) of `authscope fanout --dry-run -f path`."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        code = main("fanout", "--dry-run", "-f", path)
    finally:
        seconds = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return code, seconds, peak


CYCLES = {
    "sequence": (SOURCE + "targets: &a [*a]\n", 2, "targets[0]: the alias *a stands for a node that contains it"),
    "mapping": (SOURCE + "a: &x {b: *x}\ntargets: []\n", 2, "a.b: the alias *x stands for a node that contains it"),
    "deeper": (
        SOURCE + "targets:\n  - &t\n    name: t\n    command: [echo, *t]\n",
        5,
        "targets[0].command[1]: the alias *t stands for a node that contains it",
    ),
    "merge": (SOURCE + "a: &x\n  <<: *x\ntargets: []\n", 2, "a: merges (<<) a mapping that merges it back"),
    "merge-inside": (
        SOURCE + "a: &x\n  b:\n    <<: *x\ntargets: []\n",
        4,
        "a.b.b: this mapping contains itself through aliases or merge keys",
    ),
}


@pytest.mark.parametrize("case", sorted(CYCLES))
def test_alias_cycle_is_refused_with_file_and_line(
    case: str, tmp_path: Path, main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    text, line, message = CYCLES[case]
    path = write(tmp_path, text)
    code, seconds, peak = run_fanout(main, path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}:{line}: {message}" in err
    assert "endless cycle" in err and "Traceback" not in err
    assert seconds < 5 and peak < 4_000_000


def test_control_an_alias_cycle_is_a_node_that_contains_itself() -> None:
    """What the cycle check stands between: pyyaml composes `&a [*a]` into a
    node that is its own child, so a walk without the check never ends (the
    conversion before this fix died of RecursionError, exit 70)."""
    root = yaml.compose(CYCLES["sequence"][0], Loader=yaml.SafeLoader)
    targets_node = root.value[1][1]
    assert targets_node.value[0] is targets_node
    mapping = yaml.compose(CYCLES["mapping"][0], Loader=yaml.SafeLoader).value[1][1]
    assert mapping.value[0][1] is mapping


def test_billion_laughs_is_refused_fast_and_small(
    tmp_path: Path, main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    text = laughs(9)  # 9**9: 387 million values
    assert len(text) < 500
    path = write(tmp_path, text)
    code, seconds, peak = run_fanout(main, path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}:" in err and "billion laughs" in err
    found = re.search(re.escape(path) + r":(\d+): ", err)
    assert found, err
    line = int(found.group(1))
    assert text.splitlines()[line - 1].startswith("a")  # the line of an anchor of aliases
    # Generous bounds for a noisy machine; measured here: ~0.1 s, ~1.5 MB.
    assert seconds < 5
    assert peak < 8_000_000


def test_merge_key_bomb_is_bounded(
    tmp_path: Path, main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    """`<<: [*a, *a, ...]` nine deep: pyyaml's flatten_mapping copies 9**9 pairs;
    merged keys are unique, so here it is nine keys, the values counted."""
    lines = [SOURCE.rstrip("\n"), "m0: &m0 {" + ", ".join(f"k{i}: [lol, lol, lol]" for i in range(9)) + "}"]
    for n in range(1, 9):
        lines.append(f"m{n}: &m{n} {{<<: [" + ", ".join([f"*m{n - 1}"] * 9) + f"], k{n}x: *m{n - 1}}}")
    lines.append("targets: []")
    path = write(tmp_path, "\n".join(lines) + "\n")
    code, seconds, peak = run_fanout(main, path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "billion laughs" in err
    assert seconds < 5 and peak < 8_000_000


def test_control_without_the_bound_the_expansion_is_exponential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bound off, each level multiplies the values by nine, and the
    same nine-level file is still being expanded when the 5 s the bounded
    conversion is held to are up (it would need hours and tens of GB)."""
    monkeypatch.setattr(targets, "MAX_ALIAS_NODES", 10**12)
    counts = []
    for levels in (2, 3, 4):
        _, doc = targets._read_yaml(write(tmp_path, laughs(levels)))
        counts.append(doc.repeated)
    assert counts[1] > 8 * counts[0] and counts[2] > 8 * counts[1]

    path = write(tmp_path, laughs(9))
    unbounded = f"from authscope import targets; targets.MAX_ALIAS_NODES = 10**12; targets._read_yaml({path!r})"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", unbounded], timeout=5, check=False, capture_output=True)
    bounded = f"from authscope import targets; targets._read_yaml({path!r})"
    result = subprocess.run([sys.executable, "-c", bounded], timeout=60, check=False, capture_output=True, text=True)
    assert "TargetsFileError" in result.stderr and "billion laughs" in result.stderr


def test_a_long_chain_of_aliases_is_refused_not_crashed(
    tmp_path: Path, main: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each anchor holds the previous one: 1100 levels deep through aliases,
    past Python's recursion limit, in a flat file."""
    lines = [SOURCE.rstrip("\n"), "c0: &c0 [x]"] + [f"c{n}: &c{n} [*c{n - 1}]" for n in range(1, 1100)]
    path = write(tmp_path, "\n".join(lines) + "\ntargets: []\n")
    code, _, _ = run_fanout(main, path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "nested too deeply" in err and "Traceback" not in err


def test_anchors_and_merge_keys_on_many_targets_still_load(tmp_path: Path) -> None:
    """The bound leaves room: 300 targets, each `<<: *defaults` with tags by alias."""
    head = (
        SOURCE + "x-defaults: &defaults\n  repository: release/app\n  username: robot$ci\n  tags: &tags [v1, latest]\n"
    )
    head += "  password_env: PW\n  insecure: true\ntargets:\n"
    body = "".join(
        f"  - <<: *defaults\n    name: t{i}\n    registry: r{i}.example\n    tags: *tags\n" for i in range(300)
    )
    # x-defaults is not a known key: load the YAML part, which is what the bound guards.
    data, doc = targets._read_yaml(write(tmp_path, head + body))
    assert not doc.problems
    assert len(data["targets"]) == 300
    assert data["targets"][299] == {
        "repository": "release/app",
        "username": "robot$ci",
        "tags": ["v1", "latest"],
        "password_env": "PW",
        "insecure": True,
        "name": "t299",
        "registry": "r299.example",
    }


def test_merge_key_order_matches_pyyaml(tmp_path: Path) -> None:
    """Own keys override merged ones; of `<<: [*a, *b]` the first wins; the
    anchor a merge shares is not changed for its next use."""
    text = (
        "a: &a {x: from-a, y: from-a}\n"
        "b: &b {x: from-b, z: from-b}\n"
        "c: &c {<<: [*a, *b], y: own}\n"
        "d: {<<: *c}\n"
        "e: {<<: *c, x: own-e}\n"
    )
    data, doc = targets._read_yaml(write(tmp_path, text))
    assert not doc.problems
    expected = yaml.safe_load(text)
    assert data == expected
    assert data["d"] == {"x": "from-a", "y": "own", "z": "from-b"}


def test_a_bad_merge_value_is_a_problem_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(TargetsFileError) as info:
        targets.load(
            write(tmp_path, SOURCE + "targets:\n  - <<: just-a-string\n    name: t\n    registry: r.example\n"),
            {"PW": "x"},
        )
    found = [str(p) for p in info.value.problems]
    assert any(":3: targets[0]: << (a merge key) takes a mapping or a list of mappings" in p for p in found), found


# -- item 14: the journal is bounded ----------------------------------------------------------

LOCAL = "gitlab.local:4567"
LOCAL_ENTRY = dc.auth_entry("gitlab-ci-token", LOCAL_PASSWORD)
ENTRY = dc.auth_entry("robot", "other-test-password-0003")
BOUND = 64 * 1024


def journal_of(directory: Path) -> B.Journal:
    return B.parse_journal((directory / "config.json.authscope").read_bytes())


def burst(directory: Path, count: int, prefix: str = "r") -> None:
    """What a job that logs in and out of ``count`` registries does to the base."""
    for i in range(count):
        B.login(str(directory), f"{prefix}{i:04d}.example", ENTRY)
        B.logout(str(directory), f"{prefix}{i:04d}.example")


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs where there is one: 4000 base writes, each with
    two fsyncs, take minutes on a shared runner's disk and seconds there."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        directory = Path(tempfile.mkdtemp(prefix="authscope-test-", dir="/dev/shm"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory)
    else:
        yield tmp_path


@pytest.fixture
def small_horizon(monkeypatch: pytest.MonkeyPatch) -> int:
    """Fewer records kept, so a burst that passes the horizon is short; the
    mechanism is the same at any size (the bound test uses the real one)."""
    monkeypatch.setattr(B, "KEEP_ABSENT", 16)
    return 16


def test_journal_stays_bounded_after_2000_registries(fast_dir: Path) -> None:
    base = fast_dir / "base"
    B.login(str(base), LOCAL, LOCAL_ENTRY)
    burst(base, 2000)
    size = (base / "config.json.authscope").stat().st_size
    assert size <= BOUND, size
    journal = journal_of(base)
    assert journal.generation == 4001
    assert len(journal.entries) == B.KEEP_ABSENT + 1
    assert journal.entries[("auths", LOCAL)] == (1, B.fingerprint(B.canonical(LOCAL_ENTRY)))
    # The horizon: every record newer than it is kept.
    assert min(g for g, _ in journal.entries.values() if g > 1) > journal.pruned_through > 0


def test_control_without_pruning_the_journal_grows_with_history(
    fast_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(B, "KEEP_ABSENT", 10**9)
    base = fast_dir / "base"
    B.login(str(base), LOCAL, LOCAL_ENTRY)
    burst(base, 1000)
    assert (base / "config.json.authscope").stat().st_size > BOUND
    assert journal_of(base).pruned_through == 0


def _open(base: Path, tmp_path: Path) -> Any:
    scopes = tmp_path / "scopes"
    scopes.mkdir(exist_ok=True, mode=0o700)
    return scope.open_scope(
        B.Base(str(base)), "harbor.x", dc.auth_entry("robot$p+ci", TARGET_PASSWORD), root=str(scopes)
    )


def test_scope_older_than_the_horizon_does_not_resurrect_a_logout(tmp_path: Path, small_horizon: int) -> None:
    """Another authscope logs "old.example" out while a scope is open, then
    a burst of logins/logouts prunes that logout's record. The guard cannot
    tell the logout from damage and does not bring the credential back."""
    base = tmp_path / "base"
    B.login(str(base), LOCAL, LOCAL_ENTRY)
    B.login(str(base), "old.example", ENTRY)
    with _open(base, tmp_path) as (opened, _):
        B.logout(str(base), "old.example")
        burst(base, small_horizon + 20)
        assert ("auths", "old.example") not in journal_of(base).entries  # pruned
    assert set(read_json(base / "config.json")["auths"]) == {LOCAL}
    assert [(d.path, d.what, d.restorable) for d in opened.damage] == [(("auths", "old.example"), "gone", False)]
    assert "did not restore it" in opened.damage[0].describe()


def test_control_ignoring_the_horizon_the_guard_resurrects_the_logout(tmp_path: Path, small_horizon: int) -> None:
    """The same history: a guard that read the pruned journal as complete
    would take the logout for damage and restore the logged-out credential."""
    base = tmp_path / "base"
    B.login(str(base), LOCAL, LOCAL_ENTRY)
    B.login(str(base), "old.example", ENTRY)
    b = B.Base(str(base))
    snap = b.snapshot()
    B.logout(str(base), "old.example")
    burst(base, small_horizon + 20)
    current = B.flatten(read_json(base / "config.json"))
    journal = b.read_journal()
    resurrect = B.find_damage(snap, current, journal._replace(pruned_through=0))
    assert [(d.path, d.what, d.restorable) for d in resurrect] == [(("auths", "old.example"), "removed", True)]
    assert [d.what for d in B.find_damage(snap, current, journal)] == ["gone"]


def test_without_a_burst_the_guard_stays_exact(tmp_path: Path, small_horizon: int) -> None:
    """Below the horizon nothing changes: a logout during the scope is
    recognised as legitimate, silently."""
    base = tmp_path / "base"
    B.login(str(base), LOCAL, LOCAL_ENTRY)
    burst(base, small_horizon + 20)  # the journal was pruned before the scope opened
    B.login(str(base), "old.example", ENTRY)
    with _open(base, tmp_path) as (opened, _):
        B.logout(str(base), "old.example")
        burst(base, small_horizon // 4, prefix="s")
    assert opened.damage == []
    assert set(read_json(base / "config.json")["auths"]) == {LOCAL}


def _prune_by_age_only(entries: Any, present: Any, pruned_through: int) -> int:
    absent = sorted((record[0], path) for path, record in entries.items() if path not in present)
    for generation, path in absent[: max(0, len(absent) - B.KEEP_ABSENT)]:
        del entries[path]
        pruned_through = max(pruned_through, generation)
    return pruned_through


@pytest.mark.parametrize("prune", ["logouts-first", "control-by-age-only"])
def test_old_scope_still_restores_the_local_login_a_tool_removed(
    prune: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_horizon: int
) -> None:
    """The base's login was written by a tool (`docker login`, no authscope
    record), a tool outside its scope removes it during a burst that prunes
    the journal: the scope still restores it, because pruning drops logouts
    first and every entry present at a write gets a record. Control: pruning
    by age alone drops that record, and the login is only reported gone."""
    if prune == "control-by-age-only":
        monkeypatch.setattr(B, "prune", _prune_by_age_only)
    base = tmp_path / "base"
    write_config(base, {"auths": {LOCAL: LOCAL_ENTRY}})
    with _open(base, tmp_path) as (opened, _):
        burst(base, 10)
        assert journal_of(base).entries[("auths", LOCAL)][0] == 0  # known, written by no authscope
        cfg = read_json(base / "config.json")
        del cfg["auths"][LOCAL]
        (base / "config.json").write_text(json.dumps(cfg))  # the tool outside its scope
        burst(base, small_horizon + 20, prefix="s")
    restored = read_json(base / "config.json")["auths"].get(LOCAL)
    if prune == "logouts-first":
        assert [(d.path, d.what) for d in opened.damage] == [(("auths", LOCAL), "removed")]
        assert restored == LOCAL_ENTRY
    else:
        assert [(d.path, d.what) for d in opened.damage] == [(("auths", LOCAL), "gone")]
        assert restored is None


# -- item 5: no default store from a scope ------------------------------------------------------

EXEC = ["exec", "--registry", "harbor.x", "-u", "robot$p+ci", "--password-env", "TARGET_PASSWORD", "--"]


def test_scope_config_holds_the_sentinel_and_path_starts_with_the_shims(
    logged_in: Path, main: Callable[..., int], capfd: pytest.CaptureFixture[str]
) -> None:
    probe = (
        'echo "PATH=${PATH%%:*}"; ls "$DOCKER_CONFIG/bin"; '
        "python3 -c \"import json,os; print(sorted(json.load(open(os.environ['DOCKER_CONFIG'] + '/config.json'))['auths']))\"; "
        "for s in secretservice pass osxkeychain wincred desktop; do command -v docker-credential-$s; done"
    )
    assert main(*EXEC, "sh", "-c", probe) == 0
    out = capfd.readouterr().out.splitlines()
    shims = out[0].removeprefix("PATH=")
    assert shims.endswith("/bin") and Path(shims).parent.name.startswith("authscope-")
    assert out[1:6] == sorted(f"docker-credential-{s}" for s in scope.DEFAULT_STORES)
    assert out[6] == repr(sorted([dc.SENTINEL, "gitlab.local:4567", "harbor.x"]))
    assert out[7:] == [
        f"{shims}/docker-credential-{s}" for s in ("secretservice", "pass", "osxkeychain", "wincred", "desktop")
    ]
    assert dc.SENTINEL not in read_json(logged_in)["auths"]


@pytest.mark.parametrize("action", ["store", "get", "erase", "list"])
def test_shims_refuse_without_reading_stdin(tmp_path: Path, action: str) -> None:
    scope._lay_shims(str(tmp_path))
    shim = tmp_path / "bin" / "docker-credential-secretservice"
    assert oct(shim.stat().st_mode & 0o777) == "0o700"
    secret = json.dumps({"ServerURL": "harbor.x", "Username": "robot", "Secret": TARGET_PASSWORD})
    result = subprocess.run([str(shim), action], input=secret, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "docker-credential-secretservice refused" in result.stderr
    assert TARGET_PASSWORD not in result.stdout + result.stderr
    # docker reads stdout: `get` says "not found" (anonymous), the rest carry the reason.
    expected = "credentials not found in native keychain" if action == "get" else "refused"
    assert expected in result.stdout


def test_reset_lays_the_shims_again_after_the_scope_was_removed(tmp_path: Path) -> None:
    path = tmp_path / "scope"
    path.mkdir(mode=0o700)
    opened = scope.Scope(str(path), False, b"{}")
    opened.reset()
    shutil.rmtree(path)  # `rm -rf "$DOCKER_CONFIG"` in the previous command
    opened.reset()
    assert sorted(os.listdir(path / "bin")) == sorted(f"docker-credential-{s}" for s in scope.DEFAULT_STORES)


def test_path_without_path_keeps_the_default_search(tmp_path: Path) -> None:
    env = scope.Scope(str(tmp_path), False).env({})
    assert env["PATH"] == f"{tmp_path}/bin{os.pathsep}{os.defpath}"


def test_sentinel_copied_into_the_base_is_removed_by_the_guard(
    logged_in: Path, main: Callable[..., int], capfd: pytest.CaptureFixture[str]
) -> None:
    """A tool that writes the scope's config over the base's brings the
    target's login and the sentinel along: both are taken out again (exit 3)."""
    before = read_json(logged_in)
    code = main(*EXEC, "sh", "-c", f'cp "$DOCKER_CONFIG/config.json" {logged_in}')
    assert code == 3
    err = capfd.readouterr().err
    assert "BASE INTEGRITY" in err and f"auths entry '{dc.SENTINEL}', which only a scope's config holds" in err
    assert read_json(logged_in) == before


def test_control_a_sentinel_the_base_already_held_is_no_damage(tmp_path: Path) -> None:
    """A base that is itself a scope (a job scope) holds the sentinel when
    the target's scope opens: it is part of the snapshot, not a leak."""
    base = tmp_path / "base"
    write_config(base, {"auths": {dc.SENTINEL: {}, LOCAL: LOCAL_ENTRY}})
    with _open(base, tmp_path) as (opened, _):
        pass
    assert opened.damage == []
    assert read_json(base / "config.json")["auths"] == {dc.SENTINEL: {}, LOCAL: LOCAL_ENTRY}
