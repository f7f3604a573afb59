# -*- coding: utf-8 -*-
"""The class of each held deleted file, and the unit that holds it, on real files: a library
a process maps, replaced by a rename (a deploy); a running executable replaced; a data file
deleted while open and re-created (still lost: its old content is unique); a mapped data
file re-created; a package's file replaced by a real `dpkg -i` upgrade on this host; a
holder in a real cgroup named as systemd names a service.  Root needed."""

import contextlib
import gc
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from orphans import (
    _cgroup2_mount,
    collection_path,
    deleted_exe,
    deleted_open_file,
    holder,
    mapped_only_file,
    require_root,
)

collection_path()
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scan_mod  # noqa: E402

LIBRARY = "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13"  # zlib1g: on every Debian host


@pytest.fixture(autouse=True)
def _root():
    require_root()


def facts_of(directory):
    facts = scan_mod.scan(include=[str(directory) + "/*"], limit=0)
    return facts, {o["ino"]: o for o in facts["orphans"]}


def replace_by_rename(path, content_from):
    """What a deploy or package manager does: a new file beside it, renamed over it."""
    new = Path(str(path) + ".new")
    shutil.copy2(content_from, new)
    os.rename(new, path)


@contextlib.contextmanager
def mapped_library(directory):
    """A shared library that a process loaded (ctypes: dlopen maps it executable, closes the fd)."""
    if not os.path.exists(LIBRARY):
        pytest.fail("%s is missing (Debian's zlib1g)" % LIBRARY)
    path = Path(directory) / "libfrelinktest.so.1"
    shutil.copy2(LIBRARY, path)
    st = os.stat(path)
    with holder("import ctypes; ctypes.CDLL(%r)" % str(path)) as (proc, _out):
        yield path, st, proc


def test_classes_of_replaced_code_and_recreated_data(tmp_path):
    with contextlib.ExitStack() as stack:
        lib, lib_st, _proc = stack.enter_context(mapped_library(tmp_path))
        replace_by_rename(lib, LIBRARY)
        exe = stack.enter_context(deleted_exe(tmp_path, name="daemon"))
        shutil.copy2(shutil.which("sleep"), exe.path)  # the new version of the program
        data = stack.enter_context(deleted_open_file(tmp_path, size=5000, name="state.db", writer=True,
                                                     recreate=True))
        gone = stack.enter_context(deleted_open_file(tmp_path, size=6000, name="gone.log", writer=True))
        mapped = stack.enter_context(mapped_only_file(tmp_path, size=8192, name="cache.bin"))
        Path(mapped.path).write_bytes(b"a new cache\n")
        stack.callback(os.unlink, mapped.path)

        facts, by_ino = facts_of(tmp_path)
        assert by_ino[lib_st.st_ino]["class"] == "replaced", by_ino[lib_st.st_ino]
        assert by_ino[lib_st.st_ino]["path_free"] is False
        assert "package" not in by_ino[lib_st.st_ino]  # in no package: a deploy replaced it
        assert by_ino[exe.ino]["class"] == "replaced"
        assert by_ino[data.ino]["class"] == "lost"  # re-created at the same path: its old content is unique
        assert by_ino[data.ino]["path_free"] is False
        assert by_ino[gone.ino]["class"] == "lost"
        assert by_ino[mapped.ino]["class"] == "lost"  # mapped, re-created, but data (not ELF)
        by_class = facts["summary"]["by_class"]
        counts = {k: v["count"] for k, v in by_class.items()}
        assert counts == {"lost": 3, "replaced": 2, "deliberate": 0, "kernel": 0}
        assert sum(v["bytes_pinned"] for v in by_class.values()) == facts["summary"]["bytes_pinned"]
        assert by_class["replaced"]["bytes_pinned"] == sum(by_ino[i]["allocated"] for i in (lib_st.st_ino, exe.ino))


def test_a_deleted_library_whose_path_is_empty_is_lost(tmp_path):
    """Nothing newer at its path: the old file may be all there is (an accident), so it stays lost."""
    with mapped_library(tmp_path) as (lib, lib_st, _proc):
        os.unlink(lib)
        _facts, by_ino = facts_of(tmp_path)
        assert by_ino[lib_st.st_ino]["class"] == "lost"


def build_deb(work, version, text):
    root = work / ("pkg-" + version)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(textwrap.dedent("""\
        Package: frelink-test-content
        Version: %s
        Architecture: all
        Maintainer: frelink tests <root@localhost>
        Description: frelink test package: content replaced by an upgrade
        """ % version))
    share = root / "usr" / "share" / "frelink-test-content"
    share.mkdir(parents=True)
    (share / "words.txt").write_text(text)
    deb = work / ("frelink-test-content_%s_all.deb" % version)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb


def test_package_content_replaced_by_a_dpkg_upgrade(tmp_path):
    if not shutil.which("dpkg"):
        pytest.fail("this test needs dpkg (a Debian host)")
    path = "/usr/share/frelink-test-content/words.txt"
    v1, v2 = build_deb(tmp_path, "1.0", "one\n" * 1000), build_deb(tmp_path, "2.0", "two\n" * 1000)
    subprocess.run(["dpkg", "-i", str(v1)], check=True, capture_output=True)
    try:
        ino = os.stat(path).st_ino
        with holder("fd = os.open(%r, os.O_RDONLY); out['fd'] = fd" % path):
            subprocess.run(["dpkg", "-i", str(v2)], check=True, capture_output=True)
            assert os.stat(path).st_ino != ino, "dpkg did not replace the file"
            facts = scan_mod.scan(include=[path], limit=0)
            (entry,) = facts["orphans"]
            assert (entry["ino"], entry["class"], entry["package"]) == (ino, "replaced", "frelink-test-content")
    finally:
        subprocess.run(["dpkg", "--purge", "frelink-test-content"], check=True, capture_output=True)


RPM_SPEC = """\
Name: frelink-test-rpm
Version: %s
Release: 1
Summary: frelink test package
License: MIT
BuildArch: noarch
%%description
content replaced by an upgrade
%%install
mkdir -p %%{buildroot}/usr/share/frelink-test-rpm
printf '%s' > %%{buildroot}/usr/share/frelink-test-rpm/words.txt
%%files
/usr/share/frelink-test-rpm/words.txt
"""


def build_rpm(work, version, text):
    top = work / ("rpmbuild-" + version)
    (top / "SPECS").mkdir(parents=True)
    spec = top / "SPECS" / "test.spec"
    spec.write_text(RPM_SPEC % (version, text))
    subprocess.run(["rpmbuild", "-bb", "--define", "_topdir %s" % top, str(spec)], check=True, capture_output=True)
    (rpm,) = (top / "RPMS" / "noarch").glob("*.rpm")
    return rpm


def test_package_content_replaced_by_an_rpm_upgrade(tmp_path):
    """rpm's own SQLite database, as RHEL 9 and Fedora keep it in /var/lib/rpm, written by a real rpm."""
    for tool in ("rpm", "rpmbuild"):
        if not shutil.which(tool):
            pytest.fail("this test needs %s (Debian package rpm, installed by scripts/bootstrap.sh)" % tool)
    path = "/usr/share/frelink-test-rpm/words.txt"
    v1, v2 = build_rpm(tmp_path, "1.0", "one\\n" * 500), build_rpm(tmp_path, "2.0", "two\\n" * 500)
    made_db = not os.path.exists("/var/lib/rpm")
    rpm = ["rpm", "--dbpath", "/var/lib/rpm"]
    if made_db:
        subprocess.run(rpm + ["--initdb"], check=True, capture_output=True)
    try:
        subprocess.run(rpm + ["-i", "--nodeps", "--noscripts", str(v1)], check=True, capture_output=True)
        ino = os.stat(path).st_ino
        with holder("fd = os.open(%r, os.O_RDONLY); out['fd'] = fd" % path):
            subprocess.run(rpm + ["-U", "--nodeps", "--noscripts", str(v2)], check=True, capture_output=True)
            assert os.stat(path).st_ino != ino, "rpm did not replace the file"
            gc.disable()  # what the scan holds must go when it returns, not at some later collection
            try:
                facts = scan_mod.scan(include=[path], limit=0)
            finally:
                gc.enable()
            (entry,) = facts["orphans"]
            assert (entry["ino"], entry["class"], entry["package"]) == (ino, "replaced", "frelink-test-rpm")
        # the scan let go of rpm's database: no descriptor and no mapping of it stays
        # (rpm replaces its -shm file, so one left behind is a deleted file this process holds)
        held = [os.readlink("/proc/self/fd/%s" % fd) for fd in os.listdir("/proc/self/fd")
                if os.path.exists("/proc/self/fd/%s" % fd)]
        with open("/proc/self/maps") as maps:
            held += [line.split(None, 5)[-1].strip() for line in maps]
        assert not [name for name in held if "rpmdb" in name], held
    finally:
        subprocess.run(rpm + ["-e", "--nodeps", "--noscripts", "frelink-test-rpm"], check=False, capture_output=True)
        if made_db:
            shutil.rmtree("/var/lib/rpm", ignore_errors=True)
        shutil.rmtree("/usr/share/frelink-test-rpm", ignore_errors=True)


def test_holders_are_attributed_to_their_systemd_unit(tmp_path):
    """A real cgroup v2 named as systemd names a user's service below user@UID.service."""
    base = Path(_cgroup2_mount()) / ("frelink-test-%d.slice" % os.getpid())
    service = base / "user@4242.service" / "app.slice" / "frelink-probe.service"
    service.mkdir(parents=True)
    try:
        with deleted_open_file(tmp_path, size=3000, name="app.log", writer=True) as held:
            (service / "cgroup.procs").write_text("%d\n" % held.pid)
            _facts, by_ino = facts_of(tmp_path)
            (entry_holder,) = by_ino[held.ino]["holders"]
            assert (entry_holder["unit"], entry_holder["user_unit"]) == ("user@4242.service",
                                                                         "frelink-probe.service")
    finally:
        for directory in (service, service.parent, service.parent.parent, base):
            deadline = time.monotonic() + 10
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
