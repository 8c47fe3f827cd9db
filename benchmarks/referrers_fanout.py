"""What carrying a signed release's referrers costs: `authscope fanout --jobs N` with referrers on vs off.

The WAN lab of benchmarks/wan_fanout.py (benchmarks/_harness.py): one source
and N target registries (docker-registry, htpasswd auth, plain HTTP on
127.0.0.1, or HTTPS with --tls), each behind benchmarks/wanproxy.py adding
--delay-ms each way (default 25 ms: a 50 ms round trip, one more for each new
connection). Before every run a new image (new blobs) of --layers layers
totalling --image-mb MB is published to the source, and, directly (not
through the WAN, not timed), given what a release carries:

  a signature     `cosign sign --key cosign.key --tlog-upload=false`   (tag sha256-<hex>.sig)
  an attestation  `cosign attest --key cosign.key --type spdxjson`     (tag sha256-<hex>.att)
  one referrer    `oras attach --artifact-type application/spdx+json`  (an OCI 1.1 referrer; the
                  distribution registry has no referrers API, so oras writes the fallback tag sha256-<hex>)

Then, alternating which goes first, --repeat times per tool:
`authscope fanout --jobs N` (referrers on: the default) and the same with
`--no-referrers`, each into repositories new to every target registry. The
cosign key's password is only ever in COSIGN_PASSWORD; the registries'
passwords only in environment variables.

Shown per tool: the median wall times, the ratio on/off (goal, issue 14: at
most 1.2x at N = 8), the median per-target duration from the JSON report,
the artifacts each target got (`"referrers"` of `--json`), and the load
average before and after each run (everything shares this machine's cpus
with the registries and the WAN proxies). At the end, `cosign verify --key`
at one target of the last run with referrers on must succeed, and at one
target of the last run without them must fail (the control).

  python3 benchmarks/referrers_fanout.py                       # N = 8, crane and skopeo, 3 runs each way
  python3 benchmarks/referrers_fanout.py --tools crane,skopeo,regctl --repeat 5
  python3 benchmarks/referrers_fanout.py --tls
  python3 benchmarks/referrers_fanout.py --quick               # smoke: N = 2, 1 run, a 2 MB image
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import _harness as H

SPDX = "application/spdx+json"
TOOLS = ("crane", "skopeo", "regctl")
WAYS = ("on", "off")  # referrers on (the default) / --no-referrers
GOAL = 1.2


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


@dataclass
class Signer:
    """cosign and oras, run against the source registry directly (set-up: not through the WAN, not timed)."""

    lab: H.Lab
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    key: Path = Path()
    pub: Path = Path()
    sbom: Path = Path()

    def start(self) -> Signer:
        self.env = self.lab.environment("signer")
        self.env["COSIGN_PASSWORD"] = "bench-" + secrets.token_hex(8)
        source = self.lab.source.registry
        auths = {source.host: {"auth": base64.b64encode(f"{source.username}:{source.password}".encode()).decode()}}
        self.config = Path(self.env["DOCKER_CONFIG"]) / "config.json"
        self.config.write_text(json.dumps({"auths": auths}))
        self.config.chmod(0o600)
        self.root.mkdir(parents=True, exist_ok=True)
        self.run(["cosign", "generate-key-pair"], cwd=self.root)
        self.key, self.pub = self.root / "cosign.key", self.root / "cosign.pub"
        self.sbom = self.root / "sbom.spdx.json"
        self.sbom.write_text(
            json.dumps(
                {
                    "spdxVersion": "SPDX-2.3",
                    "SPDXID": "SPDXRef-DOCUMENT",
                    "name": "app",
                    "dataLicense": "CC0-1.0",
                    "documentNamespace": "https://example.invalid/app",
                    "creationInfo": {"created": "2024-01-01T00:00:00Z", "creators": ["Tool: authscope-bench"]},
                    "packages": [],
                }
            )
        )
        return self

    def run(self, argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            argv, env=env or self.env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    @property
    def flags(self) -> list[str]:
        return ["--tlog-upload=false", "--allow-http-registry", "--allow-insecure-registry"]

    def sign_current(self) -> None:
        """Sign, attest and attach a referrer to the lab's current image."""
        subject = f"{self.lab.source.registry.host}/app@{self.lab.digest}"
        self.run(["cosign", "sign", "--yes", "--key", str(self.key), *self.flags, subject])
        self.run(
            [
                "cosign",
                "attest",
                "--yes",
                "--key",
                str(self.key),
                "--type",
                "spdxjson",
                "--predicate",
                str(self.sbom),
                *self.flags,
            ]
            + [subject]
        )
        tls = ["--ca-file", self.lab.ca_file] if self.lab.tls else ["--plain-http"]
        self.run(
            [
                "oras",
                "attach",
                *tls,
                "--registry-config",
                str(self.config),
                "--artifact-type",
                SPDX,
                subject,
                f"{self.sbom.name}:{SPDX}",
            ],
            cwd=self.root,
        )

    def verify(self, target: H.Target) -> subprocess.CompletedProcess[str]:
        """`cosign verify --key` at a target, directly, with a login of the verifier's own."""
        registry = target.endpoint.registry
        env = self.lab.environment("verifier")
        auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        Path(env["DOCKER_CONFIG"], "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        argv = [
            "cosign",
            "verify",
            "--key",
            str(self.pub),
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            f"{registry.host}/{target.repository}:1.0",
        ]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


@dataclass
class Sample:
    seconds: float
    per_target: float  # the median of the report's per-target durations
    artifacts: list[int]  # per target: len("referrers")
    load_before: str
    load_after: str


def fanout(lab: H.Lab, signer: Signer, targets: list[H.Target], tool: str, way: str) -> tuple[Sample, str]:
    """One timed `authscope fanout`; returns the sample and the verdict of `cosign verify` at t1."""
    env = lab.environment(f"{way}-{tool}")
    work = Path(env["HOME"])
    log = work / "authscope.log"
    login = [*H.AUTHSCOPE, "login", lab.source.host, "-u", H.USER, "--password-env", "SOURCE_PASSWORD"]
    H.run(login, env, log).check("authscope login")
    lab.new_image()
    signer.sign_current()
    spec = H.targets_file(work / "authscope.yml", lab, targets, tool, len(targets), False)
    report = work / "report.json"
    argv = [*H.AUTHSCOPE, "fanout", "-f", str(spec), "--jobs", str(len(targets)), "--json", str(report)]
    if way == "off":
        argv.append("--no-referrers")
    before = _load()
    outcome = lab.timed(argv, env, log, cwd=work).check(" ".join(argv[3:4] + argv[-1:]))
    after = _load()
    lab.verify(targets)
    doc = json.loads(report.read_text())
    rows = doc["targets"]
    artifacts = [len(t.get("referrers") or []) for t in rows]
    verified = signer.verify(targets[0])
    verdict = "verified" if verified.returncode == 0 else "rejected: " + _last_line(verified.stderr)
    lab.prune()
    sample = Sample(outcome.seconds, H.median([float(t["duration"]) for t in rows]), artifacts, before, after)
    return sample, verdict


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else "(no output)"


def main() -> int:
    p = H.base_parser(__doc__)
    p.add_argument("--targets", type=int, default=8, help="N: targets, one per registry (default 8)")
    p.add_argument(
        "--tools", default="crane,skopeo", help="comma-separated: crane, skopeo, regctl (default crane,skopeo)"
    )
    p.add_argument("--repeat", type=int, default=3, help="runs each way per tool; the median is shown (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: N = 2; 2 MB in 2 layers; 10 ms; 1 run each way")
    H.interpreter_option(p)
    a = p.parse_args()
    if a.quick:
        a.targets, a.image_mb, a.layers, a.delay_ms, a.repeat = 2, 2.0, 2, 10.0, 1
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    for tool in tools:
        if tool not in TOOLS:
            p.error(f"--tools: {tool!r} is not one of {', '.join(TOOLS)}")
    if a.targets < 1 or a.repeat < 1:
        p.error("--targets and --repeat must be at least 1")
    n = a.targets

    H.require(*tools, "cosign", "oras")
    interpreter = H.clean_interpreter(a.this_python)
    H.header("referrers_fanout: authscope fanout --jobs N of a signed image, referrers on vs --no-referrers", tools)
    print(interpreter)
    for signer_tool in ("cosign", "oras"):
        path = H.tool_path(signer_tool)
        proc = subprocess.run([str(path), "version"], capture_output=True, text=True, timeout=30, check=False)
        version = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in (proc.stdout + proc.stderr).splitlines()
                if ln.startswith(("GitVersion", "Version"))
            ),
            "?",
        )
        print(f"{signer_tool}: {version} ({path})")
    transport = H.transport(a.tls)
    print(
        f"N = {n}, one target registry each; {a.repeat} run(s) each way per tool (median), alternating which "
        f"goes first; every registry speaks {transport}; the source carries a cosign signature, a cosign "
        "attestation (spdxjson) and one oras referrer (application/spdx+json)",
        flush=True,
    )
    print("authscope, run as: python -m authscope fanout -f authscope.yml --jobs N --json report.json [--no-referrers]")
    print(flush=True)

    cells: dict[tuple[str, str], list[Sample]] = {}
    verdicts: dict[tuple[str, str], str] = {}
    with H.open_lab(a, n) as lab:
        signer = Signer(lab, lab.work / "signer").start()
        for rep in range(a.repeat):
            for tool in tools:
                ways = WAYS if rep % 2 == 0 else WAYS[::-1]
                for way in ways:
                    sample, verdict = fanout(lab, signer, lab.pick(n, f"{way}-{tool}"), tool, way)
                    cells.setdefault((tool, way), []).append(sample)
                    verdicts[(tool, way)] = verdict
                    print(
                        f"  run {rep + 1}: {tool:6} referrers {way:3}  {sample.seconds:6.2f}s  "
                        f"(per target {sample.per_target:5.2f}s, artifacts per target "
                        f"{','.join(map(str, sample.artifacts))}; load {sample.load_before} -> {sample.load_after})",
                        flush=True,
                    )
        image = lab.image_bytes

    print()
    rows = []
    for tool in tools:
        on, off = cells[(tool, "on")], cells[(tool, "off")]
        t_on, t_off = H.median([s.seconds for s in on]), H.median([s.seconds for s in off])
        p_on, p_off = H.median([s.per_target for s in on]), H.median([s.per_target for s in off])
        copied = sorted({c for s in on for c in s.artifacts})
        rows.append(
            [
                tool,
                f"{t_off:.2f}",
                f"{t_on:.2f}",
                f"{t_on / t_off:.2f}x",
                f"{p_off:.2f}",
                f"{p_on:.2f}",
                f"{p_on - p_off:+.2f}",
                "/".join(map(str, copied)),
                " ".join(s.load_after.split("/")[0] for s in on + off),
            ]
        )
    print(
        f"wall time in seconds, N = {n}, {transport} lab (image {image / H.MB:.1f} MB, {2 * a.delay_ms:g} ms RTT), "
        f"median of {a.repeat}"
    )
    print(
        H.table(
            [
                "tool",
                "--no-referrers",
                "referrers on",
                "on/off",
                "per target off",
                "per target on",
                "extra per target",
                "artifacts/target",
                "load (1 min) after each run",
            ],
            rows,
        )
    )
    print()
    failed = False
    for tool in tools:
        on, off = verdicts[(tool, "on")], verdicts[(tool, "off")]
        print(f"cosign verify --key at t1, tool {tool}: referrers on: {on}; --no-referrers (control): {off}")
        failed |= on != "verified" or off == "verified"
    for tool in tools:
        ratio = H.median([s.seconds for s in cells[(tool, "on")]]) / H.median([s.seconds for s in cells[(tool, "off")]])
        print(
            f"goal: referrers on <= {GOAL}x --no-referrers at N = {n}, tool {tool}, {transport} lab: {ratio:.2f}x -> "
            + ("met" if ratio <= GOAL else "NOT met")
        )
    if failed:
        print("FAILED: cosign verify did not tell the signed targets from the unsigned ones", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = H.run_main(main)
    print(f"took {time.perf_counter() - start:.0f}s")
    sys.exit(code)
