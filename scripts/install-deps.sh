#!/usr/bin/env bash
# Install everything authscope's demo and tests need on a fresh Debian machine.
# Idempotent: a second run only checks. Run as root (or with sudo for apt).
set -euo pipefail
cd "$(dirname "$0")/.."

# Versions of the real clients the e2e tests run. crane v0.16.1 is the version
# the fan-out wipe was reported against (google/go-containerregistry#1898).
CRANE_REPORTED=v0.16.1
CRANE_LATEST=v0.22.1
REGCTL=v0.11.7
TOOLS="$PWD/.tools/bin"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

apt_packages=(docker-registry skopeo apache2-utils openssl rsync ca-certificates)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "apt: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
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
    GOBIN="$tmp" GOFLAGS=-mod=mod go install "$module@$version"
    mv "$tmp/$(basename "$module")" "$TOOLS/$name"
    rm -rf "$tmp"
  }
  build "crane-${CRANE_REPORTED#v}" github.com/google/go-containerregistry/cmd/crane "$CRANE_REPORTED"
  build crane github.com/google/go-containerregistry/cmd/crane "$CRANE_LATEST"
  build regctl github.com/regclient/regclient/cmd/regctl "$REGCTL"
else
  echo "go not found: crane and regctl are not installed (their e2e tests skip locally, fail under CI=true)" >&2
fi
# gitlab-ci-local and check-jsonschema: the CI/CD component tests.
./scripts/install-ci-tools.sh
say "dependencies ready"
