# -*- coding: utf-8 -*-
"""frelink_facts' scanner against real orphans of every kind on this host.

Oracles: the kernel itself (stat before deletion), findmnt for mounts, lsof +L1
for fd holders, /proc/PID/maps read by the test.  Needs root (fails otherwise).
"""

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from orphans import (
    PYTHON,
    collection_path,
    decoys,
    deleted_cwd,
    deleted_exe,
    deleted_open_file,
    deleted_root,
    holder,
    loop_image,
    mapped_only_file,
    require_root,
)

collection_path()
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scanmod  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import mounts  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import enrich  # noqa: E402
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi  # noqa: E402


@pytest.fixture(autouse=True)
def _root():
    require_root()


@pytest.fixture
def workdir(tmp_path):
    # tmp_path is on the root filesystem here; make it world-writable for the non-root test
    tmp_path.chmod(0o777)
    return tmp_path


def full_scan(**options):
    options.setdefault("limit", 0)
    return scanmod.scan(**options)


def entry_of(facts, dev, ino):
    found = [o for o in facts["orphans"] if o["dev"] == dev and o["ino"] == ino]
    assert len(found) <= 1, found
    return found[0] if found else None


def findmnt(path):
    out = subprocess.run(["findmnt", "-n", "-o", "TARGET,FSTYPE", "--target", str(path)], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    target, fstype = out.splitlines()[-1].split()  # stacked mounts: the last one is on top
    return target, fstype


def comm(pid):
    with open("/proc/%d/comm" % pid) as f:
        return f.read().strip()


def lsof_deleted_fds(pid):
    """{(fd, inode)} that `lsof +L1` reports for pid (link count < 1, fds only)."""
    out = subprocess.run(["lsof", "-nP", "+L1", "-a", "-p", str(pid), "-F", "fi"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, check=False).stdout
    found, fd = set(), None
    for line in out.splitlines():
        if line.startswith("f"):
            fd = line[1:]
        elif line.startswith("i") and fd is not None and fd.isdigit():
            found.add((int(fd), int(line[1:])))
    return found


def assert_scan_saw(facts, pid):
    """Root's scan is complete, except for processes protected even from root (this sandbox's pid 1)."""
    for warning in facts["scan"]["warnings"]:
        assert "protected even from root" in warning, warning
        assert " %d," % pid not in warning.replace(";", ",") and " %d)" % pid not in warning


def free_bytes(path):
    vfs = os.statvfs(path)
    return vfs.f_bavail * vfs.f_frsize


def assert_free_bytes_close(reported, path):
    actual = free_bytes(path)
    assert reported is not None and abs(reported - actual) <= max(64 << 20, actual // 100), (reported, actual)


@pytest.mark.parametrize("writer", [False, True], ids=["reader", "writer"])
def test_fd_orphan_exact_facts(workdir, writer):
    mount_point, fstype = findmnt(workdir)
    with deleted_open_file(workdir, size=10000, writer=writer) as held:
        facts = full_scan()
        entry = entry_of(facts, held.dev, held.ino)
        assert entry is not None, "deleted open file %s not found" % held.path
        (fs,) = [fs for fs in facts["summary"]["by_filesystem"] if fs["device"] == entry["device"]]
        assert (fs["mount_point"], fs["fstype"]) == (mount_point, fstype)
        assert_free_bytes_close(fs["free_bytes"], mount_point)
        assert entry == {
            "dev": held.dev,
            "device": "%d:%d" % (os.major(held.dev), os.minor(held.dev)),
            "ino": held.ino,
            "path": held.path,
            "type": "file",
            "size": 10000,
            "allocated": held.blocks * 512,
            "mode": "0640",
            "uid": 0, "owner": "root", "gid": 0, "group": "root",
            "mtime": entry["mtime"],
            "fstype": fstype,
            "mount_point": mount_point,
            "path_free": True,
            "open_path": held.proc_path,
            "class": "lost",
            "holders": [{"kind": "fd", "pid": held.pid, "name": comm(held.pid), "user": "root", "fd": held.fd,
                         "mode": "rw" if writer else "r", "pos": held.pos}],
            "restore": {"relink": kmod_abi.module_loaded() and kmod_abi.relink_supported(fstype),
                        "reflink": fstype in mounts.REFLINK_FSTYPES},
        }
        assert abs(entry["mtime"] - os.stat(held.proc_path).st_mtime) < 1e-6
        # Independent oracle: lsof agrees on this holder's deleted fds.
        ours = {(h["fd"], entry["ino"]) for h in entry["holders"] if h["pid"] == held.pid}
        assert lsof_deleted_fds(held.pid) == ours
        assert_scan_saw(facts, held.pid)
        assert facts["summary"]["by_kind"]["fd"] >= 1


def test_mapped_only_file(workdir):
    with mapped_only_file(workdir, size=3 * 4096) as held:
        facts = full_scan()
        entry = entry_of(facts, held.dev, held.ino)
        assert entry is not None, "mapped-only file not found"
        assert entry["path"] == held.path and entry["size"] == 3 * 4096 and "confirmed" not in entry
        assert entry["holders"] == [{"kind": "mmap", "pid": held.pid, "name": comm(held.pid), "user": "root",
                                     "range": held.range, "mappings": len(held.ranges)}]
        assert entry["open_path"] == "/proc/%d/map_files/%s" % (held.pid, held.range)
        assert os.stat(entry["open_path"]).st_ino == held.ino
        assert facts["summary"]["mapped_only"] >= 1
        # lsof +L1 does not see it: the very gap this module closes.
        assert lsof_deleted_fds(held.pid) == set()


def test_deleted_cwd(workdir):
    with deleted_cwd(workdir) as held:
        entry = entry_of(full_scan(), held.dev, held.ino)
        assert entry is not None
        assert (entry["type"], entry["path"], entry["path_free"]) == ("directory", held.path, True)
        assert [(h["kind"], h["pid"]) for h in entry["holders"]] == [("cwd", held.pid)]
        assert entry["open_path"] == "/proc/%d/cwd" % held.pid
        assert entry["restore"] == {"relink": False, "reflink": False}


def test_deleted_root(workdir):
    with deleted_root(workdir) as held:
        entry = entry_of(full_scan(), held.dev, held.ino)
        assert entry is not None
        assert (entry["type"], entry["path"]) == ("directory", held.path)
        assert sorted((h["kind"], h["pid"]) for h in entry["holders"]) == [("cwd", held.pid), ("root", held.pid)]
        # same mount namespace: the path is a host path, no mntns/host_path
        assert all("host_path" not in h for h in entry["holders"])


def test_deleted_exe(workdir):
    with deleted_exe(workdir) as held:
        entry = entry_of(full_scan(), held.dev, held.ino)
        assert entry is not None
        assert (entry["type"], entry["path"], entry["size"]) == ("file", held.path, held.size)
        kinds = {h["kind"] for h in entry["holders"] if h["pid"] == held.pid}
        assert kinds == {"exe", "mmap"}, entry["holders"]
        assert entry["open_path"] == "/proc/%d/exe" % held.pid
        with open(entry["open_path"], "rb") as exe, open(shutil.which("sleep"), "rb") as orig:
            assert exe.read() == orig.read()


def test_tmpfs_file_is_an_orphan():
    shm = "/dev/shm"
    mount_point, fstype = findmnt(shm)
    assert fstype == "tmpfs"
    directory = os.path.join(shm, "frelink-test-%d" % os.getpid())
    os.mkdir(directory)
    try:
        with deleted_open_file(directory, size=5000) as held:
            entry = entry_of(full_scan(), held.dev, held.ino)
            assert entry is not None
            assert (entry["fstype"], entry["mount_point"], entry["path"]) == ("tmpfs", mount_point, held.path)
            assert entry["restore"]["relink"] == kmod_abi.module_loaded()
    finally:
        shutil.rmtree(directory)


def test_recreated_path_is_not_free(workdir):
    with deleted_open_file(workdir, size=100, recreate=True) as held:
        facts = full_scan()
        entry = entry_of(facts, held.dev, held.ino)
        assert entry is not None and entry["path"] == held.path
        assert entry["path_free"] is False
        assert entry_of(facts, held.dev, held.recreated_ino) is None  # the new file is live


def test_deleted_file_named_like_deleted(workdir):
    """'x (deleted)' deleted shows as 'x (deleted) (deleted)': the orphan's path is 'x (deleted)'."""
    with deleted_open_file(workdir, size=10, name="x (deleted)") as held:
        entry = entry_of(full_scan(), held.dev, held.ino)
        assert entry is not None and entry["path"] == held.path
        assert held.path.endswith("x (deleted)")


def test_decoys_are_not_orphans(workdir):
    with decoys(workdir) as held:
        facts = full_scan()
        ours = [o for o in facts["orphans"] if any(h.get("pid") == held.pid for h in o["holders"])]
        assert ours == [], ours
        # the decoys are really there and look deleted to a text-based tool
        links = [os.readlink("/proc/%d/fd/%d" % (held.pid, held.fds[k])) for k in ("memfd", "tmpfile", "live")]
        assert all(link.endswith(" (deleted)") for link in links), links
        with open("/proc/%d/maps" % held.pid) as maps:
            text = maps.read()
        assert "/SYSV" in text and "/dev/zero (deleted)" in text


def test_loop_image_mounted_and_deleted(workdir):
    mount_point, fstype = findmnt(workdir)
    with loop_image(workdir, size_mb=16) as held:
        facts = full_scan()
        entry = entry_of(facts, held.dev, held.ino)
        assert entry is not None, "deleted loop backing file not found"
        assert entry["path"] == held.path
        assert (entry["fstype"], entry["mount_point"], entry["type"]) == (fstype, mount_point, "file")
        assert entry["confirmed"] is False and entry["open_path"] is None
        assert entry["holders"] == [{"kind": "loop", "device": held.device, "offset": 0, "sizelimit": 0,
                                     "read_only": False, "autoclear": False, "mounts": [held.mount_point]}]
        assert entry["restore"]["reflink"] is False
        assert facts["summary"]["by_kind"]["loop"] >= 1
        # min_size uses the loop device size for loop-only orphans
        assert entry_of(full_scan(min_size=16 << 20), held.dev, held.ino) is not None
        assert entry_of(full_scan(min_size=(16 << 20) + 1), held.dev, held.ino) is None


def test_loop_with_offset_also_held_by_fd(workdir):
    with loop_image(workdir, size_mb=8, mkfs=None, mount=False, offset=1 << 20, sizelimit=4 << 20,
                    hold_fd=True) as held:
        entry = entry_of(full_scan(), held.dev, held.ino)
        assert entry is not None
        assert "confirmed" not in entry and entry["size"] == 8 << 20
        assert entry["open_path"] == "/proc/%d/fd/%d" % (held.pid, held.fd)
        loop = [h for h in entry["holders"] if h["kind"] == "loop"]
        assert loop == [{"kind": "loop", "device": held.device, "offset": 1 << 20, "sizelimit": 4 << 20,
                         "read_only": False, "autoclear": False, "mounts": []}]
        assert {h["kind"] for h in entry["holders"]} == {"fd", "loop"}


def test_equal_sizes_are_listed_by_path(workdir):
    with deleted_open_file(workdir, size=4096, name="b.dat") as second, \
            deleted_open_file(workdir, size=4096, name="a.dat") as first, \
            deleted_open_file(workdir, size=8192, name="c.dat") as largest:
        paths = [o["path"] for o in full_scan(include=[str(workdir) + "/*"])["orphans"]]
        assert paths == [largest.path, first.path, second.path]


def test_options_filter_sort_and_summary(workdir):
    with deleted_open_file(workdir, size=1 << 20, name="big.log") as big, \
            deleted_open_file(workdir, size=4096, name="small.dat") as small, \
            mapped_only_file(workdir, size=8192, name="lib.so") as mapped:
        everything = full_scan(include=[str(workdir) + "/*"])
        paths = [o["path"] for o in everything["orphans"]]
        assert paths == [big.path, mapped.path, small.path]  # largest allocated first
        summary = everything["summary"]
        assert (summary["count"], summary["listed"], summary["truncated"]) == (3, 3, False)
        assert summary["by_kind"] == {"fd": 2, "mmap": 1, "cwd": 0, "root": 0, "exe": 0, "loop": 0, "swap": 0,
                                      "mount": 0}
        assert summary["mapped_only"] == 1
        by_path = {o["path"]: o["allocated"] for o in everything["orphans"]}
        assert summary["bytes_by_kind"] == {"fd": by_path[big.path] + by_path[small.path], "mmap": by_path[mapped.path],
                                            "cwd": 0, "root": 0, "exe": 0, "loop": 0, "swap": 0, "mount": 0}
        assert summary["deliberate"] == {"count": 0, "bytes_pinned": 0, "by_idiom": {}}
        assert summary["bytes_pinned"] == sum(o["allocated"] for o in everything["orphans"])
        assert summary["bytes_apparent"] == (1 << 20) + 4096 + 8192
        (fs,) = summary["by_filesystem"]
        assert (fs["count"], fs["bytes_pinned"]) == (3, summary["bytes_pinned"])

        limited = full_scan(include=[str(workdir) + "/*"], limit=1)
        assert [o["path"] for o in limited["orphans"]] == [big.path]
        assert (limited["summary"]["count"], limited["summary"]["listed"], limited["summary"]["truncated"]) == \
            (3, 1, True)
        assert [o["path"] for o in full_scan(include=[str(workdir) + "/*"], exclude=["*.log"])["orphans"]] == \
            [mapped.path, small.path]
        assert [o["path"] for o in full_scan(include=[str(workdir) + "/*"], min_size=8192)["orphans"]] == \
            [big.path, mapped.path]
        fd_only = full_scan(include=[str(workdir) + "/*"], kinds=["fd"])
        assert [o["path"] for o in fd_only["orphans"]] == [big.path, small.path]
        assert fd_only["scan"]["kinds"] == ["fd"]
        mmap_only = full_scan(include=[str(workdir) + "/*"], kinds=["mmap"])
        assert [o["path"] for o in mmap_only["orphans"]] == [mapped.path]
        with pytest.raises(ValueError, match="unknown kinds bogus"):
            scanmod.scan(kinds=["bogus"])


def test_other_mount_namespace(workdir):
    """A holder in its own mount namespace, on a tmpfs only that namespace sees."""
    private = workdir / "private"
    private.mkdir()
    code = ("import subprocess\n"
            "subprocess.run(['mount', '--make-rprivate', '/'], check=True)\n"
            "subprocess.run(['mount', '-t', 'tmpfs', 'frelink-test', %r], check=True)\n"
            "p = %r + '/in-ns.dat'\n"
            "fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600); os.write(fd, b'n' * 777)\n"
            "st = os.fstat(fd); os.unlink(p)\n"
            "out.update(fd=fd, dev=st.st_dev, ino=st.st_ino, path=p)") % (str(private), str(private))
    with holder(code, argv=["unshare", "-m", PYTHON]) as (proc, out):
        entry = entry_of(full_scan(), out["dev"], out["ino"])
        assert entry is not None
        assert (entry["path"], entry["fstype"], entry["mount_point"]) == (out["path"], "tmpfs", str(private))
        (hold,) = entry["holders"]
        assert hold["mntns"] == os.readlink("/proc/%d/ns/mnt" % proc.pid) != os.readlink("/proc/self/ns/mnt")
        assert hold["host_path"] == "/proc/%d/root%s" % (proc.pid, out["path"])
        assert entry["path_free"] is True
        assert not os.path.ismount(private)  # the host does not see that tmpfs


@pytest.fixture
def shared_dir():
    path = tempfile.mkdtemp(prefix="frelink-test-", dir="/tmp")
    os.chmod(path, 0o777)
    yield Path(path)
    shutil.rmtree(path)


def test_non_root_scan_is_partial(shared_dir):
    """As nobody: own fd orphans are found; the scan says it is partial and why."""
    workdir = shared_dir
    script = ("import json, sys; sys.path.insert(0, %r)\n"
              "from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import scan\n"
              "print(json.dumps(scan(limit=0)))") % str(collection_path())
    with holder("fd = os.open(%r, os.O_CREAT | os.O_RDWR, 0o600); os.unlink(%r); out['fd'] = fd; "
                "st = os.fstat(fd); out.update(dev=st.st_dev, ino=st.st_ino)"
                % (str(workdir / "nobody.dat"), str(workdir / "nobody.dat")), user=65534) as (_proc, out), \
            mapped_only_file(workdir) as mapped:
        result = subprocess.run([PYTHON, "-c", script], user=65534, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd="/", check=False)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        import json
        facts = json.loads(result.stdout)
        assert facts["scan"]["complete"] is False
        assert any("permission denied" in w and "become: true" in w for w in facts["scan"]["warnings"])
        assert facts["scan"]["euid"] == 65534
        assert entry_of(facts, out["dev"], out["ino"]) is not None
        assert entry_of(facts, mapped.dev, mapped.ino) is None  # root's holder: invisible to nobody


def test_vanishing_processes_never_break_the_scan(workdir):
    """Processes (with deleted files) that come and go while scanning."""
    stop = threading.Event()
    runs, errors = [], []
    churn = "import os, sys\nfor i in range(20):\n    p = sys.argv[1] + str(i)\n" \
            "    fd = os.open(p, os.O_CREAT | os.O_RDWR); os.unlink(p)\n"

    def spawn(prefix):
        while not stop.is_set():
            proc = subprocess.run([PYTHON, "-c", churn, prefix], stderr=subprocess.PIPE, text=True, check=False)
            (runs if proc.returncode == 0 else errors).append(proc.stderr)

    threads = [threading.Thread(target=spawn, args=(str(workdir / name),)) for name in ("a", "b")]
    for t in threads:
        t.start()
    try:
        for _round in range(15):
            facts = full_scan()
            assert not [w for w in facts["scan"]["warnings"] if "denied" not in w], facts["scan"]["warnings"]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert runs and not errors, errors[:1]


def test_find_orphan_and_resolve_selector(workdir):
    with deleted_open_file(workdir, size=123) as held, loop_image(workdir, size_mb=4, mkfs=None,
                                                                  mount=False, name="sel.img") as img:
        entry = scanmod.find_orphan(held.dev, held.ino)
        assert entry is not None and entry["path"] == held.path and entry["size"] == 123
        assert scanmod.find_orphan(held.dev, 1) is None
        assert [e["ino"] for e in scanmod.resolve_selector(held.proc_path)] == [held.ino]
        assert [e["ino"] for e in scanmod.resolve_selector(held.path)] == [held.ino]
        selector = "%d:%d:%d" % (os.major(held.dev), os.minor(held.dev), held.ino)
        assert [e["ino"] for e in scanmod.resolve_selector(selector)] == [held.ino]
        assert [e["ino"] for e in scanmod.resolve_selector(img.device)] == [img.ino]
        assert scanmod.resolve_selector(str(workdir / "never-existed")) == []


def test_many_holders_are_listed_up_to_the_cap_with_a_total(workdir):
    path = workdir / "shared.log"
    path.write_bytes(b"shared\n")
    st = os.stat(path)
    children = enrich.HOLDERS_CAP + 2
    # The holder and its forked children share one open fd on the file (killed together as a group).
    code = ("fd = os.open(%r, os.O_RDONLY)\nout['pids'] = []\nfor _n in range(%d):\n"
            "    child = os.fork()\n    if child == 0:\n        sys.stdin.read()\n        os._exit(0)\n"
            "    out['pids'].append(child)\n") % (str(path), children)
    with holder(code) as (proc, out):
        os.unlink(path)
        entry = entry_of(full_scan(), st.st_dev, st.st_ino)
        assert entry is not None
        assert entry["holder_count"] == children + 1
        assert len(entry["holders"]) == enrich.HOLDERS_CAP
        assert {h["pid"] for h in entry["holders"]} <= {proc.pid} | set(out["pids"])


SEMAPHORE_HOLDER = (
    "import multiprocessing, sys\n"
    "lock = multiprocessing.Lock()\n"  # sem_open() + sem_unlink(): a mapped, deleted /dev/shm/sem.*
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n")


def test_a_semaphore_its_creator_unlinked_is_marked_deliberate_and_still_counted():
    proc = subprocess.Popen([PYTHON, "-c", SEMAPHORE_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        facts = full_scan(include=["/dev/shm/sem.*"])
        mine = [o for o in facts["orphans"] if any(h.get("pid") == proc.pid for h in o["holders"])]
        assert len(mine) == 1 and mine[0]["holders"][0]["kind"] == "mmap", mine
        assert mine[0]["deliberate"]["idiom"] == "posix_semaphore" and "nothing was lost" in mine[0]["deliberate"]["why"]
        summary = facts["summary"]
        assert summary["count"] >= 1 and summary["deliberate"]["count"] == summary["count"]
        assert summary["deliberate"]["by_idiom"]["posix_semaphore"] == summary["count"]
    finally:
        proc.kill()
        proc.wait()


def test_backend_without_the_module(workdir):
    """This host cannot load the module: auto reads /proc and says so, kernel refuses with what
    to do, an unknown backend is a ValueError (the module's choices stop it earlier)."""
    assert not os.path.exists(kmod_abi.DEVICE_PATH), "this test needs a host without /dev/frelink"
    with deleted_open_file(workdir, name="backend.dat") as held:
        path = str(held.path)
        facts = scanmod.scan(include=[path])
        assert facts["scan"]["backend"] == "proc" and facts["summary"]["count"] == 1
        assert scanmod.scan(include=[path], backend="proc")["orphans"] == facts["orphans"]
    with pytest.raises(scanmod.KernelListingError) as info:
        scanmod.scan(backend="kernel")
    assert "not loaded" in info.value.strerror and "frelink_kmod" in info.value.strerror
    with pytest.raises(ValueError):
        scanmod.scan(backend="fast")
    assert scanmod.scan(kinds=["loop"])["scan"]["backend"] is None  # no process was looked at
