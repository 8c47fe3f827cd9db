"""Hardening (issue 12): hostile targets files and an ever-growing journal.

Item 13: YAML aliases that never end (an anchor that contains its own
alias) or that expand a few hundred bytes into billions of values ("billion
laughs") are refused with exit 2, naming the file and the line, in well
under a second and a few MB. Each has a control showing what the bound and
the cycle check stand between: the node graph really is cyclic, and without
the bound the expansion grows ninefold per level.

Item 14: see the journal tests below.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest
import yaml

from authscope import targets
from authscope.errors import TargetsFileError

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
