"""Shared machinery of the benchmarks: the machine, a lab of registries behind an
emulated WAN, timed runs of authscope and of the shell loop it replaces.

Nothing here is a test: every script prints its figures and exits 0 unless a
run failed. Every process it starts is stopped, and every directory it makes
is removed, also on Ctrl-C or SIGTERM (turned into KeyboardInterrupt).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"
for _p in (Path(__file__).resolve().parent, REPO, REPO / "plugin"):  # wanproxy; tests.support; authscope
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from wanproxy import LoopThread, WanProxy  # noqa: E402

from tests.support import Registry, isolated_env, publish_image, start_registry  # noqa: E402

AUTHSCOPE = [sys.executable, "-m", "authscope"]
USER = "ci-user"
MB = 1_000_000
RUN_TIMEOUT = 900.0


# -- the machine -------------------------------------------------------------------


def tool_path(name: str) -> Optional[str]:
    return shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else f"exit {out.returncode}"


def _meminfo() -> str:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return f"{int(fields['MemTotal'].split()[0]) / 1024 / 1024:.1f} GiB"
    except (OSError, KeyError, ValueError):
        return "unknown"


def machine(tools: Sequence[str] = ()) -> List[str]:
    """Lines describing the machine and the tools, for the top of every report."""
    try:
        load = "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "load average unknown"
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        f"machine: {os.cpu_count()} cpus ({cpu}), {_meminfo()} memory, {load}",
        f"system:  {platform.system()} {platform.release()}, Python {platform.python_version()} ({sys.executable})",
        f"authscope {_version([*AUTHSCOPE, '--version']).replace('authscope ', '')}",
    ]
    for tool in tools:
        path = tool_path(tool)
        if path is None:
            lines.append(f"{tool}: not found")
            continue
        argv = {"crane": [path, "version"], "regctl": [path, "version", "--format", "{{.VCSTag}}"]}.get(
            tool, [path, "--version"]
        )
        lines.append(f"{tool}: {_version(argv)} ({path})")
    return lines


def header(title: str, tools: Sequence[str] = ()) -> None:
    print(f"== {title}")
    for line in machine(tools):
        print(line)
    print("command: " + " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]))
    print(flush=True)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP end the run like Ctrl-C does, so every `finally` runs.

    SIGINT too: a shell without job control starts background commands with
    SIGINT ignored, and Python then keeps ignoring it.
    """

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def require(*tools: str) -> None:
    missing = [t for t in tools if tool_path(t) is None]
    if missing:
        raise SystemExit(
            f"not found: {', '.join(missing)} (./scripts/install-deps.sh installs them; .tools/bin is searched first)"
        )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fit(ns: Sequence[int], ts: Sequence[float]) -> Tuple[float, float]:
    """Least squares t = a + b*n: (a, b)."""
    if len(ns) < 2:
        return (ts[0], 0.0) if ts else (0.0, 0.0)
    mean_n, mean_t = statistics.fmean(ns), statistics.fmean(ts)
    var = sum((n - mean_n) ** 2 for n in ns)
    b = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts)) / var if var else 0.0
    return mean_t - b * mean_n, b


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


# -- processes ---------------------------------------------------------------------


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the run's process group (authscope forwards it and removes its scopes), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Outcome:
    seconds: float
    returncode: int
    log: Path
    peak_rss_kib: int = 0  # VmHWM of the process itself (only when watched)
    tree_rss_kib: int = 0  # wait4's ru_maxrss: the largest of it and its waited-for children
    threads: int = 0
    cpu: Dict[str, float] = field(default_factory=dict)  # CPU seconds during the run, by who (see Lab.cpu)

    def check(self, what: str) -> Outcome:
        if self.returncode != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"{what} exited {self.returncode} (log {self.log}):\n{tail}")
        return self


def _status(pid: int) -> Dict[str, int]:
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *,
    cwd: Optional[Path] = None,
    watch_memory: bool = False,
    timeout: float = RUN_TIMEOUT,
) -> Outcome:
    """Run argv in its own session; its output goes to `log`; wall time from start to exit.

    With `watch_memory`, /proc/<pid>/status is read every 5 ms: VmHWM is the
    process's own peak resident set (children are other processes), kept
    while the process lives, so the last reading before it exits is its peak
    up to 5 ms before the end.
    """
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        peak = threads = 0
        try:
            deadline = start + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    seconds = time.perf_counter() - start
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{argv[0]} did not finish in {timeout:g}s (log {log})")
                if watch_memory:
                    st = _status(proc.pid)
                    peak = max(peak, st.get("VmHWM", 0))
                    threads = max(threads, st.get("Threads", 0))
                time.sleep(0.005 if watch_memory else 0.002)
        except BaseException:
            _stop_group(proc)
            raise
    return Outcome(seconds, proc.returncode, log, peak, usage.ru_maxrss, threads)


# -- the lab: registries behind an emulated WAN ----------------------------------------


@dataclass
class Endpoint:
    registry: Registry
    proxy: WanProxy

    @property
    def host(self) -> str:  # what clients use: through the WAN
        return self.proxy.host


@dataclass
class Target:
    name: str
    endpoint: Endpoint
    repository: str
    password_var: str

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def destination(self) -> str:
        return f"{self.host}/{self.repository}:1.0"


@dataclass
class Lab:
    """A source registry and target registries, each behind its own WanProxy."""

    work: Path
    delay: float
    source: Endpoint
    targets: List[Endpoint]
    image_mb: float
    layers: int
    image_ref: str = ""  # the current image, through the WAN
    digest: str = ""
    image_bytes: int = 0  # manifest + config + layers
    _seed: int = 0
    _runs: int = 0
    _secrets: Dict[str, str] = field(default_factory=dict)

    def new_image(self) -> None:
        """Publish a new image (new blobs) to the source, directly (not through the WAN, not counted).

        Every run copies an image no registry has seen: skopeo keeps a blob
        cache (for root, /var/lib/containers/cache) that would otherwise turn
        later copies into cross-repository mounts that read nothing from the source.
        """
        self._seed += 1
        tag = f"r{self._seed}"
        _wipe_storage(self.source.registry)  # only the current image is ever read
        workdir = self.work / "images" / tag
        env = isolated_env(self.work / "envs" / f"publish-{tag}")
        image = publish_image(
            self.source.registry,
            workdir,
            env,
            repository="app",
            tag=tag,
            total_size=int(self.image_mb * MB),
            layer_count=self.layers,
            seed=self._seed,
            compresslevel=0,  # the payload is random: gzip could not shrink it, only spend time
        )
        self.image_bytes, _ = _image_bytes(image.layout)
        self.image_ref = f"{self.source.host}/app:{tag}"
        self.digest = image.digest
        shutil.rmtree(workdir, ignore_errors=True)  # the registry has it now

    def secret_env(self) -> Dict[str, str]:
        """Every password, by variable name: the only way secrets reach a run."""
        return dict(self._secrets)

    def pick(self, n: int, label: str) -> List[Target]:
        """N targets spread over the registries, each a repository new to its registry."""
        self._runs += 1
        out = []
        for i in range(n):
            endpoint = self.targets[i % len(self.targets)]
            index = self.targets.index(endpoint) + 1
            out.append(
                Target(f"t{i + 1}", endpoint, f"bench/{label}-{self._runs}-t{i + 1}", f"TARGET_{index}_PASSWORD")
            )
        return out

    def environment(self, name: str) -> Dict[str, str]:
        """A fresh isolated HOME / DOCKER_CONFIG / XDG / TMPDIR, tools first on PATH, the secrets set."""
        root = self.work / "envs" / f"{name}-{time.monotonic_ns()}"
        env = isolated_env(root)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["LANG"] = "C.UTF-8"
        env.update(self.secret_env())
        return env

    def reset_counters(self) -> None:
        for e in (self.source, *self.targets):
            e.proxy.reset_counters()

    def source_egress(self) -> int:
        return self.source.proxy.counters.upstream_to_client

    def cpu(self) -> Dict[str, float]:
        """CPU seconds so far: the registries, this process (the WAN proxies), and reaped children
        (authscope / the loop, and the tools they ran)."""
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "registries": sum(_process_cpu(e.registry.pid) for e in (self.source, *self.targets)),
            "proxies": me.ru_utime + me.ru_stime,
            "clients": children.ru_utime + children.ru_stime,
        }

    def timed(self, argv: Sequence[str], env: Mapping[str, str], log: Path, **kw: object) -> Outcome:
        """`run`, with the source's egress counter zeroed first and CPU use recorded."""
        self.reset_counters()
        before = self.cpu()
        outcome = run(argv, env, log, **kw)  # type: ignore[arg-type]
        after = self.cpu()
        outcome.cpu = {k: after[k] - before[k] for k in after}
        return outcome

    def prune(self) -> None:
        """Forget every target's copies (the next run uses new repositories and new blobs anyway):
        keeps the lab's storage at one run's worth."""
        for e in self.targets:
            _wipe_storage(e.registry)

    def verify(self, targets: Sequence[Target]) -> None:
        """Every target holds the source's digest (read directly, not through the WAN)."""
        for t in targets:
            got = t.endpoint.registry.manifest_digest(t.repository, "1.0")
            if got != self.digest:
                raise RuntimeError(f"{t.destination} holds {got}, expected {self.digest}")


def _process_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wipe_storage(registry: Registry) -> None:
    """Remove a registry's blobs and repositories under it (filesystem driver: paths are made again as needed)."""
    v2 = registry.root / "data" / "docker" / "registry" / "v2"
    for name in ("repositories", "blobs"):
        shutil.rmtree(v2 / name, ignore_errors=True)


def default_workdir() -> Optional[str]:
    """/dev/shm when it is a writable tmpfs: registry storage off the (shared) disk; else $TMPDIR."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 4 * 1024**3:
            return shm
    return None


def _image_bytes(layout: Path) -> Tuple[int, int]:
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((blobs / desc["digest"].split(":", 1)[1]).read_bytes())
    size = desc["size"] + manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    return size, len(manifest["layers"])


@contextmanager
def lab(
    *,
    registries: int,
    image_mb: float,
    layers: int,
    delay_ms: float,
    workdir: Optional[str] = None,
    prefix: str = "authscope-bench-",
) -> Iterator[Lab]:
    """Start 1 + `registries` docker-registry processes, a WanProxy in front of each, and publish the image.

    Every proxy runs on one event-loop thread of this process.
    """
    require("docker-registry", "htpasswd", "skopeo")
    import secrets

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    started: List[Endpoint] = []
    delay = delay_ms / 1000
    loop = LoopThread(lifetime=6 * 3600).start()

    def endpoint(name: str) -> Endpoint:
        registry = start_registry(
            work / "registries", username=USER, password="bench-" + secrets.token_hex(8), name=name
        )
        try:
            proxy = WanProxy(registry.host, delay=delay, loop=loop).start()
        except BaseException:
            registry.stop()
            raise
        e = Endpoint(registry, proxy)
        started.append(e)
        return e

    try:
        t0 = time.perf_counter()
        source = endpoint("source")
        targets = [endpoint(f"target-{i + 1}") for i in range(registries)]
        built = Lab(work, delay, source, targets, image_mb, layers, _seed=random.randrange(1 << 40))
        built._secrets = {"SOURCE_PASSWORD": source.registry.password}
        for i, e in enumerate(targets, start=1):
            built._secrets[f"TARGET_{i}_PASSWORD"] = e.registry.password
        built.new_image()
        print(
            f"lab: 1 source + {registries} target docker-registry processes on 127.0.0.1, each behind a WAN proxy "
            f"adding {delay_ms:g} ms each way ({2 * delay_ms:g} ms RTT; a new connection costs one more RTT); "
            f"image {built.image_bytes / MB:.1f} MB in {layers} layers, a new one (new blobs) for every run; "
            f"ready in {time.perf_counter() - t0:.1f}s; work directory {work}",
            flush=True,
        )
        yield built
    finally:
        for e in started:
            e.proxy.stop()
            e.registry.stop(grace=2.0)
        loop.stop()
        shutil.rmtree(work, ignore_errors=True)


# -- the two ways to fan out ----------------------------------------------------------


SAMPLE_FILE = """source: {{image: "127.0.0.1:SOURCE_PROXY_PORT/app:rNNN", insecure: true}}
tags: ["1.0"]
tool: {tool}
jobs: N
retries: 0
pull_once: false
targets:
  - name: t1
    registry: "127.0.0.1:TARGET_1_PROXY_PORT"
    repository: bench/authscope-TOOL-RUN-t1
    username: ci-user
    password_env: TARGET_1_PASSWORD
    insecure: true
  - ..."""


def targets_file(path: Path, lab_: Lab, targets: Sequence[Target], tool: str, jobs: int, pull_once: bool) -> Path:
    """An authscope.yml for these targets: plain HTTP (insecure), passwords by variable name."""
    lines = [
        f'source: {{image: "{lab_.image_ref}", insecure: true}}',
        'tags: ["1.0"]',
        f"tool: {tool}",
        f"jobs: {jobs}",
        "retries: 0",
        f"pull_once: {'true' if pull_once else 'false'}",
        "targets:",
    ]
    for t in targets:
        lines += [
            f"  - name: {t.name}",
            f'    registry: "{t.host}"',
            f"    repository: {t.repository}",
            f"    username: {USER}",
            f"    password_env: {t.password_var}",
            "    insecure: true",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def authscope_fanout(
    lab_: Lab, targets: Sequence[Target], tool: str, *, pull_once: bool = False, watch_memory: bool = False
) -> Outcome:
    """`authscope fanout --jobs N` (N = len(targets)); the base login is set-up, not timed."""
    env = lab_.environment(f"authscope-{tool}")
    work = Path(env["HOME"])
    log = work / "authscope.log"
    run([*AUTHSCOPE, "login", lab_.source.host, "-u", USER, "--password-env", "SOURCE_PASSWORD"], env, log).check(
        "authscope login"
    )
    lab_.new_image()
    spec = targets_file(work / "authscope.yml", lab_, targets, tool, len(targets), pull_once)
    argv = [*AUTHSCOPE, "fanout", "-f", str(spec), "--jobs", str(len(targets))]
    if pull_once:
        argv.append("--pull-once")  # also in the file: either is enough
    outcome = lab_.timed(argv, env, log, cwd=work, watch_memory=watch_memory).check(" ".join(argv[1:3]))
    lab_.verify(targets)
    lab_.prune()
    return outcome


# The release job authscope replaces: one shared Docker config and, per target,
# login / copy / logout. Arguments: "DESTINATION PASSWORD_VARIABLE" pairs (no
# secret); the password is piped from that variable (printf is a bash builtin,
# so it is in no process's argv).
SERIAL_LOOP = {
    "crane": r"""
set -euo pipefail
for arg in "$@"; do
  dest=${arg% *}; var=${arg#* }; host=${dest%%/*}
  printf '%s' "${!var}" | crane auth login "$host" -u "$USER_NAME" --password-stdin
  crane copy --insecure "$SRC" "$dest"
  crane auth logout "$host"
done
""",
    "skopeo": r"""
set -euo pipefail
for arg in "$@"; do
  dest=${arg% *}; var=${arg#* }; host=${dest%%/*}
  printf '%s' "${!var}" | skopeo login --tls-verify=false -u "$USER_NAME" --password-stdin "$host"
  skopeo copy --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false "docker://$SRC" "docker://$dest"
  skopeo logout "$host"
done
""",
}

SOURCE_LOGIN = {
    "crane": 'printf "%s" "$SOURCE_PASSWORD" | crane auth login "$SRC_HOST" -u "$USER_NAME" --password-stdin',
    "skopeo": 'printf "%s" "$SOURCE_PASSWORD" | skopeo login --tls-verify=false -u "$USER_NAME" --password-stdin "$SRC_HOST"',
}


def serial_loop(lab_: Lab, targets: Sequence[Target], tool: str) -> Outcome:
    """The shell loop, login / copy / logout per target; the source login is set-up, not timed."""
    env = lab_.environment(f"loop-{tool}")
    work = Path(env["HOME"])
    # skopeo and crane share the job's one Docker config, as in the release job.
    env["REGISTRY_AUTH_FILE"] = str(Path(env["DOCKER_CONFIG"]) / "config.json")
    env.update(USER_NAME=USER, SRC_HOST=lab_.source.host)
    log = work / "loop.log"
    run(["bash", "-c", SOURCE_LOGIN[tool]], env, log).check(f"{tool} source login")
    lab_.new_image()
    env["SRC"] = lab_.image_ref
    script = work / "loop.sh"
    script.write_text(SERIAL_LOOP[tool])
    argv = ["bash", str(script), *(f"{t.destination} {t.password_var}" for t in targets)]
    outcome = lab_.timed(argv, env, log).check(f"{tool} serial loop")
    lab_.verify(targets)
    lab_.prune()
    return outcome


def base_parser(doc: Optional[str], *, lab_options: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((doc or "").split("\n\n")[1:]),
    )
    if lab_options:
        p.add_argument(
            "--workdir",
            default=default_workdir(),
            help="where registries store images (default: /dev/shm when it has room, else $TMPDIR)",
        )
    return p


def run_main(body: Callable[[], int]) -> int:
    """Run a benchmark's body; Ctrl-C / SIGTERM clean up (the bodies use `with` / finally) and exit 130."""
    try:
        with interruptible():
            code = body()
        try:
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        except OSError:
            load = "unknown"
        print(f"\nload average at the end: {load} ({os.cpu_count()} cpus)")
        return code
    except KeyboardInterrupt:
        print("\ninterrupted: every process stopped, every temporary directory removed", file=sys.stderr)
        return 130
