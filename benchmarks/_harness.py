"""Shared machinery of the benchmarks: the machine, a lab of registries behind an
emulated WAN, timed runs of authscope and of the shell loop it replaces.

The lab speaks plain HTTP by default; `lab(tls=True)` (the scripts' --tls)
runs every registry over HTTPS with a certificate from one throwaway CA,
which every client is told to trust (SSL_CERT_FILE, `ca_file:`) and nothing
runs "insecure".

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"
for _p in (Path(__file__).resolve().parent, REPO, REPO / "plugin"):  # wanproxy; tests.support; authscope
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from wanproxy import LoopThread, WanProxy  # noqa: E402

from tests.support import CA, Registry, isolated_env, publish_image, start_registry  # noqa: E402

AUTHSCOPE = [sys.executable, "-m", "authscope"]
USER = "ci-user"
MB = 1_000_000
RUN_TIMEOUT = 900.0


# -- the machine -------------------------------------------------------------------


def tool_path(name: str) -> str | None:
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


def machine(tools: Sequence[str] = ()) -> list[str]:
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


def fit(ns: Sequence[int], ts: Sequence[float]) -> tuple[float, float]:
    """Least squares t = a + b*n: (a, b)."""
    if len(ns) < 2:
        return (ts[0], 0.0) if ts else (0.0, 0.0)
    mean_n, mean_t = statistics.fmean(ns), statistics.fmean(ts)
    var = sum((n - mean_n) ** 2 for n in ns)
    b = sum((n - mean_n) * (t - mean_t) for n, t in zip(ns, ts, strict=False)) / var if var else 0.0
    return mean_t - b * mean_n, b


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
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
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the run, by who (see Lab.cpu)

    def check(self, what: str) -> Outcome:
        if self.returncode != 0:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"{what} exited {self.returncode} (log {self.log}):\n{tail}")
        return self


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
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
    cwd: Path | None = None,
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


def transport(tls: bool) -> str:
    """The lab's transport, as every report names it."""
    return "TLS (HTTPS)" if tls else "plain HTTP"


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
    targets: list[Endpoint]
    image_mb: float
    layers: int
    image_ref: str = ""  # the current image, through the WAN
    digest: str = ""
    image_bytes: int = 0  # manifest + config + layers
    ca_file: str = ""  # the lab CA's certificate when the registries speak TLS; "" when plain HTTP
    _seed: int = 0
    _runs: int = 0
    _secrets: dict[str, str] = field(default_factory=dict)

    def new_image(self) -> None:
        """Publish a new image (new blobs) to the source, directly (not through the WAN, not counted).

        With TLS, `publish_image`'s skopeo push verifies the source's certificate
        against the lab CA (`Registry.cert_dir`).

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

    @property
    def tls(self) -> bool:
        return bool(self.ca_file)

    def secret_env(self) -> dict[str, str]:
        """Every password, by variable name: the only way secrets reach a run."""
        return dict(self._secrets)

    def pick(self, n: int, label: str) -> list[Target]:
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

    def environment(self, name: str) -> dict[str, str]:
        """A fresh isolated HOME / DOCKER_CONFIG / XDG / TMPDIR, tools first on PATH, the secrets set.

        With TLS, SSL_CERT_FILE is the lab CA: crane, skopeo and regctl (Go's
        crypto/x509 on Linux) and Python's default SSL context all trust it,
        so the loop needs no per-tool CA flag (authscope gets `ca_file:` too).
        """
        root = self.work / "envs" / f"{name}-{time.monotonic_ns()}"
        env = isolated_env(root)
        env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["LANG"] = "C.UTF-8"
        if self.tls:
            env["SSL_CERT_FILE"] = self.ca_file
        env.update(self.secret_env())
        return env

    def reset_counters(self) -> None:
        for e in (self.source, *self.targets):
            e.proxy.reset_counters()

    def source_egress(self) -> int:
        return self.source.proxy.counters.upstream_to_client

    def cpu(self) -> dict[str, float]:
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
        """Every target holds the source's digest (read directly, not through the WAN; with TLS,
        verifying the registry's certificate against the lab CA: `Registry.request` does)."""
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
    """Remove a registry's blobs and repositories under it (filesystem driver: paths are made again as needed).

    On disk, not over the API: the same with or without TLS."""
    v2 = registry.root / "data" / "docker" / "registry" / "v2"
    for name in ("repositories", "blobs"):
        shutil.rmtree(v2 / name, ignore_errors=True)


def default_workdir() -> str | None:
    """/dev/shm when it is a writable tmpfs: registry storage off the (shared) disk; else $TMPDIR."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 4 * 1024**3:
            return shm
    return None


def _image_bytes(layout: Path) -> tuple[int, int]:
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
    workdir: str | None = None,
    prefix: str = "authscope-bench-",
    tls: bool = False,
) -> Iterator[Lab]:
    """Start 1 + `registries` docker-registry processes, a WanProxy in front of each, and publish the image.

    Every proxy runs on one event-loop thread of this process. With `tls`,
    one CA is made and every registry (source and targets) serves HTTPS with
    a certificate from it for 127.0.0.1 / localhost; the proxies relay TCP,
    so TLS passes through them unchanged (and their address is 127.0.0.1 too).
    """
    require("docker-registry", "htpasswd", "skopeo", *(["openssl"] if tls else []))
    import secrets

    work = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
    started: list[Endpoint] = []
    delay = delay_ms / 1000
    loop = LoopThread(lifetime=6 * 3600).start()
    ca: CA | None = None

    def endpoint(name: str) -> Endpoint:
        registry = start_registry(
            work / "registries", username=USER, password="bench-" + secrets.token_hex(8), tls=ca, name=name
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
        if tls:
            ca = CA.create(work / "ca")
        source = endpoint("source")
        targets = [endpoint(f"target-{i + 1}") for i in range(registries)]
        built = Lab(
            work,
            delay,
            source,
            targets,
            image_mb,
            layers,
            ca_file=str(ca.cert) if ca is not None else "",
            _seed=random.randrange(1 << 40),
        )
        built._secrets = {"SOURCE_PASSWORD": source.registry.password}
        for i, e in enumerate(targets, start=1):
            built._secrets[f"TARGET_{i}_PASSWORD"] = e.registry.password
        built.new_image()
        print(
            f"lab: 1 source + {registries} target docker-registry processes on 127.0.0.1 over {transport(tls)}"
            + (", certificates from one throwaway lab CA that every client trusts (nothing insecure)" if tls else "")
            + ", each behind a WAN proxy "
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


def tls_key(tls: bool, ca_file: str) -> str:
    """How authscope.yml reaches a lab registry: plain HTTP (`insecure: true`) or the lab CA (`ca_file:`)."""
    return f"ca_file: {json.dumps(ca_file)}" if tls else "insecure: true"


SAMPLE_FILE = """source: {{image: "127.0.0.1:SOURCE_PROXY_PORT/app:rNNN", {tls_key}}}
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
    {tls_key}
  - ..."""


def sample_file(tool: str, tls: bool) -> str:
    """SAMPLE_FILE as `targets_file` writes it in this mode (the lab CA's path is known only once it runs)."""
    return SAMPLE_FILE.format(tool=tool, tls_key=tls_key(tls, "LAB_WORK_DIR/ca/ca.crt"))


def targets_file(path: Path, lab_: Lab, targets: Sequence[Target], tool: str, jobs: int, pull_once: bool) -> Path:
    """An authscope.yml for these targets, passwords by variable name: plain HTTP (`insecure: true`),
    or with TLS the lab CA as `ca_file:` of the source and of every target (nothing insecure)."""
    tls = tls_key(lab_.tls, lab_.ca_file)
    lines = [
        f'source: {{image: "{lab_.image_ref}", {tls}}}',
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
            f"    {tls}",
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
# so it is in no process's argv). @LOGIN_TLS@ and @COPY_TLS@ are the tools'
# TLS flags for the lab's transport (LOOP_TLS_FLAGS): `loop_script` fills them.
SERIAL_LOOP = {
    "crane": r"""
set -euo pipefail
for arg in "$@"; do
  dest=${arg% *}; var=${arg#* }; host=${dest%%/*}
  printf '%s' "${!var}" | crane auth login "$host" -u "$USER_NAME" --password-stdin
  crane copy@COPY_TLS@ "$SRC" "$dest"
  crane auth logout "$host"
done
""",
    "skopeo": r"""
set -euo pipefail
for arg in "$@"; do
  dest=${arg% *}; var=${arg#* }; host=${dest%%/*}
  printf '%s' "${!var}" | skopeo login@LOGIN_TLS@ -u "$USER_NAME" --password-stdin "$host"
  skopeo copy --all --preserve-digests@COPY_TLS@ "docker://$SRC" "docker://$dest"
  skopeo logout "$host"
done
""",
}

SOURCE_LOGIN = {
    "crane": 'printf "%s" "$SOURCE_PASSWORD" | crane auth login "$SRC_HOST" -u "$USER_NAME" --password-stdin',
    "skopeo": 'printf "%s" "$SOURCE_PASSWORD" | skopeo login@LOGIN_TLS@ -u "$USER_NAME" --password-stdin "$SRC_HOST"',
}

# The loop's TLS flags, by transport (tls?) and tool. Plain HTTP needs each
# tool's "insecure" switch; with TLS every command verifies certificates and
# trusts the lab CA through SSL_CERT_FILE (Lab.environment), which crane,
# skopeo and regctl all honour, so no CA flag is needed (`crane auth login`
# only writes the config: it contacts nothing).
LOOP_TLS_FLAGS: dict[bool, dict[str, dict[str, str]]] = {
    False: {
        "crane": {"@LOGIN_TLS@": "", "@COPY_TLS@": " --insecure"},
        "skopeo": {
            "@LOGIN_TLS@": " --tls-verify=false",
            "@COPY_TLS@": " --src-tls-verify=false --dest-tls-verify=false",
        },
    },
    True: {
        "crane": {"@LOGIN_TLS@": "", "@COPY_TLS@": ""},
        "skopeo": {
            "@LOGIN_TLS@": " --tls-verify=true",
            "@COPY_TLS@": " --src-tls-verify=true --dest-tls-verify=true",
        },
    },
}


def _fill(template: str, flags: Mapping[str, str]) -> str:
    for placeholder, value in flags.items():
        template = template.replace(placeholder, value)
    return template


def loop_script(tool: str, tls: bool) -> str:
    """The serial loop's script for `tool`, exactly as it runs in a plain-HTTP or a TLS lab."""
    return _fill(SERIAL_LOOP[tool], LOOP_TLS_FLAGS[tls][tool])


def source_login(tool: str, tls: bool) -> str:
    """The loop's source login (set-up, not timed), exactly as it runs."""
    return _fill(SOURCE_LOGIN[tool], LOOP_TLS_FLAGS[tls][tool])


def serial_loop(lab_: Lab, targets: Sequence[Target], tool: str) -> Outcome:
    """The shell loop, login / copy / logout per target; the source login is set-up, not timed."""
    env = lab_.environment(f"loop-{tool}")
    work = Path(env["HOME"])
    # skopeo and crane share the job's one Docker config, as in the release job.
    env["REGISTRY_AUTH_FILE"] = str(Path(env["DOCKER_CONFIG"]) / "config.json")
    env.update(USER_NAME=USER, SRC_HOST=lab_.source.host)
    log = work / "loop.log"
    run(["bash", "-c", source_login(tool, lab_.tls)], env, log).check(f"{tool} source login")
    lab_.new_image()
    env["SRC"] = lab_.image_ref
    script = work / "loop.sh"
    script.write_text(loop_script(tool, lab_.tls))
    argv = ["bash", str(script), *(f"{t.destination} {t.password_var}" for t in targets)]
    outcome = lab_.timed(argv, env, log).check(f"{tool} serial loop")
    lab_.verify(targets)
    lab_.prune()
    return outcome


def base_parser(doc: str | None, *, lab_options: bool = True) -> argparse.ArgumentParser:
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
        p.add_argument(
            "--tls",
            action="store_true",
            help="run the lab over TLS (HTTPS): every registry gets a certificate from one throwaway CA that "
            "every client trusts (SSL_CERT_FILE, ca_file:), nothing runs insecure (default: plain HTTP)",
        )
        p.add_argument("--image-mb", type=float, default=24.0, help="image size in MB (default 24)")
        p.add_argument("--layers", type=int, default=4, help="layers (default 4)")
        p.add_argument("--delay-ms", type=float, default=25.0, help="one-way WAN delay (default 25: 50 ms RTT)")
    return p


def open_lab(a: argparse.Namespace, registries: int) -> AbstractContextManager[Lab]:
    """`lab` with the lab options of `base_parser` (image, layers, delay, work directory, TLS)."""
    return lab(
        registries=registries,
        image_mb=a.image_mb,
        layers=a.layers,
        delay_ms=a.delay_ms,
        workdir=a.workdir,
        tls=a.tls,
    )


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


# -- the yardsticks: the same copies by hand in parallel, and regsync ------------------

# What a user writes to run the same tool's copies in parallel without authscope:
# per target, in the background, its own DOCKER_CONFIG, a login of the source and
# of the target there, and the copy; then `wait` for every one. Arguments as the
# serial loop's ("DESTINATION PASSWORD_VARIABLE"); WORK is where the configs go.
PARALLEL_BY_HAND = {
    "crane": r"""
set -euo pipefail
copy() {
  dest=$1; var=$2; host=${dest%%/*}
  export DOCKER_CONFIG="$WORK/config-$3"; mkdir -p "$DOCKER_CONFIG"
  printf '%s' "$SOURCE_PASSWORD" | crane auth login "$SRC_HOST" -u "$USER_NAME" --password-stdin
  printf '%s' "${!var}" | crane auth login "$host" -u "$USER_NAME" --password-stdin
  crane copy@COPY_TLS@ "$SRC" "$dest"
}
i=0; pids=()
for arg in "$@"; do i=$((i + 1)); copy "${arg% *}" "${arg#* }" "$i" & pids+=($!); done
rc=0; for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
""",
    "skopeo": r"""
set -euo pipefail
copy() {
  dest=$1; var=$2; host=${dest%%/*}
  export DOCKER_CONFIG="$WORK/config-$3"; mkdir -p "$DOCKER_CONFIG"
  export REGISTRY_AUTH_FILE="$DOCKER_CONFIG/config.json"
  printf '%s' "$SOURCE_PASSWORD" | skopeo login@LOGIN_TLS@ -u "$USER_NAME" --password-stdin "$SRC_HOST"
  printf '%s' "${!var}" | skopeo login@LOGIN_TLS@ -u "$USER_NAME" --password-stdin "$host"
  skopeo copy --all --preserve-digests@COPY_TLS@ "docker://$SRC" "docker://$dest"
}
i=0; pids=()
for arg in "$@"; do i=$((i + 1)); copy "${arg% *}" "${arg#* }" "$i" & pids+=($!); done
rc=0; for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
""",
}


def by_hand_script(tool: str, tls: bool) -> str:
    """The parallel-by-hand script for `tool`, exactly as it runs in a plain-HTTP or a TLS lab."""
    return _fill(PARALLEL_BY_HAND[tool], LOOP_TLS_FLAGS[tls][tool])


def parallel_by_hand(lab_: Lab, targets: Sequence[Target], tool: str) -> Outcome:
    """The limit: every copy at once, each in its own DOCKER_CONFIG with its own logins (all timed)."""
    env = lab_.environment(f"byhand-{tool}")
    work = Path(env["HOME"])
    env.update(USER_NAME=USER, SRC_HOST=lab_.source.host, WORK=str(work))
    log = work / "byhand.log"
    lab_.new_image()
    env["SRC"] = lab_.image_ref
    script = work / "byhand.sh"
    script.write_text(by_hand_script(tool, lab_.tls))
    argv = ["bash", str(script), *(f"{t.destination} {t.password_var}" for t in targets)]
    outcome = lab_.timed(argv, env, log).check(f"{tool} by hand in parallel")
    lab_.verify(targets)
    lab_.prune()
    return outcome


REGSYNC_CREDS = """  - registry: "{host}"
    user: ci-user
    pass: '{{{{env "{var}"}}}}'
    {tls}"""


def regsync_config(path: Path, lab_: Lab, targets: Sequence[Target], parallel: int, ca_file: str = "") -> Path:
    """A regsync config copying the current image to every target, `parallel` at a time.

    Passwords come from the environment through regsync's own templates
    (`{{env "VAR"}}`): none is in the file or in argv. The job's Docker config is
    not read (skipDockerConfig). Plain HTTP: `tls: disabled`; TLS: the lab CA as
    `regcert` (read from its file by the template), nothing insecure."""
    tls = f"regcert: '{{{{file \"{ca_file}\"}}}}'" if ca_file else "tls: disabled"
    hosts = {lab_.source.host: "SOURCE_PASSWORD"}
    for t in targets:
        hosts.setdefault(t.host, t.password_var)
    lines = ["version: 1", "creds:"]
    lines += [REGSYNC_CREDS.format(host=h, var=v, tls=tls) for h, v in hosts.items()]
    lines += ["defaults:", f"  parallel: {parallel}", "  skipDockerConfig: true", "sync:"]
    for t in targets:
        lines += [f'  - source: "{lab_.image_ref}"', f'    target: "{t.destination}"', "    type: image"]
    path.write_text("\n".join(lines) + "\n")
    return path


def regsync_once(lab_: Lab, targets: Sequence[Target]) -> Outcome:
    """`regsync once` with a config of the same targets and `parallel: N`."""
    env = lab_.environment("regsync")
    work = Path(env["HOME"])
    log = work / "regsync.log"
    lab_.new_image()
    config = regsync_config(work / "regsync.yml", lab_, targets, len(targets), lab_.ca_file)
    argv = [tool_path("regsync") or "regsync", "once", "-c", str(config), "-v", "warn"]
    outcome = lab_.timed(argv, env, log).check("regsync once")
    lab_.verify(targets)
    lab_.prune()
    return outcome


def traced_fanout(lab_: Lab, targets: Sequence[Target], tool: str) -> tuple[Outcome, list[dict[str, object]]]:
    """`authscope fanout --jobs N` as `authscope_fanout` runs it, with AUTHSCOPE_TRACE set:
    (the outcome, the trace's events)."""
    env = lab_.environment(f"traced-{tool}")
    work = Path(env["HOME"])
    log = work / "authscope.log"
    run([*AUTHSCOPE, "login", lab_.source.host, "-u", USER, "--password-env", "SOURCE_PASSWORD"], env, log).check(
        "authscope login"
    )
    lab_.new_image()
    spec = targets_file(work / "authscope.yml", lab_, targets, tool, len(targets), False)
    trace = work / "trace.jsonl"
    env["AUTHSCOPE_TRACE"] = str(trace)
    argv = [*AUTHSCOPE, "fanout", "-f", str(spec), "--jobs", str(len(targets))]
    launched = time.time()
    outcome = lab_.timed(argv, env, log, cwd=work).check("traced fanout")
    lab_.verify(targets)
    lab_.prune()
    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    for e in events:
        e["since_launch"] = float(e["wall"]) - launched  # type: ignore[arg-type]
    events.append({"event": "exit", "since_launch": outcome.seconds})  # seen by the harness: wait4
    return outcome, events


def timeline(events: Sequence[Mapping[str, object]]) -> str:
    """A per-target summary of one traced fan-out: when (seconds since the fan-out was
    launched) each step started and ended, and the HTTP requests authscope made."""

    def at(kind: str, phase: str, target: object = None) -> float | None:
        for e in events:
            if e.get("event") == kind and e.get("phase", "") == phase and (target is None or e.get("target") == target):
                return float(e["since_launch"])  # type: ignore[arg-type]
        return None

    def s(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    names = sorted({str(e["target"]) for e in events if e.get("target")}, key=lambda n: (len(n), n))
    last = max((float(e["since_launch"]) for e in events if e.get("event") == "target"), default=0.0)  # type: ignore[arg-type]
    first = min((float(e["since_launch"]) for e in events), default=0.0)  # type: ignore[arg-type]
    lines = [
        f"process start -> first trace event {first:.3f}s (interpreter start, imports, reading the file)",
        f"run start {s(at('run', 'start'))}  source digest read {s(at('source', 'start'))} -> "
        f"{s(at('source', 'end'))}  execute start {s(at('execute', 'start'))}  "
        f"referrers found {s(at('discovery', 'start'))} -> {s(at('discovery', 'end'))} (in the background)",
    ]
    lines.append(
        f"last target done {last:.3f}  run end {s(at('run', 'end'))}  process exited {s(at('exit', ''))} "
        "(reports, interpreter shutdown)"
    )
    source_http = [e for e in events if e.get("event") == "http" and not e.get("target")]
    lines.append(
        "source: "
        + ", ".join(f"{e['method']} {e['path']} {e['status']} {e['ms']}ms{' new' if e['new'] else ''}" for e in source_http)
    )
    rows = []
    for n in names:
        http = [e for e in events if e.get("event") == "http" and e.get("target") == n]
        rows.append(
            [
                n,
                s(at("preflight", "start", n)),
                s(at("preflight", "end", n)),
                s(at("wait", "end", n)),
                s(at("tool", "start", n)),
                s(at("tool", "end", n)),
                s(at("verify", "end", n)),
                s(at("target", "end", n)),
                str(len(http)),
                str(sum(1 for e in http if e["new"])),
                str(sum(1 for e in http if e["status"] == 401)),
                str(sum(1 for e in http if "/token" in str(e["path"]))),
            ]
        )
    lines.append(
        table(
            ["target", "check", "checked", "got check", "tool start", "tool end", "verified", "done",
             "requests", "new conn", "401s", "tokens"],
            rows,
        )  # fmt: skip
    )
    for n in names[:1]:
        lines.append(f"{n}'s requests:")
        lines += [
            f"  {float(e['since_launch']):.3f} {e['method']} {e['path']} {e['status']} {e['ms']}ms"  # type: ignore[arg-type]
            + (" new connection" if e["new"] else " reused")
            + (f" ({e['error']})" if e.get("error") else "")
            for e in events
            if e.get("event") == "http" and e.get("target") == n
        ]
    return "\n".join(lines)


def plot(path: str, title: str, ns: Sequence[int], panels: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """A PNG of time against N: a panel per tool (its title: its key), a line per way; the message
    to print (also when matplotlib is missing: the run carries on without a plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"--plot: matplotlib is not installed (pip install 'authscope[bench]'); no plot written to {path}"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=False):
        for label, ts in series.items():
            ax.plot(list(ns), list(ts), marker="o", label=label)
        ax.set_xlabel("targets (N)")
        ax.set_ylabel("wall time (s), median")
        ax.set_xticks(list(ns))
        ax.set_ylim(bottom=0)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


def interpreter_option(p: argparse.ArgumentParser) -> None:
    """--this-python: run authscope under this interpreter instead of a clean venv (`clean_interpreter`)."""
    p.add_argument(
        "--this-python",
        action="store_true",
        help="run authscope with this interpreter (sys.executable), whose site may run .pth files at every "
        "start; default: a clean venv of it made for the run (only authscope and its dependencies on its "
        "path, as the authscope image's python3 is)",
    )


def make_clean_venv(venv: Path, plugin: Path = REPO / "plugin") -> Path:
    """A venv of this Python at ``venv`` whose one .pth names ``plugin`` (as an editable
    install does) and this interpreter's site-packages as plain paths, so none of
    this machine's .pth files run at its start; its python."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "authscope-bench.pth").write_text(f"{plugin}\n{sysconfig.get_paths()['purelib']}\n")
    return python


def clean_interpreter(this_python: bool = False) -> str:
    """Point AUTHSCOPE at a clean interpreter (unless ``this_python``): a venv of
    this Python made for the run (removed at exit) whose one .pth names plugin/ and
    this interpreter's site-packages as plain paths, so none of this machine's .pth
    files run at its start, as in the authscope image (benchmarks/startup.py's
    make_venv). The line to print."""
    if this_python:
        AUTHSCOPE[0] = sys.executable
        return f"authscope runs under {sys.executable} (--this-python: its site-packages' .pth files run at start)"
    import atexit

    work = tempfile.mkdtemp(prefix="authscope-bench-venv-")
    atexit.register(shutil.rmtree, work, True)
    python = make_clean_venv(Path(work, "venv"))
    AUTHSCOPE[0] = str(python)
    return (
        f"authscope runs under a clean interpreter: {python} (a venv of {sys.executable}, made for this run; "
        "--this-python to use that one)"
    )


def compile_bytecode() -> str:
    """Every authscope run of this benchmark loads compiled bytecode, as an installed package does
    (pip compiles on install): the machine may set PYTHONDONTWRITEBYTECODE, which would leave
    every changed module recompiled from source at every run. The bytecode goes to a private
    PYTHONPYCACHEPREFIX, removed at exit; the line to print."""
    import atexit
    import compileall

    prefix = tempfile.mkdtemp(prefix="authscope-bench-pycache-")
    atexit.register(shutil.rmtree, prefix, True)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False
    compileall.compile_dir(str(REPO / "plugin" / "authscope"), quiet=1)
    return f"bytecode: compiled into PYTHONPYCACHEPREFIX={prefix} (removed at exit), as pip does on install"
