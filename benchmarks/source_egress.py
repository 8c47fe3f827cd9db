"""Source egress: bytes read from the source registry per fan-out, normal mode vs pull-once.

Normal mode copies registry to registry once per target, so the source
serves the image N times. Pull-once (`authscope fanout --pull-once`, or
`pull_once: true` in authscope.yml) fetches it once into a local OCI layout
and pushes every target from there. The bytes are counted at the WAN proxy in
front of the source (benchmarks/wanproxy.py: everything the source sent,
HTTP headers included), for N targets (default 8), for each tool.

The lab speaks plain HTTP by default; --tls runs every registry over HTTPS
with a certificate from one throwaway CA, given to authscope as `ca_file:` of
the source and of every target (nothing insecure). The proxy relays TLS
unchanged, so the bytes counted are then TLS records (a little more than the
HTTP they carry). The lab line and the table's heading name the transport.

Goal (issue: performance): with pull-once, at most 1.1x the image size at N = 8.

  python3 benchmarks/source_egress.py                  # N = 8; crane, skopeo and regctl
  python3 benchmarks/source_egress.py --quick          # smoke: N = 2, a 2 MB image
  python3 benchmarks/source_egress.py --quick --tls    # the same over TLS (HTTPS)
  python3 benchmarks/source_egress.py --tools crane --targets 16
"""

from __future__ import annotations

import sys

import _harness as H

MODES = (("normal", False), ("pull-once", True))


def main() -> int:
    p = H.base_parser(__doc__)
    p.add_argument("--targets", type=int, default=8, help="N (default 8)")
    p.add_argument(
        "--tools", default="crane,skopeo,regctl", help="comma-separated: crane, skopeo, regctl (default all three)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N = 2, 2 MB in 2 layers, 10 ms")
    a = p.parse_args()
    if a.quick:
        a.targets, a.image_mb, a.layers, a.delay_ms = 2, 2.0, 2, 10.0
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    for tool in tools:
        if tool not in ("crane", "skopeo", "regctl"):
            p.error(f"--tools: {tool!r} is not one of crane, skopeo, regctl")

    H.header(
        f"source_egress: bytes read from the source per fan-out to {a.targets} targets, normal vs pull-once", tools
    )
    H.require(*tools)
    rows = []
    verdicts = []
    with H.open_lab(a, a.targets) as lab:
        for tool in tools:
            for mode, pull_once in MODES:
                targets = lab.pick(a.targets, f"{mode}-{tool}")
                o = H.authscope_fanout(lab, targets, tool, pull_once=pull_once)
                read = lab.source_egress()
                connections = lab.source.proxy.counters.connections
                ratio = read / lab.image_bytes
                rows.append(
                    [
                        tool,
                        mode,
                        f"{o.seconds:.2f}",
                        f"{read:,}",
                        f"{read / H.MB:.1f}",
                        f"{ratio:.2f}x",
                        str(connections),
                    ]
                )
                print(f"  {tool:6} {mode:9}  {o.seconds:6.2f}s  {read / H.MB:7.1f} MB from the source", flush=True)
                if pull_once:
                    verdicts.append((tool, ratio))
        image = lab.image_bytes
        layers = lab.layers

    print()
    print(
        f"image: {image:,} bytes ({image / H.MB:.1f} MB: manifest, config and {layers} layers); "
        f"N = {a.targets} targets; {2 * a.delay_ms:g} ms RTT; {H.transport(a.tls)} lab"
    )
    print(
        H.table(
            ["tool", "mode", "wall s", "source bytes", "source MB", "x image", "source connections"],
            rows,
        )
    )
    print()
    for tool, ratio in verdicts:
        print(
            f"goal: pull-once reads <= 1.1x the image from the source at N = {a.targets} ({tool}), "
            f"{H.transport(a.tls)} lab: {ratio:.2f}x -> " + ("met" if ratio <= 1.1 else "NOT met")
        )
    return 0


if __name__ == "__main__":
    sys.exit(H.run_main(main))
