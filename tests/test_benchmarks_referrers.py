"""Smoke test of benchmarks/referrers_fanout.py: a signed image fanned out with referrers on and off.

Not a timed test (a --quick run's figures on a busy test machine mean
nothing): it checks that the script still runs against the current CLI,
that each target got the three artifacts with referrers on and none with
--no-referrers (read from authscope's --json report), that cosign verify
tells the signed target from the control, and that nothing is left behind.
"""

from __future__ import annotations

import re

import pytest

from tests.test_benchmarks_smoke import REGISTRY_TOOLS, _require, _run, _table_rows


@pytest.mark.e2e
def test_referrers_fanout_quick_signs_copies_and_verifies() -> None:
    _require(*REGISTRY_TOOLS, "cosign", "oras")
    out = _run("referrers_fanout.py", "--quick", "--tools", "crane", timeout=180)
    runs = re.findall(r"run 1: crane\s+referrers (on|off)\s+[\d.]+s .*artifacts per target ([\d,]+);", out)
    assert sorted(runs) == [("off", "0,0"), ("on", "3,3")], out  # a signature, an attestation, one referrer
    rows = _table_rows(out, "tool ")
    assert [r[0] for r in rows] == ["crane"], out
    assert rows[0][7] == "3", out  # artifacts/target
    assert re.fullmatch(r"\d+\.\d\dx", rows[0][3]), out  # on/off
    assert re.search(
        r"^cosign verify --key at t1, tool crane: referrers on: verified; "
        r"--no-referrers \(control\): rejected: .*no signatures found",
        out,
        re.M | re.I,
    ), out
    assert re.search(
        r"^goal: referrers on <= 1.2x --no-referrers at N = 2, tool crane, .* -> (met|NOT met)$", out, re.M
    )
