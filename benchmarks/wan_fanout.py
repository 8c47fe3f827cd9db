"""Fan-out at WAN latency: `authscope fanout --jobs N` against the serial shell loop.

One source and up to 16 target registries (docker-registry, htpasswd auth,
plain HTTP on 127.0.0.1, or HTTPS with --tls), each behind
benchmarks/wanproxy.py adding --delay-ms each way (default 25 ms: a 50 ms
round trip, one more for each new connection). An image of --layers layers
totalling --image-mb MB is copied to N targets, N = 1, 2, 4, 8, 16, two
ways, with the same tool:

  serial loop   what a release job does without authscope: in one shared
                Docker config, per target `TOOL login --password-stdin`,
                `TOOL copy`, `TOOL logout` (crane auth login/copy/logout;
                skopeo login/copy/logout)
  authscope     `authscope fanout --jobs N` with a generated authscope.yml
                (tool: crane / skopeo); per target a scope, a /v2/ credential
                check, the copy, and a digest read-back

authscope runs under a clean interpreter by default, as in the authscope
image (Debian's python3): a venv of this Python made for the run, whose one
.pth puts plugin/ and this interpreter's site-packages on the path, so none
of this machine's .pth files run at every start (the by-hand side is bash);
--this-python runs it under sys.executable instead. The header says which.

Each run starts from a fresh isolated HOME / DOCKER_CONFIG, has the source
login done beforehand (not timed), and copies into repositories new to every
target registry, so nothing is skipped as already there. Every target's
digest is checked after every run. Passwords reach the tools through
environment variables and stdin only.

--tls runs the whole lab over TLS, as real release targets (Harbor, GitLab's
registry) are: every registry serves a certificate from one throwaway CA for
127.0.0.1, which the proxies relay unchanged (they are TCP proxies). Nothing
runs insecure: the loop's tools verify (crane copy without --insecure,
skopeo --tls-verify=true) and trust the CA through SSL_CERT_FILE, and
authscope.yml gives the source and every target `ca_file:` instead of
`insecure: true`. The default is plain HTTP; every report names its lab's
transport ("plain HTTP" / "TLS (HTTPS)") in the lab line and in each table's
heading.

--pull-once runs authscope with pull_once (the source is fetched once into a
local OCI layout and every target is pushed from it); the loop is the same
loop. The tables' heading says so.

Everything runs on this machine: the registries' and the proxies' CPU is
shared with the clients, which a real WAN fan-out to remote registries does
not do. So each run also reports the CPU it used, by whom, and the "CPU
floor" (all CPU seconds / cpus) below which no run can go here.

--limit adds the real limit, and --regsync the best declarative peer, as
yardsticks (the serial loop stays as context):

  by hand       the same tool's copies all at once, as a user writes them
                without authscope: a bash script that starts, per target in
                the background (`&`), a copy in its own DOCKER_CONFIG after
                one login of the source and one of the target there, then
                `wait`s for every one; timed whole, logins included
  regsync       `regsync once` (regclient v0.11.7, installed by
                scripts/install-deps.sh) with a config of the same targets and
                `parallel: N`; passwords through its `{{env "VAR"}}`
                templates (not in the file, not in argv); plain HTTP
                `tls: disabled`, TLS the lab CA as `regcert`

and prints authscope / by hand and authscope / regsync per N and tool (every
way of a cell runs in turn, the order rotating from run to run; medians).
Goal (issue 16): authscope <= 1.05x by hand, and below regsync, at N = 8.

--trace runs one more fan-out per tool at the largest N with
AUTHSCOPE_TRACE set and prints its per-target timeline: when each target's
credential check ran, when its tool started and ended, its read-back, and
the HTTP requests authscope made (new connections, 401s, tokens).
--plot PATH writes a PNG of time against N (one panel per tool) for every
way measured, with matplotlib (`pip install 'authscope[bench]'`); without
it the run says so and carries on.

  python3 benchmarks/wan_fanout.py                 # the full set, 3 runs per cell (~10 minutes)
  python3 benchmarks/wan_fanout.py --quick         # smoke: N = 1, 2, a 2 MB image
  python3 benchmarks/wan_fanout.py --quick --tls   # the same over TLS (HTTPS)
  python3 benchmarks/wan_fanout.py --tools crane --targets 8 --repeat 5
  python3 benchmarks/wan_fanout.py --tls --tools crane --pull-once
  python3 benchmarks/wan_fanout.py --tools crane,skopeo --targets 1,4,8,16 --limit --regsync --plot fanout.png
  python3 benchmarks/wan_fanout.py --tools crane --targets 8 --trace
  python3 benchmarks/wan_fanout.py --rerun          # a re-run of an up-to-date 8-target fan-out

--rerun (issue 15) measures a re-run instead: an 8-target fan-out (--targets
gives N, default 8 in this mode) lands once, then the same release is run
again --repeat times: every target is up to date, so nothing may be copied.
Shown: its wall time, the bytes the source sent through its WAN proxy (no
blob may be read: only the source's manifest HEAD), and, as controls, the
first run and a --force re-run. Goal: at most 0.5 s plus one round trip per
tag, and no blob read from the source.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import _harness as H


def main() -> int:
    p = H.base_parser(__doc__)
    p.add_argument("--targets", default="1,2,4,8,16", help="values of N, comma-separated (default 1,2,4,8,16)")
    p.add_argument("--tools", default="crane,skopeo", help="comma-separated: crane, skopeo (default both)")
    p.add_argument("--registries", type=int, default=0, help="target registries (default: the largest N)")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown (default 3)")
    p.add_argument(
        "--pull-once",
        action="store_true",
        help="authscope fetches the source once and pushes every target from it (the loop is unchanged)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: N = 1, 2; 2 MB in 2 layers; 10 ms; 2 registries; 1 run"
    )
    p.add_argument(
        "--rerun",
        action="store_true",
        help="measure a re-run of an up-to-date fan-out (N = 8 unless --targets): time, bytes from the source",
    )
    p.add_argument("--limit", action="store_true", help="also time the same copies by hand in parallel (the limit)")
    p.add_argument("--regsync", action="store_true", help="also time `regsync once` with parallel: N")
    p.add_argument("--no-loop", action="store_true", help="skip the serial loop (context only; slow at large N)")
    p.add_argument("--trace", action="store_true", help="print one traced fan-out's timeline per tool (largest N)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of time against N (needs matplotlib)")
    H.interpreter_option(p)
    a = p.parse_args()
    if a.rerun:
        return rerun(a)
    if a.quick:
        a.targets, a.image_mb, a.layers, a.delay_ms, a.registries, a.repeat = "1,2", 2.0, 2, 10.0, 2, 1
    ns = sorted({int(x) for x in a.targets.split(",") if x.strip()})
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    for tool in tools:
        if tool not in H.SERIAL_LOOP:
            p.error(f"--tools: {tool!r} is not one of {', '.join(H.SERIAL_LOOP)}")
    registries = a.registries or max(ns)

    interpreter = H.clean_interpreter(a.this_python)  # before the header: it names authscope's version
    H.header("wan_fanout: authscope fanout --jobs N vs the serial login/copy/logout loop", tools)
    H.require(*tools, *(["regsync"] if a.regsync else []))
    transport = H.transport(a.tls)
    print(
        f"N = {', '.join(map(str, ns))}; {a.repeat} run(s) per cell (median); targets spread over "
        f"{registries} target registr{'y' if registries == 1 else 'ies'}"
        + (" (several repositories per registry)" if registries < max(ns) else " (one registry per target)")
        + f"; every registry speaks {transport}",
        flush=True,
    )

    trust = " and SSL_CERT_FILE=LAB_WORK_DIR/ca/ca.crt (the lab CA)" if a.tls else ""
    for tool in tools:
        print(f"\nserial loop ({tool}), run as: bash loop.sh 'HOST/REPO:1.0 PASSWORD_VARIABLE'...{trust}")
        print("\n".join("  | " + line for line in H.loop_script(tool, a.tls).strip().splitlines()))
        if a.limit:
            print(f"by hand in parallel ({tool}), run as: bash byhand.sh 'HOST/REPO:1.0 PASSWORD_VARIABLE'...{trust}")
            print("\n".join("  | " + line for line in H.by_hand_script(tool, a.tls).strip().splitlines()))
    if a.regsync:
        print("regsync, run as: regsync once -c regsync.yml -v warn, with a regsync.yml like")
        print("  | " + "\n  | ".join(yardstick_sample(a.tls).splitlines()))
    print("authscope, run as: python -m authscope fanout -f authscope.yml --jobs N, with an authscope.yml like")
    print("  | " + "\n  | ".join(H.sample_file(" / ".join(tools), a.tls).splitlines()))
    print(flush=True)

    print(H.compile_bytecode(), flush=True)
    print(interpreter, flush=True)
    # (tool, n, way) -> outcomes
    cells: dict[tuple[str, int, str], list[H.Outcome]] = {}
    every = [
        w for w, on in (("loop", not a.no_loop), ("authscope", True), ("limit", a.limit), ("regsync", a.regsync)) if on
    ]
    with H.open_lab(a, registries) as lab:
        for rep in range(a.repeat):
            for n in ns:
                for tool in tools:
                    ways = every[rep % len(every) :] + every[: rep % len(every)]  # the order rotates
                    for way in ways:
                        targets = lab.pick(n, f"{way}-{tool}")
                        if way == "loop":
                            outcome = H.serial_loop(lab, targets, tool)
                        elif way == "limit":
                            outcome = H.parallel_by_hand(lab, targets, tool)
                        elif way == "regsync":
                            outcome = H.regsync_once(lab, targets)
                        else:
                            outcome = H.authscope_fanout(lab, targets, tool, pull_once=a.pull_once)
                        cells.setdefault((tool, n, way), []).append(outcome)
                    print(
                        f"  run {rep + 1}: {tool:6} N={n:<2}  "
                        + "  ".join(f"{NAMES[w]} {cells[(tool, n, w)][-1].seconds:6.2f}s" for w in every),
                        flush=True,
                    )
        traces = {}
        if a.trace:
            for tool in tools:
                _, traces[tool] = H.traced_fanout(lab, lab.pick(max(ns), f"traced-{tool}"), tool)
        image = lab.image_bytes
    if a.no_loop:
        print_yardsticks(a, cells, ns, tools, transport, image, traces)
        return 0

    cpus = os.cpu_count() or 1
    print()
    verdicts = []
    for tool in tools:
        rows, cpu_rows, loop_t, ours_t = [], [], [], []
        for n in ns:
            loop = H.median([o.seconds for o in cells[(tool, n, "loop")]])
            ours = H.median([o.seconds for o in cells[(tool, n, "authscope")]])
            loop_t.append(loop)
            ours_t.append(ours)
            rows.append(
                [str(n), f"{loop:.2f}", f"{ours:.2f}", f"{loop / ours:.1f}x", f"{loop / n:.2f}", f"{ours / n:.2f}"]
            )
            if n == 8:
                verdicts.append((tool, loop / ours))
            for way in ("loop", "authscope"):
                cpu = {
                    k: H.median([o.cpu[k] for o in cells[(tool, n, way)]]) for k in ("registries", "proxies", "clients")
                }
                total = sum(cpu.values())
                wall = loop if way == "loop" else ours
                cpu_rows.append(
                    [
                        str(n),
                        way,
                        f"{wall:.2f}",
                        f"{cpu['registries']:.2f}",
                        f"{cpu['proxies']:.2f}",
                        f"{cpu['clients']:.2f}",
                        f"{total:.2f}",
                        f"{total / cpus:.2f}",
                    ]
                )
        print(
            f"wall time in seconds, tool {tool}, {transport} lab (image {image / H.MB:.1f} MB, {2 * a.delay_ms:g} ms RTT)"
            + ("; authscope with --pull-once" if a.pull_once else "")
        )
        print(H.table(["N", "serial loop", "authscope", "speed-up", "loop s/target", "authscope s/target"], rows))
        la, lb = H.fit(ns, loop_t)
        oa, ob = H.fit(ns, ours_t)
        print(
            f"growth (least squares): serial loop {la:.2f} s + {lb:.2f} s x N;  authscope {oa:.2f} s + {ob:.2f} s x N"
        )
        print()
        print(
            f"CPU seconds used during each run, tool {tool}, {transport} lab: everything runs on this machine's "
            f"{cpus} cpus, so a run"
        )
        print("cannot take less wall time than all CPU used / cpus ('CPU floor'), however little latency is left")
        print(
            H.table(["N", "run", "wall", "registries", "WAN proxies", "authscope+tools", "all", "CPU floor"], cpu_rows)
        )
        print()
    for tool, speedup in verdicts:
        print(f"context: authscope is {speedup:.1f}x faster than the serial {tool} loop at N = 8, {transport} lab")
    print_yardsticks(a, cells, ns, tools, transport, image, traces)
    return 0


def rerun(a: argparse.Namespace) -> int:
    """A re-run of a landed release: every target up to date (issue 15)."""
    n = int(a.targets) if a.targets.isdigit() else 8
    tool = a.tools.split(",")[0].strip()
    tags = 1  # H.targets_file: tags ["1.0"]
    interpreter = H.clean_interpreter(a.this_python)
    H.header(f"wan_fanout --rerun: re-running an up-to-date {n}-target fan-out", [tool])
    print(interpreter)
    H.require(tool)
    with H.open_lab(a, a.registries or n) as lab:
        targets = lab.pick(n, f"rerun-{tool}")
        env = lab.environment(f"rerun-{tool}")
        work = Path(env["HOME"])
        log = work / "authscope.log"
        login = [*H.AUTHSCOPE, "login", lab.source.host, "-u", H.USER, "--password-env", "SOURCE_PASSWORD"]
        H.run(login, env, log).check("authscope login")
        spec = H.targets_file(work / "authscope.yml", lab, targets, tool, n, False)
        argv = [*H.AUTHSCOPE, "fanout", "-f", str(spec), "--jobs", str(n)]
        rtt = 2 * lab.delay

        def once(*extra: str) -> tuple[float, int, int]:
            """(seconds, bytes the source sent, targets reported up to date)."""
            start = log.stat().st_size if log.exists() else 0
            outcome = lab.timed([*argv, *extra], env, log, cwd=work).check("authscope fanout")
            egress = lab.source_egress()
            lab.verify(targets)
            with open(log, "rb") as f:
                f.seek(start)
                up = f.read().decode("utf-8", "replace").count("; nothing copied (")
            return outcome.seconds, egress, up

        first = once()
        reruns = [once() for _ in range(a.repeat)]
        # The floor no re-run can beat here: starting authscope at all (this machine, this load).
        floor = H.median(
            [H.run([*H.AUTHSCOPE, "--version"], env, work / "floor.log").check("authscope --version").seconds
             for _ in range(max(3, a.repeat))]
        )  # fmt: skip
        forced = once("--force")
    image = lab.image_bytes
    goal = 0.5 + rtt * tags
    seconds = H.median([r[0] for r in reruns])
    egress = max(r[1] for r in reruns)
    rows = [
        ["first run (control)", f"{first[0]:.2f}", f"{first[1]:,}", f"{first[2]}/{n}"],
        *[[f"re-run {i + 1}", f"{r[0]:.2f}", f"{r[1]:,}", f"{r[2]}/{n}"] for i, r in enumerate(reruns)],
        ["re-run --force (control)", f"{forced[0]:.2f}", f"{forced[1]:,}", f"{forced[2]}/{n}"],
    ]
    print(
        f"\nre-run of an up-to-date fan-out, tool {tool}, N = {n}, {tags} tag each, {H.transport(a.tls)} lab, "
        f"{rtt * 1000:g} ms RTT, image {image / H.MB:.1f} MB"
    )
    print(H.table(["run", "wall s", "bytes from the source", "up to date"], rows))
    print(
        f"floor: `authscope --version` takes {floor:.2f} s here (start-up alone); "
        f"the re-run's median minus it: {seconds - floor:.2f} s = {(seconds - floor) / rtt:.1f} RTT"
    )
    blob_free = egress < min(image // 2, 64 * 1024)  # a manifest HEAD's answer is a few hundred bytes
    print(
        f"goal: re-run <= 0.5 s + {tags} RTT = {goal:.2f} s: median {seconds:.2f} s -> "
        + ("met" if seconds <= goal else "NOT met")
    )
    print(
        f"goal: no blob read from the source: at most {egress:,} bytes sent by it per re-run "
        f"(the image is {image:,}) -> " + ("met" if blob_free and all(r[2] == n for r in reruns) else "NOT met")
    )
    return 0


NAMES = {"loop": "loop", "authscope": "authscope", "limit": "by hand", "regsync": "regsync"}
LABELS = {"loop": "serial loop", "limit": "by hand in parallel", "regsync": "regsync once", "authscope": "authscope"}


def yardstick_sample(tls: bool) -> str:
    tls_line = "regcert: '{{file \"LAB_WORK_DIR/ca/ca.crt\"}}'" if tls else "tls: disabled"
    return "\n".join(
        [
            "version: 1",
            "creds:",
            '  - registry: "127.0.0.1:TARGET_1_PROXY_PORT"',
            "    user: ci-user",
            "    pass: '{{env \"TARGET_1_PASSWORD\"}}'",
            f"    {tls_line}",
            "  - ...",
            "defaults: {parallel: N, skipDockerConfig: true}",
            "sync:",
            '  - {source: "127.0.0.1:SOURCE_PROXY_PORT/app:rNNN", target: "127.0.0.1:TARGET_1_PROXY_PORT/bench/...:1.0", type: image}',
            "  - ...",
        ]
    )


def print_yardsticks(
    a: object,
    cells: dict[tuple[str, int, str], list[H.Outcome]],
    ns: list[int],
    tools: list[str],
    transport: str,
    image: int,
    traces: dict[str, list[dict[str, object]]],
) -> None:
    """The ratios to the yardsticks (--limit, --regsync), the traced timelines (--trace), the plot (--plot)."""
    limit, regsync = getattr(a, "limit", False), getattr(a, "regsync", False)
    panels: dict[str, dict[str, list[float]]] = {}
    verdicts = []
    for tool in tools:
        med = {
            w: [H.median([o.seconds for o in cells[(tool, n, w)]]) for n in ns]
            for w in ("loop", "limit", "regsync", "authscope")
            if (tool, ns[0], w) in cells
        }
        panels[tool] = {LABELS[w]: ts for w, ts in med.items()}
        if not (limit or regsync):
            continue
        headers = ["N", "authscope"] + (["by hand", "authscope/limit"] if limit else [])
        headers += ["regsync", "authscope/regsync"] if regsync else []
        rows = []
        for i, n in enumerate(ns):
            ours = med["authscope"][i]
            row = [str(n), f"{ours:.2f}"]
            if limit:
                row += [f"{med['limit'][i]:.2f}", f"{ours / med['limit'][i]:.3f}x"]
            if regsync:
                row += [f"{med['regsync'][i]:.2f}", f"{ours / med['regsync'][i]:.3f}x"]
            rows.append(row)
            if n == 8:
                verdicts.append(
                    (tool, ours / med["limit"][i] if limit else None, ours / med["regsync"][i] if regsync else None)
                )
        print(
            f"yardsticks, tool {tool}, {transport} lab (image {image / H.MB:.1f} MB, {2 * a.delay_ms:g} ms RTT; "  # type: ignore[attr-defined]
            f"wall seconds, medians of {a.repeat})"  # type: ignore[attr-defined]
        )
        print(H.table(headers, rows))
        print()
    for tool, to_limit, to_regsync in verdicts:
        if to_limit is not None:
            print(
                f"goal: authscope <= 1.05x the {tool} copies by hand in parallel at N = 8, {transport} lab: "
                f"{to_limit:.3f}x -> " + ("met" if to_limit <= 1.05 else "NOT met")
            )
        if to_regsync is not None:
            print(
                f"goal: authscope < regsync once at N = 8 ({tool}), {transport} lab: {to_regsync:.3f}x -> "
                + ("met" if to_regsync < 1 else "NOT met")
            )
    for tool, events in traces.items():
        print(f"\ntrace of one fan-out, tool {tool}, N = {max(ns)}, {transport} lab (seconds since it was launched)")
        print(H.timeline(events))
    if getattr(a, "plot", None):
        title = f"authscope fanout vs yardsticks, {transport}, {image / H.MB:.1f} MB, {2 * a.delay_ms:g} ms RTT"  # type: ignore[attr-defined]
        print(H.plot(a.plot, title, ns, panels))  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(H.run_main(main))
