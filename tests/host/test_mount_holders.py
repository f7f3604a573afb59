# -*- coding: utf-8 -*-
"""Holder kind `mount`: a file bind-mounted somewhere (docker -v /srv/app.conf:/etc/app.conf),
then replaced at its source by a rename.  The old inode has no name left but is the root of
a mount; mountinfo shows that root as '/srv/app.conf//deleted'.

Real bind mounts on this host (our namespace, and private ones made with unshare), facts
through scan() and through Ansible, restore with method copy (no kernel module here).
Oracle: os.stat() of the mount point, which opens the held inode.  Needs root.
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

from orphans import PYTHON, collection_path, container_cgroup, holder, require_root

COLLECTIONS = collection_path()
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore import run as restore  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scanmod  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.plan import Options  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.targets import Target  # noqa: E402

BIN = Path(sys.executable).parent  # the venv with ansible-core
UNSHARE = ["unshare", "-m", "--propagation", "private"]


@pytest.fixture(autouse=True)
def need_root():
    require_root()


@pytest.fixture
def work(tmp_path):
    """A directory on the host's root filesystem (ext4 here), not under a symlink."""
    return Path(os.path.realpath(tmp_path))


def run(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def replace_by_rename(path, data):
    """What an editor or config management does: write a new file, rename it over the old one."""
    new = Path(str(path) + ".new")
    new.write_bytes(data)
    os.rename(new, path)


def mount_point_file(work, name="app.conf"):
    """The file a bind mount goes onto (in a container, the image's /etc/app.conf)."""
    target = work / "ct" / "etc" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"")
    return target


@contextlib.contextmanager
def bind_replaced(work, source_dir=None, name="app.conf", data=b"old config\n", replace=True):
    """SOURCE bind-mounted on a file of ours, then (replace) renamed over at its source.
    Yields: path (the source), mount_point, dev, ino (of the old source), data."""
    source = Path(source_dir or work / "srv") / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    st = os.stat(source)
    target = mount_point_file(work, name)
    run("mount", "--bind", str(source), str(target))
    try:
        if replace:
            replace_by_rename(source, b"new config\n")
        yield types.SimpleNamespace(path=str(source), mount_point=str(target), dev=st.st_dev, ino=st.st_ino,
                                    data=data)
    finally:
        umount(target)


def full_scan(**options):
    options.setdefault("limit", 0)
    return scanmod.scan(**options)


def entry_of(facts, dev, ino):
    found = [o for o in facts["orphans"] if (o["dev"], o["ino"]) == (dev, ino)]
    assert len(found) <= 1, found
    return found[0] if found else None


def mountinfo_line(mount_point, pid="self"):
    with open("/proc/%s/mountinfo" % pid) as f:
        lines = [line for line in f if line.split(" ")[4] == mount_point]
    assert lines, "%s is not in the mountinfo of %s" % (mount_point, pid)
    return lines[-1]


def identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def ansible(module, args, check=False):
    """One module ad hoc on localhost through Ansible; its result dict (failed set)."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1",
               PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))
    env.pop("ANSIBLE_LIBRARY", None)
    with tempfile.TemporaryDirectory() as tree:
        argv = [str(BIN / "ansible"), "localhost", "-m", "frelink.frelink." + module, "-a", json.dumps(args),
                "--tree", tree] + (["--check"] if check else [])
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
        result_file = Path(tree) / "localhost"
        assert result_file.exists(), proc.stdout + proc.stderr
        result = json.loads(result_file.read_text())
    result.setdefault("failed", proc.returncode != 0)
    return result


# ------------------------------------------------------------ facts: our namespace

@pytest.mark.parametrize("also_fd", [False, True], ids=["mount-only", "also-fd"])
def test_bind_mount_replaced_by_rename_is_found(work, also_fd):
    with contextlib.ExitStack() as stack:
        if also_fd:  # a process opened the source before it was renamed over
            source = work / "srv" / "app.conf"
            source.parent.mkdir()
            source.write_bytes(b"old config\n")
            proc, out = stack.enter_context(holder("out['fd'] = os.open(%r, os.O_RDONLY)" % str(source)))
        held = stack.enter_context(bind_replaced(work))
        line = mountinfo_line(held.mount_point)
        assert line.split(" ")[3] == held.path + "//deleted", line
        assert identity(held.mount_point) == (held.dev, held.ino) and os.stat(held.mount_point).st_nlink == 0
        for options in ({}, {"kinds": ["mount"]}, {"backend": "proc"}):
            entry = entry_of(full_scan(**options), held.dev, held.ino)
            assert entry is not None, "bind-mounted deleted file not found with %s" % options
            assert (entry["path"], entry["type"], entry["size"]) == (held.path, "file", len(held.data))
            assert entry["path_free"] is False  # the new file has its name
            mounts = [h for h in entry["holders"] if h["kind"] == "mount"]
            assert mounts == [{"kind": "mount", "mount_point": held.mount_point, "mntns": None,
                               "host_path": held.mount_point}]
            if also_fd and "kinds" not in options:
                assert [(h["kind"], h.get("pid")) for h in entry["holders"]] == [("fd", proc.pid), ("mount", None)]
                assert entry["open_path"] == "/proc/%d/fd/%d" % (proc.pid, out["fd"])
            else:
                assert len(entry["holders"]) == 1 and entry["open_path"] == held.mount_point
            with open(entry["open_path"], "rb") as f:
                assert f.read() == held.data
        summary = full_scan(include=[held.path])["summary"]
        assert summary["count"] == 1 and summary["by_kind"]["mount"] == 1
        assert [e["ino"] for e in scanmod.resolve_selector(held.path)] == [held.ino]
        assert [e["ino"] for e in scanmod.resolve_selector(held.mount_point)] == [held.ino]
        selector = "%d:%d:%d" % (os.major(held.dev), os.minor(held.dev), held.ino)
        assert [e["path"] for e in scanmod.resolve_selector(selector)] == [held.path]
        assert scanmod.find_orphan(held.dev, held.ino)["path"] == held.path


def test_facts_through_ansible(work):
    with bind_replaced(work) as held:
        result = ansible("frelink_facts", {"include": [str(work) + "/*"]})
        assert result["failed"] is False and result["changed"] is False, result
        facts = result["ansible_facts"]["frelink"]
        (entry,) = facts["orphans"]
        assert (entry["dev"], entry["ino"], entry["path"]) == (held.dev, held.ino, held.path)
        assert entry["holders"] == [{"kind": "mount", "mount_point": held.mount_point, "mntns": None,
                                     "host_path": held.mount_point}]
        assert entry["open_path"] == held.mount_point and "mount" in facts["scan"]["kinds"]
        assert facts["summary"]["by_kind"]["mount"] == 1
        only_fd = ansible("frelink_facts", {"include": [str(work) + "/*"], "kinds": ["fd"]})
        assert only_fd["ansible_facts"]["frelink"]["orphans"] == []


def test_source_on_another_filesystem_is_mapped_through_our_mount(work):
    """On a tmpfs mounted at FS, mountinfo's root is /sub/app.conf//deleted (the path within the tmpfs):
    the orphan's path is FS/sub/app.conf, where our namespace sees that file."""
    fs = work / "fs"
    fs.mkdir()
    run("mount", "-t", "tmpfs", "frelink-test", str(fs))
    try:
        with bind_replaced(work, source_dir=fs / "sub") as held:
            assert mountinfo_line(held.mount_point).split(" ")[3] == "/sub/app.conf//deleted"
            entry = entry_of(full_scan(), held.dev, held.ino)
            assert entry is not None and entry["path"] == str(fs / "sub" / "app.conf") == held.path
            assert (entry["fstype"], entry["mount_point"]) == ("tmpfs", str(fs))
    finally:
        umount(fs)


# ------------------------------------------------------------ facts: other namespaces

def bind_in_namespace_code(source, target):
    return "import subprocess\nsubprocess.run(['mount', '--bind', %r, %r], check=True)\n" % (str(source), str(target))


@pytest.mark.parametrize("contained", [False, True], ids=["namespace", "container"])
def test_bind_mount_in_another_namespace(work, contained):
    source = work / "srv" / "app.conf"
    source.parent.mkdir()
    source.write_bytes(b"container config\n")
    st = os.stat(source)
    target = mount_point_file(work)
    code = bind_in_namespace_code(source, target)
    with contextlib.ExitStack() as stack:
        if contained:
            container = stack.enter_context(container_cgroup("docker"))
            proc, _out = stack.enter_context(container.holder(code))
        else:
            proc, _out = stack.enter_context(holder(code, argv=UNSHARE + [PYTHON]))
        replace_by_rename(source, b"new config\n")
        host_path = "/proc/%d/root%s" % (proc.pid, target)
        assert identity(host_path) == (st.st_dev, st.st_ino)
        assert identity(target) != (st.st_dev, st.st_ino)  # our namespace has no such mount
        assert mountinfo_line(str(target), proc.pid).split(" ")[3] == str(source) + "//deleted"
        entry = entry_of(full_scan(), st.st_dev, st.st_ino)
        assert entry is not None, "a file bind-mounted in another namespace was not found"
        assert (entry["path"], entry["type"], entry["open_path"]) == (str(source), "file", host_path)
        expected = {"kind": "mount", "mount_point": str(target), "mntns": os.readlink("/proc/%d/ns/mnt" % proc.pid),
                    "host_path": host_path}
        if contained:
            expected["container"] = {"runtime": "docker", "id": container.id, "short_id": container.short_id}
        assert entry["holders"] == [expected]
        assert expected["mntns"] != os.readlink("/proc/self/ns/mnt")
        # selected by its original path and by the mount point reached from here
        for path in (str(source), host_path):
            assert [e["ino"] for e in scanmod.resolve_selector(path)] == [st.st_ino], path
        dest = work / "restored.conf"
        result, failures = restore.run({"path": host_path, "dest": str(dest), "method": "copy"})
        assert not failures and result["status"] == "restored", (result, failures)
        assert dest.read_bytes() == b"container config\n"


def test_first_process_of_the_namespace_chrooted(work):
    """The namespace's first process chroots into an empty directory after the bind mount: its
    mountinfo shows no mount outside its root.  A later process of the namespace (not chrooted)
    still sees the mount, and so must the scan."""
    source = work / "srv" / "app.conf"
    source.parent.mkdir()
    source.write_bytes(b"jailed namespace config\n")
    st = os.stat(source)
    target = mount_point_file(work)
    jail = work / "jail"
    jail.mkdir()
    code = bind_in_namespace_code(source, target) + (
        "import time\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    while True:\n"
        "        time.sleep(3600)\n"
        "out['child'] = child\n"
        "os.chroot(%r)\n"
        "os.chdir('/')\n") % str(jail)
    with holder(code, argv=UNSHARE + [PYTHON]) as (proc, out):
        replace_by_rename(source, b"new config\n")
        host_path = "/proc/%d/root%s" % (out["child"], target)
        assert identity(host_path) == (st.st_dev, st.st_ino)
        assert os.readlink("/proc/%d/ns/mnt" % proc.pid) == os.readlink("/proc/%d/ns/mnt" % out["child"])
        with open("/proc/%d/mountinfo" % proc.pid) as f:
            assert "//deleted" not in f.read()  # the chrooted first process does not show it
        entry = entry_of(full_scan(), st.st_dev, st.st_ino)
        assert entry is not None, "a bind mount hidden from the namespace's chrooted first process was not found"
        assert [(h["kind"], h["mount_point"], h["host_path"]) for h in entry["holders"]] == [
            ("mount", str(target), host_path)]


def test_filesystem_only_another_namespace_mounts_needs_dest(work):
    """The bind mount's source is on a tmpfs that only that namespace has: the path is the one
    within that tmpfs, and frelink_restore does not guess a destination in ours."""
    private = work / "private"
    private.mkdir()
    target = mount_point_file(work)
    code = ("import subprocess\n"
            "subprocess.run(['mount', '-t', 'tmpfs', 'frelink-test', %(p)r], check=True)\n"
            "open(%(p)r + '/app.conf', 'w').write('private\\n')\n"
            "subprocess.run(['mount', '--bind', %(p)r + '/app.conf', %(t)r], check=True)\n"
            "open(%(p)r + '/app.new', 'w').write('new\\n')\n"
            "os.rename(%(p)r + '/app.new', %(p)r + '/app.conf')\n"
            "st = os.stat(%(t)r)\n"
            "out.update(dev=st.st_dev, ino=st.st_ino)\n") % {"p": str(private), "t": str(target)}
    with holder(code, argv=UNSHARE + [PYTHON]) as (proc, out):
        entry = entry_of(full_scan(), out["dev"], out["ino"])
        assert entry is not None
        assert (entry["path"], entry["mount_point"]) == ("/app.conf", None)
        (mount,) = entry["holders"]
        assert mount["source_visible"] is False and mount["host_path"] == "/proc/%d/root%s" % (proc.pid, target)
        result, failures = restore.run({"device": entry["device"], "inode": entry["ino"], "method": "copy"})
        assert failures and "no known original path" in failures[0] and "set dest" in failures[0], failures
        assert not os.path.exists("/app.conf")
        dest = work / "rescued.conf"
        result, failures = restore.run({"device": entry["device"], "inode": entry["ino"], "method": "copy",
                                        "dest": str(dest)})
        assert not failures and dest.read_text() == "private\n", (result, failures)


# ------------------------------------------------------------ what is not a mount holder

def test_live_roots_are_not_reported(work):
    r"""No name can contain '/', so a live file cannot make a root that ends in '//deleted':
    a file named 'app.conf\057\057deleted' (backslashes) shows in mountinfo as
    'app.conf\134057\134057deleted' (the kernel escapes the backslash).  A root that really
    shows '//deleted' can still be live: the bind-mounted name was removed, but another hard
    link keeps the inode (st_nlink 1).  Neither is reported; a real one beside them is."""
    odd = work / "app.conf\\057\\057deleted"
    odd.write_text("live\n")
    odd_target = mount_point_file(work, "odd.conf")
    linked = work / "linked.conf"
    linked.write_text("still linked\n")
    os.link(linked, work / "other-name.conf")
    linked_target = mount_point_file(work, "linked.conf")
    run("mount", "--bind", str(odd), str(odd_target))
    try:
        run("mount", "--bind", str(linked), str(linked_target))
        try:
            linked.unlink()
            assert mountinfo_line(str(odd_target)).split(" ")[3] == str(work / "app.conf\\134057\\134057deleted")
            assert mountinfo_line(str(linked_target)).split(" ")[3] == str(linked) + "//deleted"
            assert os.stat(linked_target).st_nlink == 1
            with bind_replaced(work) as held:
                facts = full_scan(kinds=["mount"])
                assert entry_of(facts, *identity(odd)) is None
                assert entry_of(facts, *identity(linked_target)) is None
                assert entry_of(facts, held.dev, held.ino) is not None
        finally:
            umount(linked_target)
    finally:
        umount(odd_target)


def test_deleted_directory_mounted_is_a_directory(work):
    source = work / "data"
    source.mkdir()
    st = os.stat(source)
    target = work / "ct" / "data"
    target.mkdir(parents=True)
    run("mount", "--bind", str(source), str(target))
    try:
        source.rmdir()
        assert mountinfo_line(str(target)).split(" ")[3] == str(source) + "//deleted"
        entry = entry_of(full_scan(), st.st_dev, st.st_ino)
        assert entry is not None
        assert (entry["type"], entry["path"], entry["open_path"]) == ("directory", str(source), str(target))
        assert [h["kind"] for h in entry["holders"]] == ["mount"]
        result, failures = restore.run({"path": str(source), "dest": str(work / "back"), "method": "copy"})
        assert failures and "only regular files" in failures[0], failures
        assert not (work / "back").exists()
    finally:
        umount(target)


# ------------------------------------------------------------ restore

def test_restore_by_copy_through_ansible(work):
    with bind_replaced(work) as held:
        source = Path(held.path)
        args = {"path": held.path, "method": "copy"}
        # the new file holds the original path: refused, and nothing changes
        before = (source.read_bytes(), identity(source), identity(held.mount_point))
        refused = ansible("frelink_restore", args)
        assert refused["failed"] is True and "exists" in refused["msg"] and "nothing was touched" in refused["msg"]
        assert "mount on %s" % held.mount_point in refused["msg"], refused["msg"]
        assert (source.read_bytes(), identity(source), identity(held.mount_point)) == before
        # the new file removed: the original path is free
        source.unlink()
        checked = ansible("frelink_restore", args, check=True)
        assert checked["changed"] is True and checked["status"] == "would_restore", checked
        assert (checked["method"], checked["dest"], checked["ino"]) == ("copy", held.path, held.ino)
        assert not source.exists()
        done = ansible("frelink_restore", args)
        assert done["changed"] is True and done["status"] == "restored", done
        assert source.read_bytes() == held.data and identity(source) != (held.dev, held.ino)
        assert identity(held.mount_point) == (held.dev, held.ino)  # the mount keeps its inode
        again = ansible("frelink_restore", args)
        assert again["changed"] is False and again["status"] == "already_copied", again
        by_mount_point = ansible("frelink_restore", dict(args, path=held.mount_point))
        assert by_mount_point["changed"] is False and by_mount_point["dest"] == held.path, by_mount_point
        by_identity = ansible("frelink_restore", {"device": "%d:%d" % (os.major(held.dev), os.minor(held.dev)),
                                                  "inode": held.ino, "method": "copy"})
        assert by_identity["changed"] is False and by_identity["status"] == "already_copied", by_identity


def test_restore_checks_the_identity_of_what_the_mount_point_opens(work):
    """Between the scan and the copy the mount is replaced by a mount of another file (nothing
    can be mounted over it: its root is deleted): the copy opens the mount point, sees another
    inode and refuses."""
    with bind_replaced(work) as held:
        entry = scanmod.find_orphan(held.dev, held.ino)
        assert entry is not None and entry["open_path"] == held.mount_point
        other = work / "other.conf"
        other.write_text("another file\n")
        run("umount", held.mount_point)
        run("mount", "--bind", str(other), held.mount_point)
        dest = work / "restored.conf"
        with pytest.raises(RestoreError, match="no longer refers to"):
            restore.restore_target(Target(held.dev, held.ino, orphan=entry), str(dest), Options("copy"))
        assert not dest.exists() and other.read_text() == "another file\n"
