#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian host:
# Debian packages through apt, and the controller tools in a venv keyed by
# requirements-test.txt. Idempotent and quiet when nothing is missing.
# Prints the venv's path on stdout as its last line.
#   bootstrap.sh demo   what `make demo` needs: QEMU, image tools, the venv
#   bootstrap.sh [test] that, plus the test-only tools (sanity venv, linters, chromium)
set -euo pipefail
purpose=${1:-test}
case "$purpose" in demo|test) ;; *) echo "usage: $0 [demo|test]" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${FRELINK_CACHE:-$HOME/.cache/frelink}
mkdir -p "$cache"

debs=(
  qemu-system-x86 qemu-utils mmdebstrap debootstrap
  e2fsprogs util-linux zstd xz-utils openssh-client rsync
)
if [ "$purpose" = test ]; then
  debs+=(xfsprogs btrfs-progs dosfstools jfsutils sparse busybox-static cpio socat
         lsof gcc make chromium shellcheck attr acl libcap2-bin prometheus rpm)
fi
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: need root to install them (sudo $0)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

py=${FRELINK_PYTHON:-}
if [ -z "$py" ]; then
  for c in python3.11 python3; do
    p=$(command -v "$c" 2>/dev/null) || continue
    # resolve pyenv shims to the real interpreter: every start counts in tests
    py=$("$p" -c 'import sys; print(sys.executable)') && break
  done
fi
key=$(sha256sum < "$here/requirements-test.txt" | cut -c1-12)
venv=$cache/venv-$key
if [ ! -x "$venv/bin/ansible" ]; then
  echo "bootstrap: creating $venv (ansible-core, pytest, psutil, molecule, ansible-lint)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements-test.txt" >&2
fi

if [ "$purpose" = test ]; then
  # ansible-test sanity normally builds its own venvs with a pip bootstrap
  # fetched from outside the package registries; give it one venv holding the
  # pinned requirements of every sanity test instead, and run it with --local.
  sanity_venv=$cache/sanity-venv-$key
  if [ ! -x "$sanity_venv/bin/ansible-test" ]; then
    echo "bootstrap: creating $sanity_venv (ansible-test sanity requirements)" >&2
    rm -rf "$sanity_venv"
    "$py" -m venv "$sanity_venv"
    reqs=$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
    grep -hv '^#' "$reqs"/sanity.*.txt | sort -u > "$sanity_venv/requirements.txt"
    "$sanity_venv/bin/pip" install -q --disable-pip-version-check \
      "$(grep '^ansible-core==' "$here/requirements-test.txt")" -r "$sanity_venv/requirements.txt" >&2
  fi

  # The oldest ansible-core meta/runtime.yml allows (requires_ansible), for a second sanity run.
  floor=$(grep '^ansible-core==' "$here/tests/sanity-floor.txt")
  floor_venv=$cache/sanity-floor-venv-$(printf '%s\n' "$floor" | sha256sum | cut -c1-12)
  if [ ! -x "$floor_venv/bin/ansible-test" ]; then
    echo "bootstrap: creating $floor_venv ($floor and its sanity requirements)" >&2
    rm -rf "$floor_venv"
    "$py" -m venv "$floor_venv"
    "$floor_venv/bin/pip" install -q --disable-pip-version-check "$floor" >&2
    reqs=$("$floor_venv/bin/python" -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
    grep -hv '^#' "$reqs"/sanity.*.txt | sort -u > "$floor_venv/requirements.txt"
    "$floor_venv/bin/pip" install -q --disable-pip-version-check "$floor" -r "$floor_venv/requirements.txt" >&2
  fi

  for tool_venv in "$sanity_venv" "$floor_venv"; do
    pip_version=$("$tool_venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g; print(g(type("P", (), {"version": "3.11"})())["pip"])')
    get_pip=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
    if ! cmp -s "$here/scripts/ansible-test-get-pip.py" "$get_pip"; then
      mkdir -p "$(dirname "$get_pip")"
      cp "$here/scripts/ansible-test-get-pip.py" "$get_pip"
    fi
  done
fi

# The collection as Ansible finds it: a link from a per-checkout collections dir.
coll=$here/.build/collections/ansible_collections/frelink
mkdir -p "$coll"
# replaced only when it points elsewhere: tests running in parallel read it
[ "$(readlink "$coll/frelink" 2>/dev/null)" = "$here" ] || ln -sfn "$here" "$coll/frelink"
echo "$venv"
