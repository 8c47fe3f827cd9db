#!/usr/bin/env bash
# Install the tools that test the GitLab CI/CD components offline:
#   gitlab-ci-local  runs a pipeline locally (shell executor); 4.73.0 is the
#                    last release that runs on Node 20 (4.74+ needs Node 22)
#   check-jsonschema validates pipelines against GitLab's CI schema (offline,
#                    --builtin-schema vendor.gitlab-ci)
# Idempotent: what is already installed (at the wanted version) is skipped.
# Called by scripts/install-deps.sh; run as root (or with a user-writable npm prefix).
set -euo pipefail

GITLAB_CI_LOCAL_VERSION=${GITLAB_CI_LOCAL_VERSION:-4.73.0}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if command -v gitlab-ci-local >/dev/null 2>&1 \
   && [ "$(gitlab-ci-local --version 2>/dev/null | tail -n1)" = "$GITLAB_CI_LOCAL_VERSION" ]; then
  :
elif command -v npm >/dev/null 2>&1; then
  say "npm: gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION"
  npm install -g --no-audit --no-fund --loglevel=error "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" >/dev/null
else
  echo "npm not found: gitlab-ci-local is not installed (its e2e tests skip locally, fail under CI=true)" >&2
fi

# gitlab-ci-local copies the work tree into .gitlab-ci-local/builds with rsync.
if ! command -v rsync >/dev/null 2>&1; then
  say "apt: rsync"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends rsync >/dev/null
fi

if ! python3 -c 'import check_jsonschema' >/dev/null 2>&1 || ! command -v check-jsonschema >/dev/null 2>&1; then
  say "pip: check-jsonschema"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore check-jsonschema
fi
say "CI tools ready"
