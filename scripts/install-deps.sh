#!/usr/bin/env bash
# Install everything authscope's demo and tests need on a fresh Debian machine.
# Idempotent: a second run only checks. Run as root (or with sudo for apt).
#
# What each tool is for (under CI=true a test whose tool is missing fails):
#   docker-registry   the distribution registry the e2e, reliability and
#                     benchmark tests start as local and target registries
#   skopeo            pushes the test images; one of the fan-out tools tested
#   apache2-utils     htpasswd: the registries' basic-auth users
#   openssl           the throwaway CA and certificates of the TLS registries
#   ca-certificates   TLS to the Go module proxy and PyPI while installing
#   rsync, git        gitlab-ci-local copies and reads the work tree with them
#   docker CLI        test_docker_cli and the credential-helper tests run
#                     `docker login/logout` (no daemon needed); Debian 12 has
#                     it only in docker.io (with the daemon), later releases
#                     in docker-cli; skipped when a docker is already on PATH
#   e2fsprogs         chattr +i: the immutable-base tests (hostile filesystem)
#   mount             mount/umount: the full-tmpfs and read-only-bind tests
#   mmdebstrap, buildah, binutils
#                     ./scripts/build-image: the image's Debian root file
#                     system, its build without a Docker daemon, strip for
#                     the tools it carries; tests/e2e/test_image.py runs it
#   podman, buildah   real clients of the tool matrix (REGISTRY_AUTH_FILE):
#                     tests/e2e/test_podman_buildah.py
#   crane, crane-0.16.1, regctl
#                     the fan-out tools; built with Go into .tools/bin (crane
#                     0.16.1 is the version of the reported wipe). Needs Go
#                     1.21+, which fetches the toolchain the modules ask for
#   cosign, oras      sign and attach referrers to the e2e source images and
#                     verify them at every target (signed releases)
#   regsync           regclient's declarative copier: the benchmark yardstick
#   gitlab-ci-local, check-jsonschema
#                     the CI/CD component tests (scripts/install-ci-tools.sh)
#   pytest, hypothesis, pytest-timeout
#                     pip: authscope's [test] extra
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions of the real clients the e2e tests run. crane v0.16.1 is the version
# the fan-out wipe was reported against (google/go-containerregistry#1898).
CRANE_REPORTED=v0.16.1
CRANE_LATEST=v0.22.1
REGCTL=v0.11.7
# Signed releases (cosign signatures/attestations, oras referrers) and the
# regsync yardstick of benchmarks/wan_fanout.py.
COSIGN=v2.6.5
ORAS=v1.3.6
TOOLS="$PWD/.tools/bin"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_packages=(docker-registry skopeo apache2-utils openssl rsync git ca-certificates e2fsprogs mount mmdebstrap buildah podman binutils)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
updated=""
apt_update() { [ -n "$updated" ] || { $SUDO apt-get update -qq; updated=1; }; }
if ! command -v docker >/dev/null 2>&1; then
  # Only the CLI is needed. bookworm has no docker-cli package: docker.io it is.
  apt_update
  if apt-cache policy docker-cli 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    missing+=(docker-cli)
  else
    missing+=(docker.io)
  fi
fi
if ((${#missing[@]})); then
  say "apt: ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the registry as a service on :5000; the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

say "pip: authscope (editable) with its test tools"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'

if command -v go >/dev/null 2>&1; then
  mkdir -p "$TOOLS"
  build() {  # build NAME MODULE VERSION
    local name=$1 module=$2 version=$3 tmp
    [ -x "$TOOLS/$name" ] && return
    say "go install $module@$version -> .tools/bin/$name"
    tmp=$(mktemp -d)
    # GOTOOLCHAIN=auto: the modules ask for a newer Go than some images
    # carry (crane 0.22 wants 1.25); golang images default to "local".
    GOBIN="$tmp" GOFLAGS=-mod=mod GOTOOLCHAIN="${GOTOOLCHAIN_FOR_TOOLS:-auto}" go install "$module@$version"
    mv "$tmp/$(basename "$module")" "$TOOLS/$name"
    rm -rf "$tmp"
  }
  build "crane-${CRANE_REPORTED#v}" github.com/google/go-containerregistry/cmd/crane "$CRANE_REPORTED"
  build crane github.com/google/go-containerregistry/cmd/crane "$CRANE_LATEST"
  build regctl github.com/regclient/regclient/cmd/regctl "$REGCTL"
  build regsync github.com/regclient/regclient/cmd/regsync "$REGCTL"
  build cosign github.com/sigstore/cosign/v2/cmd/cosign "$COSIGN"
  build oras oras.land/oras/cmd/oras "$ORAS"
else
  echo "go not found: crane and regctl are not installed (their e2e tests skip locally, fail under CI=true)" >&2
  if [ "${CI:-}" = true ]; then exit 1; fi
fi
# gitlab-ci-local and check-jsonschema: the CI/CD component tests.
./scripts/install-ci-tools.sh
say "dependencies ready"
