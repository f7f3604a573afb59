"""frelink_reclaim on this host, through Ansible: real processes hold real deleted files on a small
loop-mounted ext4 (so os.statvfs gives exact figures), opened O_APPEND, O_WRONLY, O_RDWR or mapped.

Each holder opens its file, writes SIZE random bytes, fsyncs, unlinks it and then obeys commands on
stdin: `write N` writes N bytes at its offset (appending for O_APPEND) and fsyncs, answering with the
file's size and allocated bytes as its own fstat sees them.
"""
import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from test_restore import REPO, SYSTEM_PYTHON, ansible_module, ansible_playbook

HOLDER = r"""
import json, mmap, os, sys
path, size, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
flags = {"append": os.O_WRONLY | os.O_APPEND, "wronly": os.O_WRONLY, "rdwr": os.O_RDWR,
         "mapped": os.O_WRONLY | os.O_APPEND, "reader": os.O_RDONLY, "appendonly": os.O_WRONLY | os.O_APPEND}[how]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
data = os.urandom(size)
os.write(fd, data)
os.fsync(fd)
os.close(fd)
fd = os.open(path, flags)
if how != "append":
    os.lseek(fd, 0, os.SEEK_END)
keep = None
if how == "mapped":  # a log writer, and the same file mapped (by a descriptor closed since)
    mfd = os.open(path, os.O_RDONLY)
    keep = mmap.mmap(mfd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    os.close(mfd)
os.unlink(path)
if how == "appendonly":  # chattr +a on the deleted inode (FS_IOC_SETFLAGS, FS_APPEND_FL)
    import fcntl, struct
    got = struct.unpack("=i", fcntl.ioctl(fd, 0x80086601, b"\0" * 8)[:4])[0]
    fcntl.ioctl(fd, 0x40086602, struct.pack("=i", got | 0x20) + b"\0" * 4)
print(json.dumps({"fd": fd, "sha256": __import__("hashlib").sha256(data).hexdigest()}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "write":
        os.write(fd, b"L" * int(cmd[1]))
        os.fsync(fd)
    elif cmd[0] == "map":  # map it now (through a read-only descriptor, closed at once)
        mfd = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY)
        keep = mmap.mmap(mfd, os.fstat(mfd).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        os.close(mfd)
    st = os.fstat(fd)
    print(json.dumps({"size": st.st_size, "allocated": st.st_blocks * 512, "pos": os.lseek(fd, 0, os.SEEK_CUR),
                      "head": keep[:16].hex() if keep is not None else None}), flush=True)
"""


class Held:
    def __init__(self, path, size, how):
        self.path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
        self.proc = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLDER, self.path, str(size), how],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, "holder did not start for %s" % path
        info = json.loads(line)
        self.fd, self.sha256 = info["fd"], info["sha256"]
        self.src = "/proc/%d/fd/%d" % (self.proc.pid, self.fd)
        st = os.stat(self.src)
        assert st.st_nlink == 0
        self.dev, self.ino = st.st_dev, st.st_ino

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "holder %d exited" % self.proc.pid
        return json.loads(line)

    def state(self):
        return self.ask("stat")

    def alive(self):
        return self.proc.poll() is None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def _run(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True)


class SmallFs:
    """A small ext4 on a loop image, mounted under the test's directory: its free blocks are exact."""

    def __init__(self, base, name, size_mb=32):
        self.image = base / ("%s.img" % name)
        self.mnt = base / name
        self.mnt.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)])
        _run(["mount", "-o", "loop", str(self.image), str(self.mnt)])

    def free(self):
        """Free bytes (f_bfree) after the journal has settled."""
        os.sync()
        vfs = os.statvfs(self.mnt)
        return vfs.f_bfree * vfs.f_frsize

    def close(self):
        subprocess.run(["umount", "-d", str(self.mnt)], capture_output=True, check=False)


@pytest.fixture
def fs(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("these tests need root (loop devices, mounts, other processes' /proc entries)")
    made = []

    def make(name="fs", size_mb=32):
        small = SmallFs(Path(os.path.realpath(tmp_path)), name, size_mb)
        made.append(small)
        return small
    yield make
    for small in made:
        small.close()


@pytest.fixture
def held():
    made = []

    def make(path, size, how):
        one = Held(path, size, how)
        made.append(one)
        return one
    yield make
    for one in made:
        one.close()


MiB = 1 << 20


def test_check_predicts_real_run_frees_writers_keep_writing_rerun_unchanged(fs, held):
    small = fs()
    appender = held(small.mnt / "app.log", 3 * MiB, "append")
    writer = held(small.mnt / "plain.log", 2 * MiB, "wronly")
    args = {"paths": [str(small.mnt) + "/*"]}
    allocated = appender.state()["allocated"] + writer.state()["allocated"]
    assert allocated >= 5 * MiB
    free_before = small.free()

    checked = ansible_module("frelink_reclaim", args, check=True, diff=True)
    assert not checked["failed"], checked["_stdout"]
    assert checked["changed"] is True
    assert checked["bytes_to_free"] == allocated
    [fsrec] = checked["filesystems"]
    assert fsrec["bytes_to_free"] == allocated and fsrec["files"] == 2
    assert {r["status"] for r in checked["results"]} == {"would_reclaim"}
    assert "size: 0" in checked["_stdout"]  # the diff
    assert small.free() == free_before, "check mode changed the filesystem"
    assert appender.state()["size"] == 3 * MiB and writer.state()["size"] == 2 * MiB

    done = ansible_module("frelink_reclaim", args)
    assert not done["failed"], done["_stdout"]
    assert done["changed"] is True
    assert {r["status"] for r in done["results"]} == {"reclaimed"}
    assert done["bytes_freed"] == allocated
    [fsrec] = done["filesystems"]
    assert fsrec["freed"] == allocated, fsrec  # os.statvfs before and after, in the module
    assert small.free() - free_before == allocated  # and as seen here
    assert "Traceback" not in done["_stdout"]

    # the rerun finds both at size 0: no change, nothing freed
    again = ansible_module("frelink_reclaim", args)
    assert not again["failed"] and again["changed"] is False, again["_stdout"]
    assert {r["status"] for r in again["results"]} == {"already_empty"} and again["bytes_freed"] == 0
    assert small.free() - free_before == allocated

    # the writers keep writing at their offsets: the appender at the new end, the other one past a hole
    block = os.statvfs(small.mnt).f_frsize
    assert appender.ask("write 1000") == {"size": 1000, "allocated": block, "pos": 1000, "head": None}
    after = writer.ask("write 1000")
    assert after["size"] == 2 * MiB + 1000 and after["pos"] == 2 * MiB + 1000
    assert after["allocated"] <= 2 * block, "the non-append writer's file should be sparse: %s" % after
    with open(writer.src, "rb") as f:
        assert f.read(4096) == b"\0" * 4096
        f.seek(2 * MiB)
        assert f.read() == b"L" * 1000
    assert appender.alive() and writer.alive()

    # a file already at size 0 is no change either
    empty = held(small.mnt / "empty.log", 0, "append")
    zero = ansible_module("frelink_reclaim", {"src": empty.src})
    assert zero["changed"] is False and zero["status"] == "already_empty", zero["_stdout"]


def test_mapped_and_read_write_refused_by_default_opt_in_truncates_read_write_only(fs, held):
    small = fs()
    mapped = held(small.mnt / "mapped.log", MiB, "mapped")
    rdwr = held(small.mnt / "db.data", MiB, "rdwr")
    mapped_before = mapped.state()
    assert mapped_before["size"] == MiB and mapped_before["head"]
    free_before = small.free()

    refused = ansible_module("frelink_reclaim", {"paths": [str(small.mnt) + "/*"]})
    assert refused["failed"] and not refused["changed"], refused["_stdout"]
    by_path = {Path(r["path"]).name: r for r in refused["results"]}
    assert [x["rule"] for x in by_path["mapped.log"]["refusals"]] == ["mapped"]
    assert "SIGBUS" in by_path["mapped.log"]["msg"] and "restart process python3[%d]" % mapped.proc.pid \
        in by_path["mapped.log"]["msg"]
    assert [x["rule"] for x in by_path["db.data"]["refusals"]] == ["read_write"]
    assert "allow_read_write" in by_path["db.data"]["msg"]
    assert small.free() == free_before
    assert mapped.state()["size"] == MiB and rdwr.state()["size"] == MiB

    # opted in, the two together: the mapped one is still refused, so nothing changes at all
    both = ansible_module("frelink_reclaim", {"paths": [str(small.mnt) + "/*"], "allow_read_write": True})
    assert both["failed"] and not both["changed"], both["_stdout"]
    assert rdwr.state()["size"] == MiB and small.free() == free_before

    opted = ansible_module("frelink_reclaim", {"src": rdwr.src, "allow_read_write": True})
    assert not opted["failed"] and opted["changed"] and opted["status"] == "reclaimed", opted["_stdout"]
    assert rdwr.state()["size"] == 0
    assert small.free() - free_before == MiB

    still = ansible_module("frelink_reclaim", {"device": "%d" % mapped.dev, "inode": mapped.ino,
                                               "allow_read_write": True})
    assert still["failed"] and not still["changed"] and still["status"] == "refused", still["_stdout"]
    assert mapped.state() == mapped_before
    assert mapped.alive()
    assert "Traceback" not in refused["_stdout"] + both["_stdout"] + still["_stdout"]


def test_archive_dir_same_fs_refused_other_fs_gets_verified_gzip(fs, held):
    small = fs()
    other = fs("archive")
    log = held(small.mnt / "big.log", 4 * MiB, "append")
    (small.mnt / "keep").mkdir()
    free_before = small.free()

    same = ansible_module("frelink_reclaim", {"src": log.src, "archive_dir": str(small.mnt / "keep")})
    assert same["failed"] and not same["changed"], same["_stdout"]
    assert "on the filesystem being freed" in same["msg"]
    assert os.listdir(small.mnt / "keep") == [] and log.state()["size"] == 4 * MiB

    tiny = fs("tiny", size_mb=2)
    full = ansible_module("frelink_reclaim", {"src": log.src, "archive_dir": str(tiny.mnt)})
    assert full["failed"] and not full["changed"], full["_stdout"]
    assert "bytes free" in full["msg"] and "%d bytes" % (4 * MiB) in full["msg"]
    assert log.state()["size"] == 4 * MiB and small.free() == free_before

    done = ansible_module("frelink_reclaim", {"src": log.src, "archive_dir": str(other.mnt)})
    assert not done["failed"] and done["changed"], done["_stdout"]
    archive = Path(done["archive"]["archive"])
    assert archive.parent == other.mnt
    data = gzip.decompress(archive.read_bytes())
    assert len(data) == 4 * MiB and hashlib.sha256(data).hexdigest() == log.sha256
    assert done["archive"]["sha256"] == log.sha256
    assert log.state()["size"] == 0 and small.free() - free_before == 4 * MiB
    again = ansible_module("frelink_reclaim", {"src": log.src, "archive_dir": str(other.mnt)})
    assert again["changed"] is False and len(os.listdir(other.mnt)) == 2, again["_stdout"]  # + lost+found


def test_non_utf8_name(fs, held):
    small = fs()
    name = os.fsencode(str(small.mnt)) + b"/log-\xff\xfe.log"
    log = held(name, MiB, "append")
    free_before = small.free()
    other = fs("archive")
    done = ansible_module("frelink_reclaim", {"paths": [str(small.mnt) + "/log-*"], "archive_dir": str(other.mnt)})
    assert not done["failed"] and done["changed"], done["_stdout"]
    [item] = done["results"]
    # the archive is named after the file's exact bytes, and the result gives them back in base64
    archive = __import__("base64").b64decode(item["archive"]["archive_b64"])
    assert archive.startswith(os.fsencode(str(other.mnt)) + b"/log-\xff\xfe.log.") and os.path.exists(archive)
    assert hashlib.sha256(gzip.decompress(open(archive, "rb").read())).hexdigest() == log.sha256
    assert item["path"].endswith("/log-\\xff\\xfe.log")
    assert os.fsencode(item["path"]) != name and __import__("base64").b64decode(item["path_b64"]) == name
    assert log.state()["size"] == 0 and small.free() - free_before == MiB
    by_path = ansible_module("frelink_reclaim", {"path": item["path"]})
    assert not by_path["failed"] and by_path["changed"] is False, by_path["_stdout"]


def test_append_only_file_is_refused_in_check_mode_too(fs, held):
    small = fs()
    log = held(small.mnt / "audit.log", MiB, "appendonly")
    free_before = small.free()
    for check in (True, False):
        result = ansible_module("frelink_reclaim", {"src": log.src}, check=check)
        assert result["failed"] and not result["changed"] and result["status"] == "refused", result["_stdout"]
        assert "append-only" in result["msg"] and "chattr -a" in result["msg"], result["msg"]
    assert log.state()["size"] == MiB and small.free() == free_before and log.alive()


def _recap_changed(stdout):
    """changed=N of localhost in the PLAY RECAP."""
    line = [x for x in stdout.splitlines() if x.startswith("localhost") and "changed=" in x][-1]
    return int(line.split("changed=")[1].split()[0])


def test_reclaim_playbook_previews_check_then_frees_then_rerun_unchanged(fs, held):
    small = fs()
    log = held(small.mnt / "service.log", 2 * MiB, "append")
    db = held(small.mnt / "db.data", MiB, "rdwr")
    allocated = log.state()["allocated"]
    free_before = small.free()
    playbook = REPO / "playbooks" / "reclaim.yml"

    preview = ansible_playbook(playbook)  # nothing selected: a preview of every file, nothing truncated
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "would truncate %s" % (small.mnt / "service.log") in preview.stdout
    assert "%s is not reclaimed" % (small.mnt / "db.data") in preview.stdout and "read-write" in preview.stdout
    assert "Nothing is truncated until you select it" in preview.stdout
    assert small.free() == free_before and log.state()["size"] == 2 * MiB

    extra = {"frelink_reclaim_paths": [str(small.mnt) + "/*.log"]}
    checked = ansible_playbook(playbook, extra, check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "would free %d bytes in 1 files" % allocated in checked.stdout
    assert small.free() == free_before and log.state()["size"] == 2 * MiB

    done = ansible_playbook(playbook, extra)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "freed %d bytes in 1 files" % allocated in done.stdout
    assert small.free() - free_before == allocated
    assert log.state()["size"] == 0 and db.state()["size"] == MiB
    assert _recap_changed(done.stdout) == 1

    again = ansible_playbook(playbook, extra)
    assert again.returncode == 0 and _recap_changed(again.stdout) == 0, again.stdout

    # the read-write file selected without the opt-in: the host fails, nothing changes
    refused = ansible_playbook(playbook, {"frelink_reclaim_paths": [str(small.mnt) + "/*"]})
    assert refused.returncode != 0 and "allow_read_write" in refused.stdout, refused.stdout
    assert db.state()["size"] == MiB and _recap_changed(refused.stdout) == 0


def test_a_file_mapped_after_the_scan_is_refused_before_any_change(fs, held):
    """reclaim/recheck.py: the rule again on a fresh scan just before the first change; the module's own
    descriptor on the file is not a holder."""
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim import recheck, run as reclaim_run
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.handle import open_verified
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import scan
    small = fs()
    log = held(small.mnt / "late.log", MiB, "append")
    [entry] = scan(include=[log.path], limit=0)["orphans"]
    fd, st, through = open_verified(entry, os.O_WRONLY)
    try:
        plan = reclaim_run._Planned({}, entry, fd, st, through)
        assert (st.st_dev, st.st_ino) == (log.dev, log.ino) and through == log.src
        assert recheck.refused_now([plan], False) == []  # our own O_WRONLY descriptor does not count
        log.ask("map")
        [(again, found)] = recheck.refused_now([plan], False)
        assert again is plan and [rule for rule, _why in found] == ["mapped"], found
        assert [rule for rule, _why in recheck.refused_now([plan], True)[0][1]] == ["mapped"]
    finally:
        os.close(fd)
    assert log.state()["size"] == MiB and log.alive()
