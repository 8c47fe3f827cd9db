"""The demo: a release fan-out against local registries, with and without authscope.

Starts three real registries (Debian's docker-registry, htpasswd auth): the
job's "local GitLab registry" and two "Harbor" targets, one over TLS. Pushes a
small image to the local one, logs the job in with `authscope login`, then
runs each target in a scope with `authscope exec`: the command copies the
image, logs out and then wipes its whole config, as the crane 0.16.1 report
describes. The base config is checked byte for byte after every target, and
each target's digest against the source. Last, the same commands without
authscope show the local login being lost.

Run it with ./scripts/demo (installs what it needs first).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import CA, isolated_env, publish_image, skopeo_digest, start_registry, write_authfile  # noqa: E402

BOLD, GREEN, RED, RESET = ("\033[1m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def step(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def sh(argv: List[str], env: Dict[str, str], check: bool = True) -> int:
    print(f"$ {shlex.join(argv)}", flush=True)
    code = subprocess.run(argv, env=env).returncode
    if check and code != 0:
        raise SystemExit(f"{RED}demo failed: exit {code}{RESET}")
    return code


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "(missing)"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="authscope-demo-"))
    env = isolated_env(work / "env")
    env["PATH"] = f"{ROOT / '.tools' / 'bin'}{os.pathsep}{env['PATH']}"
    registries = []
    try:
        step("start the job's local registry and two Harbor-like targets (one over TLS)")
        ca = CA.create(work / "ca")
        # Demo passwords are generated per run: nothing here is a real secret.
        local = start_registry(work, username="gitlab-ci-token", password="demo-" + secrets.token_hex(8), name="local")
        h1 = start_registry(work, username="robot$release+ci", password="demo-" + secrets.token_hex(8), name="harbor-1")
        h2 = start_registry(
            work, username="robot$mirror+ci", password="demo-" + secrets.token_hex(8), name="harbor-2", tls=ca
        )
        registries = [local, h1, h2]
        for r in registries:
            print(f"   {r.name:9} {r.host}  user {r.username!r}  {'TLS' if r.tls else 'HTTP'}")
        env.update(
            CI_REGISTRY_PASSWORD=local.password,
            HARBOR_1_PASSWORD=h1.password,
            HARBOR_2_PASSWORD=h2.password,
            SRC=local.ref("group/app", "1.0"),
        )

        step("build a small image and push it to the local registry (the job's build stage)")
        source = publish_image(local, work / "image", env, repository="group/app", tag="1.0")
        print(f"   {source.ref} {source.digest}")

        step("the release job logs in to its local registry, once, on the base config")
        base = Path(env["DOCKER_CONFIG"]) / "config.json"
        sh(["authscope", "login", local.host, "-u", local.username, "--password-env", "CI_REGISTRY_PASSWORD"], env)
        before = sha(base)
        print(f"   base {base}: sha256 {before}")

        # Each target: copy, log out, then wipe the whole config — the worst a
        # tool's logout has been seen to do.
        targets = [
            (h1, "HARBOR_1_PASSWORD", "--dest-tls-verify=false", None),
            (h2, "HARBOR_2_PASSWORD", f"--dest-cert-dir={h2.cert_dir}", h2.cert_dir),
        ]
        results = []
        for target, variable, dest_tls, cert_dir in targets:
            step(f"target {target.name}: copy, log out and wipe the config, inside a scope")
            dest = target.ref("release/app", "1.0")
            command = (
                f'skopeo copy --src-tls-verify=false {dest_tls} --preserve-digests "docker://$SRC" "docker://{dest}"'
                f" && skopeo logout {target.host}"
                ' && echo \'{"auths": {}}\' > "$DOCKER_CONFIG/config.json"'
                ' && echo "   (the command wiped its config: $DOCKER_CONFIG/config.json)"'
            )
            sh(
                [
                    "authscope",
                    "exec",
                    "--registry",
                    target.host,
                    "-u",
                    target.username,
                    "--password-env",
                    variable,
                    "--",
                    "sh",
                    "-c",
                    command,
                ],
                env,
            )
            authfile = write_authfile(work / f"check-{target.name}.json", {target.host: target.credentials})
            digest = skopeo_digest(dest, authfile, env, cert_dir=cert_dir)
            intact = sha(base) == before
            results.append((target.name, digest == source.digest, intact))
            print(f"   base sha256 {sha(base)} {'(unchanged)' if intact else '(CHANGED)'}; {dest} {digest}")

        step("summary")
        for name, same_digest, intact in results:
            mark = f"{GREEN}ok{RESET}" if same_digest and intact else f"{RED}FAILED{RESET}"
            print(
                f"   {name:9} digest {'matches' if same_digest else 'DIFFERS'}; base login {'intact' if intact else 'LOST'}: {mark}"
            )

        step("control: the same copy/logout/wipe on the base itself, without authscope")
        control = work / "control"
        control.mkdir()
        shutil.copy(base, control / "config.json")
        cenv = dict(env, DOCKER_CONFIG=str(control))
        sh(["sh", "-c", 'echo \'{"auths": {}}\' > "$DOCKER_CONFIG/config.json"'], cenv)
        lost = local.host not in (control / "config.json").read_text()
        print(
            f"   local login {'LOST' if lost else 'still there'}: every later target would now fail to read {source.ref}"
        )

        ok = all(d and i for _, d, i in results) and lost
        print(f"\n{GREEN if ok else RED}{BOLD}demo {'passed' if ok else 'FAILED'}{RESET}")
        return 0 if ok else 1
    finally:
        for r in registries:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
