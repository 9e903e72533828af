#!/usr/bin/env bash
# Install the test dependencies and run every check: format, lint, types, import layers, tests.
# This is the README's second set-up command; .ci/run runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

# OS tools the tests drive as real clients (curl, openssl, git, ssh + nc) and the e2e namespace
# test (ip, nft).
# Installed only when missing and only when we may (root + apt); tests that need a missing tool
# skip with a reason instead.
need=()
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v git >/dev/null || need+=(git)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)        # SSH through socks_listen (test_socks_tools.py)
command -v nc >/dev/null || need+=(netcat-openbsd)       # ... via ProxyCommand 'nc -X 5'
command -v squid >/dev/null || [ -x /usr/sbin/squid ] || need+=(squid)   # import-squid tests compare with `squid -k parse`
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing OS packages: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") \
    >/dev/null || echo "warning: could not install ${need[*]}; dependent tests will skip"
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff format --check"; "$PYTHON" -m ruff format --check egressgate tests scripts
echo "== ruff check";          "$PYTHON" -m ruff check egressgate tests scripts
echo "== mypy";                "$PYTHON" -m mypy
echo "== import layers";       lint-imports
echo "== pytest"
# The tests mostly wait on sockets and subprocesses, so they run on one pytest-xdist worker per
# core (EGRESSGATE_TEST_WORKERS overrides: a number, or 0 to run serially in this process);
# `--dist loadgroup` keeps tests marked `xdist_group` on one worker. The 15 slowest are listed
# to watch the time budget (docs/testing.md). Arguments are passed on and win: `-n 0`, `-x`, paths.
cores() {
  # The CPUs this process may run on, fewer if a cgroup v2 CPU quota says so (a container
  # limited to 2 CPUs on a 64-core host must not start 64 workers).
  local n quota period
  n=$(nproc)
  if read -r quota period 2>/dev/null </sys/fs/cgroup/cpu.max && [ "$quota" != max ]; then
    quota=$(( (quota + period - 1) / period ))
    [ "$quota" -lt "$n" ] && n=$quota
  fi
  echo "$(( n > 0 ? n : 1 ))"
}
set +e
"$PYTHON" -m pytest -q -n "${EGRESSGATE_TEST_WORKERS:-$(cores)}" --dist loadgroup --durations=15 "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: treating as failure (a green run must have tested something)"
  exit 1
fi
exit "$status"
