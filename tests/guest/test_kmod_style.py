"""Kernel style of kmod/: checkpatch.pl --strict, sparse (make C=1), no warnings (W=1).

checkpatch.pl comes from Debian's linux-source package (fetched with the first suite's
image apt, cached under <cache root>/checkpatch, never committed).  The builds
run in each suite's chroot with that kernel's headers and gcc.
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
KMOD = REPO / "kmod"
CACHE = harness.util.cache_root() / "checkpatch"
KERNEL_SOURCES = ("frelink.c", "compat.h", "allowlist.h", "uapi/frelink.h")
DIAGNOSTIC = re.compile(r"\b(warning|error):", re.I)
# Suites whose sparse cannot read their kernel's headers: W=1 only there. 7.3's
# compiler_types.h uses __typeof_unqual__ under __CHECKER__, which trixie's sparse 0.6.4
# does not know (every header "error: got __typeof_unqual__"); 0.6.5 is only in sid.
NO_SPARSE = {"trixie-backports": "trixie's sparse 0.6.4 cannot parse 7.3's headers (__typeof_unqual__)"}


def checkpatch_script():
    """scripts/checkpatch.pl of the first suite's linux-source, cached under the cache root.

    Fetched with the apt of that suite's image (its own lists), not the host's.
    """
    for script in sorted(CACHE.glob("linux-source-*/scripts/checkpatch.pl")):
        return script
    suite = harness.SUITES[0]
    download = harness.chroot.build_root(suite) / "checkpatch"
    download.mkdir(parents=True, exist_ok=True)
    fetch = ["apt-get", "-q", "download"]
    harness.chroot_run(suite, fetch + ["linux-source"], cwd="/build/checkpatch")
    meta = sorted(download.glob("linux-source_*.deb"))[-1]
    depends = subprocess.run(["dpkg-deb", "-f", str(meta), "Depends"], check=True, capture_output=True,
                             text=True).stdout
    package = re.search(r"(linux-source-[0-9.]+)", depends).group(1)
    harness.chroot_run(suite, fetch + [package], cwd="/build/checkpatch")
    deb = sorted(download.glob(package + "_*.deb"))[-1]
    wanted = [package + "/scripts/" + name
              for name in ("checkpatch.pl", "spelling.txt", "const_structs.checkpatch")]
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        "dpkg-deb --fsys-tarfile %s | tar -xO ./usr/src/%s.tar.xz | tar -xJ %s" % (deb, package, " ".join(wanted)),
        shell=True, cwd=CACHE, check=True)
    harness.util.remove_tree(download)
    return CACHE / package / "scripts" / "checkpatch.pl"


def test_checkpatch_strict():
    script = checkpatch_script()
    proc = subprocess.run(["perl", str(script), "--strict", "--no-tree", "--terse", "--show-types", "-f",
                           *KERNEL_SOURCES], cwd=KMOD, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("suite", harness.KERNEL_SUITES)
def test_sparse_and_extra_warnings_clean(suite):
    if harness.chroot_run(suite, ["sh", "-c", "command -v sparse"], check=False).returncode:
        harness.chroot_run(suite, ["apt-get", "install", "-y", "--no-install-recommends", "sparse"])
    release = harness.prepare(suite).kernel_release
    # a tree of its own: every file compiled and checked, and no other test's build touched
    build_root = harness.chroot.build_root(suite)
    tree = Path(tempfile.mkdtemp(prefix="sparse-", dir=build_root)) / "frelink"
    shutil.copytree(KMOD, tree, ignore=shutil.ignore_patterns(*harness.chroot.KBUILD_PRODUCTS))
    in_chroot = "/build/%s" % tree.relative_to(build_root)
    try:
        # KBUILD_CHECKSRC=1 on the command line: Debian's 7.x headers lack
        # scripts/checker-valid.sh, so kbuild would otherwise switch C=1 off.
        sparse = ["C=1", "KBUILD_CHECKSRC=1"] if suite not in NO_SPARSE else []
        proc = harness.chroot_run(suite, ["make", "-C", "/lib/modules/%s/build" % release, "M=" + in_chroot,
                                          *sparse, "W=1", "modules"], cwd=in_chroot)
    finally:
        harness.util.remove_tree(tree.parent)
    output = proc.stdout + proc.stderr
    if suite not in NO_SPARSE:
        assert re.search(r"CHECK +\S*frelink\.c", output), "sparse did not run:\n" + output
    assert "frelink.ko" in output
    assert not [line for line in output.splitlines() if DIAGNOSTIC.search(line)], output
    if suite in NO_SPARSE:
        pytest.skip("W=1 clean; sparse not run: " + NO_SPARSE[suite])


@pytest.mark.parametrize("suite", harness.KERNEL_SUITES)
def test_kernel_checks_the_module_cannot_call_are_still_not_exported(suite):
    """do_linkat() calls security_path_link() (AppArmor, TOMOYO), /proc calls ptrace_may_access();
    modules cannot, because no kernel exports them.  If a kernel starts exporting one, this fails:
    then call it (docs/kmod.md)."""
    release = harness.prepare(suite).kernel_release
    symvers = harness.chroot_run(suite, ["cat", "/lib/modules/%s/build/Module.symvers" % release]).stdout
    exported = {line.split("\t")[1] for line in symvers.splitlines() if line.count("\t") >= 3}
    assert "vfs_link" in exported, "Module.symvers of %s lists no vfs_link: not a symbol table" % release
    assert "security_path_link" not in exported, (
        "%s exports security_path_link: call it in frelink_relink_dentry() like do_linkat()" % release)
    # /proc/PID/fd and map_files check ptrace_may_access(); FRELINK_IOC_HELD requires
    # CAP_SYS_PTRACE instead, which passes that check for every process but for its LSM hook
    for symbol in ("ptrace_may_access", "security_ptrace_access_check", "mm_access"):
        assert symbol not in exported, (
            "%s exports %s: call it per process in frelink_held_process() like /proc does" % (release, symbol))
