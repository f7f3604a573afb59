"""The fresh-machine path, every run: what a new user meets, not what this host has cached.

- An image built from nothing in an empty cache root (FRELINK_CACHE), booted, reached
  over SSH: archive drift (a new kernel ABI, a renamed package, a new gcc) fails here
  first, not for a user.
- `make demo`, the README's main command, exactly as a user runs it, in that same
  cache root, with its outcome checked.
- The archive check that tells when a cached image's kernel is older than the
  archive's.

Both commands run with the host's kernel headers hidden (a private mount namespace
with an empty tmpfs over /usr/src/linux-* and /lib/modules), so nothing a developer's
host happens to have installed can make them pass: an image check that follows a
link through the host fails here.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness import archive

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"

HIDE_HOST_KERNEL_TREES = (
    'for d in /usr/src/linux-* /lib/modules; do '
    '[ -d "$d" ] && mount -t tmpfs -o ro frelink-hidden "$d"; done; exec "$@"'
)


def without_host_kernel_trees(argv):
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
            HIDE_HOST_KERNEL_TREES, "sh", *argv]


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """An empty cache root, shared by the image test and the demo test."""
    root = tmp_path_factory.mktemp("fresh-cache")
    yield root
    harness.util.remove_tree(root)


def run_timed(argv, env, timeout, what, cwd=REPO):
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    print(f"{what}: exit {proc.returncode} in {time.monotonic() - started:.0f} s")
    return proc


@pytest.mark.guest
@pytest.mark.slow
def test_image_from_nothing_boots_and_answers_ssh(fresh_cache, tmp_path):
    env = dict(os.environ, FRELINK_CACHE=str(fresh_cache))
    prepare = run_timed(without_host_kernel_trees([sys.executable, "-m", "harness", "prepare", SUITE]),
                        env, 1800, f"prepare {SUITE} in an empty cache")
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert "building the guest image" in prepare.stderr, "the cache root was not empty"
    facts = json.loads(prepare.stdout)
    assert facts["rootfs"].startswith(str(fresh_cache))
    release = facts["kernel_release"]
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", release), release
    rootfs = Path(facts["rootfs"])
    assert harness.rootfs.is_file(rootfs, harness.image.headers_makefile(release))

    instance = tmp_path / "guest"
    boot = run_timed(without_host_kernel_trees([sys.executable, "-m", "harness", "boot", SUITE,
                                                "--instance-dir", str(instance)]),
                     env, 900, "boot and reach ssh")
    try:
        assert boot.returncode == 0, boot.stdout + boot.stderr
        ssh = run_timed([sys.executable, "-m", "harness", "ssh", "--instance-dir", str(instance),
                         "uname -r; test -e /lib/modules/$(uname -r)/build/Makefile && echo headers"],
                        env, 120, "ssh")
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.split() == [release, "headers"]
    finally:
        subprocess.run([sys.executable, "-m", "harness", "stop", "--instance-dir", str(instance)],
                       cwd=REPO, env=env, capture_output=True, check=False)


@pytest.mark.guest
@pytest.mark.slow
def test_make_demo_as_a_user_runs_it(fresh_cache):
    env = dict(os.environ, FRELINK_CACHE=str(fresh_cache))
    # a user's shell, not the test venv: make finds its own tools through bootstrap.sh
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    demo = run_timed(without_host_kernel_trees(["make", "demo"]), env, 2400, "make demo")
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out[-6000:]
    assert "demo: done in" in out and "failed at stage" not in out
    assert "[10/10" in out, "the demo did not reach its last stage"
    assert "file(s) at risk" in out and "restore first" in out, "the demo did not show the audit's answer"
    found = re.search(r"/srv/demo/precious\.log: (\d+) bytes, inode (\d+) on .*relink possible: True", out)
    assert found, out[-4000:]
    restored = re.search(r"as the same inode (\d+); still written to: (\d+) -> (\d+) bytes", out)
    assert restored, out[-4000:]
    inode, before, after = (int(v) for v in restored.groups())
    assert inode == int(found.group(2)), "restored as another inode"
    assert before >= int(found.group(1)) and after > before, "writes after the restore are missing"
    assert "module unloaded: frelink is not in /proc/modules and /dev/frelink is gone" in out
    # the demo needs no test tooling: the sanity venv is made only for `make test`
    assert not list(fresh_cache.glob("sanity-venv-*"))


def test_archive_check_names_a_newer_kernel(tmp_path, monkeypatch, capsys):
    """Against the real archive: an image whose kernel package is older hears of the new one."""
    monkeypatch.setenv("FRELINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FRELINK_ARCHIVE_CHECK", raising=False)
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/lib/dpkg").mkdir(parents=True)
    (rootfs / "var/lib/dpkg/status").write_text(
        f"Package: {archive.KERNEL_PACKAGE}\nStatus: install ok installed\nPriority: optional\n"
        "Architecture: amd64\nVersion: 0.1-1\nDescription: an old kernel\n\n")
    old = harness.Env(suite=SUITE, rootfs=rootfs, kernel_release="0.1.0-1-amd64", vmlinuz=rootfs,
                      initrd=rootfs, disk=rootfs, ssh_key=rootfs, key="synthetic")
    archive.check_image(old)
    line = capsys.readouterr().err
    assert "the cached image has kernel 0.1.0-1-amd64" in line, line
    assert f"prepare {SUITE} --rebuild" in line
    result = json.loads((tmp_path / "cache" / SUITE / "archive-check.json").read_text())
    assert result["newer"] is True and result["installed"] == "0.1-1"
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+-amd64", result["candidate_release"])

    # the same status at the archive's own version: nothing to say
    (rootfs / "var/lib/dpkg/status").write_text(
        (rootfs / "var/lib/dpkg/status").read_text().replace("0.1-1", result["candidate"]))
    current = dataclasses.replace(old, key="synthetic-current")
    archive.check_image(current)
    assert "kernel" not in capsys.readouterr().err
