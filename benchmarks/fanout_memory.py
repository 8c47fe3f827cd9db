"""Memory: peak resident set of the authscope process itself during a 16-target fan-out.

`authscope fanout --jobs 16` runs as `python -m authscope` (the process a CI
job runs; the console script is the same interpreter), and its
/proc/<pid>/status is read every 5 ms while it runs: VmHWM is the kernel's
high-water mark of that process's own resident set. Its children (crane,
skopeo) are separate processes with their own memory, not counted; for
contrast the table also shows wait4's ru_maxrss, the largest resident set
of the process *or any of its children* (for a fan-out, usually a tool's),
which is what `resource.getrusage(RUSAGE_CHILDREN)` would have reported.

Baseline: `authscope fanout --dry-run` on the same file (the interpreter and
authscope's modules loaded, nothing run).

The lab speaks plain HTTP by default; --tls runs every registry over HTTPS
with a certificate from one throwaway CA, given to authscope as `ca_file:`
(nothing insecure), so the figures include authscope's TLS sessions (its
credential checks and digest reads). The lab line and the table's heading
name the transport.

  python3 benchmarks/fanout_memory.py                # N = 16, crane, normal and pull-once
  python3 benchmarks/fanout_memory.py --quick        # smoke: N = 2, a 2 MB image
  python3 benchmarks/fanout_memory.py --quick --tls  # the same over TLS (HTTPS)
"""

from __future__ import annotations

import sys
from pathlib import Path

import _harness as H

KIB_PER_MIB = 1024


def main() -> int:
    p = H.base_parser(__doc__)
    p.add_argument("--targets", type=int, default=16, help="N (default 16)")
    p.add_argument("--tool", default="crane", choices=("crane", "skopeo", "regctl"), help="default crane")
    p.add_argument("--registries", type=int, default=0, help="target registries (default N)")
    p.add_argument("--quick", action="store_true", help="smoke run: N = 2, 2 MB in 2 layers, 10 ms")
    a = p.parse_args()
    if a.quick:
        a.targets, a.image_mb, a.layers, a.delay_ms = 2, 2.0, 2, 10.0

    H.header(f"fanout_memory: peak RSS of the authscope process during a {a.targets}-target fan-out", [a.tool])
    H.require(a.tool)
    rows = []
    with H.open_lab(a, a.registries or a.targets) as lab:
        # The baseline: the same command line with --dry-run.
        env = lab.environment("dry-run")
        work = Path(env["HOME"])
        spec = H.targets_file(work / "authscope.yml", lab, lab.pick(a.targets, "dry"), a.tool, a.targets, False)
        dry = H.run(
            [*H.AUTHSCOPE, "fanout", "-f", str(spec), "--dry-run"], env, work / "dry.log", watch_memory=True
        ).check("authscope fanout --dry-run")
        rows.append(
            [
                "--dry-run (baseline)",
                f"{dry.seconds:.2f}",
                _mib(dry.peak_rss_kib),
                str(dry.threads),
                _mib(dry.tree_rss_kib),
            ]
        )
        for mode, pull_once in (("normal", False), ("pull-once", True)):
            o = H.authscope_fanout(lab, lab.pick(a.targets, mode), a.tool, pull_once=pull_once, watch_memory=True)
            rows.append(
                [
                    f"fanout --jobs {a.targets} ({mode})",
                    f"{o.seconds:.2f}",
                    _mib(o.peak_rss_kib),
                    str(o.threads),
                    _mib(o.tree_rss_kib),
                ]
            )
            print(f"  {mode:9}  {o.seconds:6.2f}s  authscope peak {_mib(o.peak_rss_kib)} MiB", flush=True)
        image = lab.image_bytes

    print()
    print(
        f"N = {a.targets} targets, tool {a.tool}, image {image / H.MB:.1f} MB, {2 * a.delay_ms:g} ms RTT, "
        f"{H.transport(a.tls)} lab"
    )
    print(
        H.table(
            ["authscope run", "wall s", "authscope VmHWM MiB", "peak threads", "largest in its tree MiB (wait4)"],
            rows,
        )
    )
    return 0


def _mib(kib: int) -> str:
    return f"{kib / KIB_PER_MIB:.1f}"


if __name__ == "__main__":
    sys.exit(H.run_main(main))
