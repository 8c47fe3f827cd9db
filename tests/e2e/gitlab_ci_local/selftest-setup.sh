# Sourced (`. tests/e2e/gitlab_ci_local/selftest-setup.sh`) as the `install`
# input of the component self-test in .gitlab-ci.yml, from the project
# directory. Installs authscope from this checkout with the registry, skopeo
# and htpasswd (./scripts/install-deps.sh, or the command line in
# $AUTHSCOPE_SELFTEST_INSTALL when set); starts the registries that
# tests/e2e/gitlab_ci_local/authscope.yml fans out between (registries.py);
# and exports their variables into the job's shell, CI_REGISTRY* among them,
# so the component's registry login goes to the "local" test registry that
# holds the source image. The registries stop when the job's shell exits.
eval "${AUTHSCOPE_SELFTEST_INSTALL:-./scripts/install-deps.sh}"
authscope_selftest_dir="${TMPDIR:-/tmp}/authscope-selftest-$$"
python3 tests/e2e/gitlab_ci_local/registries.py "$authscope_selftest_dir" &
authscope_selftest_wait=0
while [ ! -s "$authscope_selftest_dir/env" ]; do
  if [ "$authscope_selftest_wait" -ge 600 ] || ! kill -0 $! 2>/dev/null; then
    echo "selftest-setup: the registries did not start" >&2
    return 1 2>/dev/null || exit 1
  fi
  sleep 0.1
  authscope_selftest_wait=$((authscope_selftest_wait + 1))
done
. "$authscope_selftest_dir/env"
