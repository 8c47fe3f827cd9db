"""The demo: a release fan-out against local registries, with and without authscope.

Starts three real registries (Debian's docker-registry, htpasswd auth): the
job's "local GitLab registry" and two "Harbor" targets, one over TLS. Pushes a
small image to the local one, logs the job in with `authscope login`, then
runs the embedded authscope.yml with `authscope fanout`: each target's command
copies the image (crane 0.16.1, the reported version, where installed), logs
out and then wipes its whole config. The base config is checked byte for byte
and every tag's digest against the source. Last, the same wipe without
authscope shows the local login being lost.

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support import CA, isolated_env, publish_image, skopeo_digest, start_registry, write_authfile  # noqa: E402

BOLD, GREEN, RED, RESET = ("\033[1m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def step(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def sh(argv: list[str], env: dict[str, str], check: bool = True) -> int:
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

        # The embedded default: two targets whose commands copy, log out and
        # then wipe their whole config, the worst a logout has been seen to do.
        wipe = 'echo "{\\"auths\\": {}}" > "$DOCKER_CONFIG/config.json" && echo "wiped $DOCKER_CONFIG/config.json"'
        crane = shutil.which("crane-0.16.1", path=env["PATH"])
        if crane:
            first = f"crane-0.16.1 copy --insecure {{source}} {{destination}} && crane-0.16.1 auth logout {{registry}} && {wipe}"
        else:
            first = f"skopeo copy --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false docker://{{source}} docker://{{destination}} && skopeo logout {{registry}} && {wipe}"
        second = (
            f"skopeo copy --all --preserve-digests --src-tls-verify=false --dest-cert-dir={h2.cert_dir} "
            f"docker://{{source}} docker://{{destination}} && skopeo logout {{registry}} && {wipe}"
        )
        targets_file = work / "authscope.yml"
        targets_file.write_text(
            f"""# the demo's release: the local registry's image to two Harbor-like targets
source: {{image: "${{SRC}}", insecure: true}}
tags: ["1.0", latest]
tool: custom
jobs: 2
targets:
  - name: harbor-1
    registry: {h1.host}
    repository: release/app
    username: {h1.username}
    password_env: HARBOR_1_PASSWORD
    insecure: true
    command: [sh, -c, '{first}']
  - name: harbor-2
    registry: {h2.host}
    repository: release/app
    username: {h2.username}
    password_env: HARBOR_2_PASSWORD
    ca_file: {h2.ca_file}
    command: [sh, -c, '{second}']
"""
        )
        step(f"the release: {targets_file.name} (copy, log out and wipe, per target and tag)")
        print(targets_file.read_text())
        sh(["authscope", "fanout", "-f", str(targets_file), "--dry-run"], env)

        step("authscope fanout: each target in its own scope, verified against the source digest")
        reports = work / "reports"
        reports.mkdir()
        code = sh(
            [
                "authscope",
                "fanout",
                "-f",
                str(targets_file),
                "--junit",
                str(reports / "junit.xml"),
                "--dotenv",
                str(reports / "fanout.env"),
                "--json",
                str(reports / "fanout.json"),
            ],
            env,
            check=False,
        )
        print(f"   exit code {code}; dotenv report:")
        print("".join(f"     {line}" for line in (reports / "fanout.env").read_text().splitlines(True)))
        intact = sha(base) == before
        print(f"   base sha256 {sha(base)} {'(unchanged)' if intact else '(CHANGED)'}")
        results = []
        for target in (h1, h2):
            authfile = write_authfile(work / f"check-{target.name}.json", {target.host: target.credentials})
            for tag in ("1.0", "latest"):
                dest = target.ref("release/app", tag)
                digest = skopeo_digest(dest, authfile, env, cert_dir=target.cert_dir)
                results.append((f"{target.name}:{tag}", digest == source.digest, intact))
                print(f"   {dest} {digest} (checked again with skopeo)")

        step("summary")
        for name, same_digest, intact in results:
            mark = f"{GREEN}ok{RESET}" if same_digest and intact else f"{RED}FAILED{RESET}"
            print(
                f"   {name:16} digest {'matches' if same_digest else 'DIFFERS'}; base login {'intact' if intact else 'LOST'}: {mark}"
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

        ok = code == 0 and all(d and i for _, d, i in results) and lost
        print(f"\n{GREEN if ok else RED}{BOLD}demo {'passed' if ok else 'FAILED'}{RESET}")
        return 0 if ok else 1
    finally:
        for r in registries:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
