"""frelink_restore on this host (no kernel module here): copy, reflink on real
btrfs and xfs loop filesystems, every refusal, check mode, idempotence, the
bulk form and playbooks/recover.yml, through Ansible and through the module_utils.

Holders are separate processes (the system python, fast to start) that create
a file, keep it open, unlink it and then obey simple commands on stdin.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"
BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

HOLDER_SCRIPT = r"""
import os, sys, threading, time
path, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
data = os.urandom(size)
os.write(fd, data)
os.unlink(path)
stop = threading.Event()
def append():
    n = 0
    while not stop.is_set() and n < 16384:  # at most 64 MiB, about 4 MiB/s
        os.write(fd, (b"%08d" % n) * 512)  # 4 KiB records: a torn copy is visible
        n += 1
        time.sleep(0.001)
if mode == "append":
    threading.Thread(target=append, daemon=True).start()
print(fd, flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "write":  # write OFFSET TEXT
        os.pwrite(fd, cmd[2].encode(), int(cmd[1]))
        os.fsync(fd)
        print("ok", flush=True)
    elif cmd[0] == "stop":
        stop.set()
        time.sleep(0.05)
        print("ok", flush=True)
"""


class Holder:
    """A process holding `path` open after unlinking it."""

    def __init__(self, path, size=4096, mode="idle", cwd=None, argv_prefix=()):
        self.path = str(path)
        self.proc = subprocess.Popen(
            list(argv_prefix) + [SYSTEM_PYTHON, "-c", HOLDER_SCRIPT, self.path, str(size), mode],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError("holder for %s did not start (said %r)" % (path, line))
        self.fd = int(line)
        self.pid = self.proc.pid
        self.src = "/proc/%d/fd/%d" % (self.pid, self.fd)
        st = os.stat(self.src)
        self.dev, self.ino = st.st_dev, st.st_ino
        assert st.st_nlink == 0, "holder's file still has a name"

    def command(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def content(self):
        with open(self.src, "rb") as f:
            return f.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()


class Holders:
    """Factory fixture value: every holder made is killed at teardown."""

    def __init__(self):
        self.made = []

    def __call__(self, *args, **kwargs):
        holder = Holder(*args, **kwargs)
        self.made.append(holder)
        return holder

    def close(self):
        for holder in self.made:
            holder.close()


def ansible_env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
                ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1",
                PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))


def ansible_module(module, args, check=False, diff=False):
    """Runs one module ad hoc on localhost through Ansible; returns its result dict."""
    with tempfile.TemporaryDirectory() as tree:
        argv = [str(BIN / "ansible"), "localhost", "-m", "frelink.frelink." + module, "-a",
                args if isinstance(args, str) else json.dumps(args),
                "--tree", tree]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        proc = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(), timeout=300, check=False)
        result_file = Path(tree) / "localhost"
        assert result_file.exists(), proc.stdout + proc.stderr
        result = json.loads(result_file.read_text())
    result.setdefault("failed", proc.returncode != 0)  # the tree callback leaves it out
    result["_stdout"] = proc.stdout
    result["_rc"] = proc.returncode
    return result


def ansible_playbook(playbook, extra_vars=None, check=False, inventory=None, timeout=900):
    argv = [str(BIN / "ansible-playbook"), str(playbook)]
    if inventory:
        argv += ["-i", str(inventory)]
    else:
        argv += ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    return subprocess.run(argv, capture_output=True, text=True, env=ansible_env(), timeout=timeout, check=False)


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ---------------------------------------------------------------- fixtures

def _need_root_and_loop():
    if os.geteuid() != 0:
        pytest.fail("these tests need root (loop devices, mount, other processes' /proc entries): run as root")
    if not os.path.exists("/dev/loop-control"):
        pytest.fail("these tests need loop devices (/dev/loop-control is missing): modprobe loop")


def _run(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


class LoopFs:
    """A real filesystem on a loop image, mounted; removed at close()."""

    def __init__(self, base, fstype, size_mb, mkfs):
        self.fstype = fstype
        self.image = base / ("%s.img" % fstype)
        self.mnt = base / fstype
        self.mnt.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        _run(mkfs + [str(self.image)])
        self.loop = _run(["losetup", "--find", "--show", str(self.image)]).stdout.strip()
        try:
            _run(["mount", "-t", fstype, self.loop, str(self.mnt)])
        except subprocess.CalledProcessError:
            _run(["losetup", "-d", self.loop])
            raise

    def close(self):
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
        self.image.unlink()


@pytest.fixture(scope="module")
def cow_filesystems(tmp_path_factory):
    """btrfs and xfs (reflink=1) on loop images, plus a tmpfs: other filesystems than the test dir."""
    _need_root_and_loop()
    base = tmp_path_factory.mktemp("restore-fs")
    made = {}
    tmpfs = base / "tmpfs"
    tmpfs.mkdir()
    _run(["mount", "-t", "tmpfs", "-o", "size=64m", "frelink-test", str(tmpfs)])
    try:
        made["btrfs"] = LoopFs(base, "btrfs", 256, ["mkfs.btrfs", "-q", "-f"])
        made["xfs"] = LoopFs(base, "xfs", 320, ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"])
        yield {"btrfs": made["btrfs"].mnt, "xfs": made["xfs"].mnt, "tmpfs": tmpfs}
    finally:
        for fs in made.values():
            fs.close()
        subprocess.run(["umount", "-l", str(tmpfs)], capture_output=True, check=False)


@pytest.fixture
def holders():
    made = Holders()
    yield made
    made.close()


@pytest.fixture
def work(tmp_path):
    """A directory on the host's root filesystem (ext4 here), not under a symlink."""
    return Path(os.path.realpath(tmp_path))


def _restore(params, check_mode=False):
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore import run as restore
    return restore.run(params, check_mode=check_mode)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _tree(path):
    """Everything under path: name -> (type, size) (to show that refusals touched nothing)."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            out[os.path.relpath(full, path)] = (st.st_mode, st.st_size, st.st_ino, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------ copy

def test_copy_by_src_is_verified_preserves_metadata_and_is_idempotent(work, holders):
    held = holders(work / "data.bin", size=3 << 20)
    result, failures = _restore({"src": held.src, "method": "copy"})
    assert failures == []
    assert result["changed"] is True and result["status"] == "restored" and result["method"] == "copy"
    assert result["identity_preserved"] is False
    dest = work / "data.bin"
    data = dest.read_bytes()
    assert data == held.content()
    ver = result["verification"]
    assert ver["sha256"] == ver["source_sha256"] == _sha(data) and ver["size"] == 3 << 20
    assert ver["source_unchanged"] is True and ver["attempts"] == 1
    st = dest.stat()
    assert (st.st_dev, st.st_ino) != (held.dev, held.ino) and result["dest_ino"] == st.st_ino
    assert oct(st.st_mode & 0o7777) == oct(0o640)
    assert st.st_mtime_ns == os.stat(held.src).st_mtime_ns
    assert [p.name for p in work.iterdir()] == ["data.bin"], "temporary file left behind"
    # rerun: same bytes at dest -> nothing to do
    again, failures = _restore({"src": held.src, "method": "copy"})
    assert failures == [] and again["changed"] is False and again["status"] == "already_copied"
    # the holder writes: dest now differs, so the next copy is refused instead of overwriting
    held.command("write 0 CHANGED")
    refused, failures = _restore({"src": held.src, "method": "copy"})
    assert failures and "exists" in failures[0] and refused["changed"] is False
    assert dest.read_bytes() == data


def test_copy_through_ansible_check_diff_then_real_then_idempotent(work, holders):
    held = holders(work / "app.log", size=10000)
    dest = work / "restored" / "app.log"
    args = {"path": held.path, "dest": str(dest), "method": "copy", "create_parents": True}
    before = _tree(work)
    checked = ansible_module("frelink_restore", args, check=True, diff=True)
    assert checked["changed"] is True and checked["status"] == "would_restore", checked
    assert checked["method"] == "copy" and checked["created_dirs"] == [str(work / "restored")]
    assert "+method: copy" in checked["_stdout"] and "-state: absent" in checked["_stdout"]
    assert _tree(work) == before, "check mode changed the file system"
    done = ansible_module("frelink_restore", args)
    assert done["changed"] is True and done["status"] == "restored", done
    assert dest.read_bytes() == held.content()
    again = ansible_module("frelink_restore", args)
    assert again["changed"] is False and again["status"] == "already_copied", again


def test_copy_of_a_file_being_appended_is_consistent_or_refused(work, holders):
    held = holders(work / "growing.log", size=8 << 20, mode="append")
    dest = work / "copy.log"
    result, failures = _restore({"src": held.src, "dest": str(dest), "method": "copy", "copy_retries": 2})
    held.command("stop")
    final = held.content()
    if failures:
        assert "kept changing" in failures[0] and "torn copy is never kept" in failures[0]
        assert not dest.exists()
    else:
        copy = dest.read_bytes()
        # the appender only adds whole 4 KiB records after the first 8 MiB: a consistent copy is a prefix
        assert len(copy) >= 8 << 20 and (len(copy) - (8 << 20)) % 4096 == 0
        assert final[:len(copy)] == copy
        assert result["verification"]["sha256"] == _sha(copy)
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == [], "temporary file left behind"
    if failures:  # once the writer pauses, the copy goes through
        result, failures = _restore({"src": held.src, "dest": str(dest), "method": "copy"})
        assert failures == [] and dest.read_bytes() == held.content() == final


def test_copy_refuses_when_the_destination_filesystem_is_too_small(work, holders, cow_filesystems):
    held = holders(work / "big.bin", size=80 << 20)
    dest = cow_filesystems["tmpfs"] / "big.bin"  # 64 MiB tmpfs
    result, failures = _restore({"src": held.src, "dest": str(dest), "method": "copy"})
    assert failures and "needs %d bytes" % (80 << 20) in failures[0] and "free" in failures[0]
    assert not dest.exists()


# --------------------------------------------------------------- reflink

@pytest.mark.parametrize("fstype", ["btrfs", "xfs"])
def test_reflink_clone_is_identical_and_shares_extents(cow_filesystems, holders, fstype):
    mnt = cow_filesystems[fstype]
    held = holders(mnt / "vm.img", size=48 << 20)
    os.sync()
    free_before = os.statvfs(mnt)
    result, failures = _restore({"src": held.src, "method": "reflink"})
    assert failures == [], failures
    assert result["method"] == "reflink" and result["identity_preserved"] is False
    clone = (mnt / "vm.img").read_bytes()
    assert clone == held.content() and result["verification"]["sha256"] == _sha(clone)
    os.sync()
    free_after = os.statvfs(mnt)
    used = (free_before.f_bfree - free_after.f_bfree) * free_after.f_frsize
    assert used < 8 << 20, "a 48 MiB clone took %d bytes: not a reflink" % used
    again, failures = _restore({"src": held.src, "method": "reflink"})
    assert failures == [] and again["changed"] is False


def test_reflink_refused_on_ext4_and_auto_falls_back_to_copy(work, holders):
    held = holders(work / "db.ibd", size=1 << 20)
    result, failures = _restore({"src": held.src, "method": "reflink"})
    assert failures and "does not support reflinks" in failures[0] and "method: copy" in failures[0]
    assert not (work / "db.ibd").exists() and list(work.iterdir()) == []
    result, failures = _restore({"src": held.src, "method": "auto", "fallback": ["reflink", "copy"]})
    assert failures == [] and result["method"] == "copy", result
    assert "kernel module is not loaded" in result["fallback_reasons"][0]
    assert "does not support reflinks" in result["fallback_reasons"][1]
    assert (work / "db.ibd").read_bytes() == held.content()


# -------------------------------------------------------------- refusals

def test_documented_one_liner(work, holders):
    """docs/restore.md: `ansible localhost -m frelink.frelink.frelink_restore -a 'src=/proc/574/fd/4 method=copy'`."""
    held = holders(work / "one.txt", size=777)
    result = ansible_module("frelink_restore", "src=%s method=copy" % held.src)
    assert result["_rc"] == 0 and result["changed"] is True and result["dest"] == held.path, result
    assert (work / "one.txt").read_bytes() == held.content()


def test_link_without_module_names_the_role(work, holders):
    held = holders(work / "f", size=100)
    for args in ({"src": held.src, "method": "link"}, {"path": held.path}):
        result = ansible_module("frelink_restore", args)
        assert result.get("failed") is True
        assert "kernel module is not loaded" in result["msg"] and "frelink.frelink.frelink_kmod" in result["msg"]
    assert "no fallback allowed" in result["msg"]
    assert list(work.iterdir()) == []


def test_dest_exists_is_refused_and_untouched(work, holders):
    held = holders(work / "f", size=100)
    other = work / "other"
    other.write_text("keep me")
    result, failures = _restore({"src": held.src, "dest": str(other), "method": "copy"})
    assert failures and "exists" in failures[0] and "nothing was touched" in failures[0]
    assert str(other) in failures[0] and "choose another dest" in failures[0]
    assert other.read_text() == "keep me" and sorted(p.name for p in work.iterdir()) == ["other"]


def test_symlink_at_dest_is_refused_and_not_followed(work, holders):
    held = holders(work / "f", size=100)
    (work / "target").write_text("victim")
    os.symlink(work / "target", work / "f")  # planted at the original path
    result, failures = _restore({"src": held.src, "method": "copy"})
    assert failures and "is a symbolic link" in failures[0]
    assert (work / "target").read_text() == "victim" and os.path.islink(work / "f")
    os.symlink(work / "nowhere", work / "dangling")
    result, failures = _restore({"src": held.src, "dest": str(work / "dangling"), "method": "copy"})
    assert failures and "is a symbolic link" in failures[0] and not (work / "nowhere").exists()


def test_symlink_in_parent_is_refused(work, holders):
    held = holders(work / "f", size=100)
    (work / "real").mkdir()
    os.symlink(work / "real", work / "link")
    result, failures = _restore({"src": held.src, "dest": str(work / "link" / "f"), "method": "copy"})
    assert failures and "%s is a symbolic link" % (work / "link") in failures[0]
    assert "never follows symlinks" in failures[0]
    assert list((work / "real").iterdir()) == []
    # create_parents does not create through a symlink either
    result, failures = _restore({"src": held.src, "dest": str(work / "link" / "new" / "f"), "method": "copy",
                                 "create_parents": True})
    assert failures and "symbolic link" in failures[0] and list((work / "real").iterdir()) == []


def test_missing_parent_needs_create_parents(work, holders):
    held = holders(work / "f", size=100)
    dest = work / "a" / "b" / "f"
    result, failures = _restore({"src": held.src, "dest": str(dest), "method": "copy"})
    assert failures and "does not exist" in failures[0] and "create_parents: true" in failures[0]
    result, failures = _restore({"src": held.src, "dest": str(dest), "method": "copy", "create_parents": True},
                                check_mode=True)
    assert failures == [] and result["created_dirs"] == [str(work / "a"), str(work / "a" / "b")]
    assert not (work / "a").exists()
    result, failures = _restore({"src": held.src, "dest": str(dest), "method": "copy", "create_parents": True})
    assert failures == [] and dest.read_bytes() == held.content()


def test_cross_filesystem_link_is_refused_suggesting_copy(holders, work, cow_filesystems):
    held = holders(work / "f", size=100)
    dest = cow_filesystems["tmpfs"] / "f"
    result = ansible_module("frelink_restore", {"src": held.src, "dest": str(dest), "method": "link"})
    assert result.get("failed") is True and "another filesystem" in result["msg"]
    assert "method: copy" in result["msg"] and not dest.exists()


def test_ambiguous_original_path_lists_candidates(work, holders):
    first = holders(work / "same", size=10)
    second = holders(work / "same", size=20)
    result = ansible_module("frelink_restore", {"path": str(work / "same"), "method": "copy"})
    assert result.get("failed") is True and "does not guess" in result["msg"]
    assert {(c["dev"], c["ino"]) for c in result["candidates"]} == {(first.dev, first.ino), (second.dev, second.ino)}
    assert str(first.ino) in result["msg"] and str(second.ino) in result["msg"]
    assert not (work / "same").exists()
    # the candidates' identity selects one of them
    pick = result["candidates"][0]
    done = ansible_module("frelink_restore", {"device": pick["device"], "inode": pick["ino"], "method": "copy"})
    assert done["changed"] is True and done["dest"] == str(work / "same")
    held = first if (first.dev, first.ino) == (pick["dev"], pick["ino"]) else second
    assert (work / "same").read_bytes() == held.content()


def test_selector_errors(work, holders):
    result, failures = _restore({"src": "/etc/passwd"})
    assert failures and "neither /proc/PID/fd/N" in failures[0]
    result, failures = _restore({"path": str(work / "never-existed")})
    assert failures and "no deleted file that is still held" in failures[0]
    result, failures = _restore({"device": "0:0", "inode": 1})
    assert failures and "no deleted file that is still held" in failures[0]
    held = holders(work / "f", size=10)
    result, failures = _restore({"src": held.src, "dest": "relative/path", "method": "copy"})
    assert failures and "absolute" in failures[0]
    result, failures = _restore({"src": held.src, "dest": str(work / ".." / "x"), "method": "copy"})
    assert failures and "'..'" in failures[0]
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
    with pytest.raises(RestoreError, match="dest_dir 'rescued' must be an absolute path"):
        _restore({"src": held.src, "dest_dir": "rescued", "method": "copy", "create_parents": True})
    assert not os.path.exists("rescued")


def test_option_names_of_the_facts_are_aliases(work, holders):
    """ino and include, as frelink_facts names them, select as inode and paths do."""
    held = holders(work / "aliased.log", size=4096)
    facts = ansible_module("frelink_facts", {"include": [held.path]})
    (entry,) = facts["ansible_facts"]["frelink"]["orphans"]
    by_ino = ansible_module("frelink_restore", {"device": entry["device"], "ino": entry["ino"],
                                                "dest": str(work / "by-ino"), "method": "copy"}, check=True)
    assert by_ino["changed"] is True and by_ino.get("failed") is not True, by_ino
    by_include = ansible_module("frelink_restore", {"include": [held.path], "dest_dir": str(work / "d"),
                                                    "create_parents": True, "method": "copy"}, check=True)
    assert by_include["changed"] is True and len(by_include["results"]) == 1, by_include


def test_loop_only_holder_cannot_be_copied(work):
    _need_root_and_loop()
    image = work / "disk.img"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    loop = _run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    try:
        image.unlink()
        result = ansible_module("frelink_restore", {"src": loop, "method": "copy"})
        assert result.get("failed") is True
        assert "no process has it open" in result["msg"] and "method: link" in result["msg"], result
        result = ansible_module("frelink_restore", {"src": loop})
        assert result.get("failed") is True and "kernel module is not loaded" in result["msg"], result
        assert not image.exists()
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


# ------------------------------------------------------------------ bulk

def test_bulk_paths_into_dest_dir(work, holders):
    (work / "srv").mkdir()
    held = [holders(work / "srv" / name, size=1000 + i) for i, name in enumerate(("a", "b"))]
    holders(work / "other", size=5)  # not matched
    args = {"paths": [str(work / "srv" / "*")], "dest_dir": str(work / "out"), "method": "copy",
            "create_parents": True}
    result = ansible_module("frelink_restore", args)
    assert result["changed"] is True and len(result["results"]) == 2, result
    assert {r["status"] for r in result["results"]} == {"restored"}
    for h in held:
        assert (work / "out" / h.path.lstrip("/")).read_bytes() == h.content()
    assert not (work / "out" / str(work / "other").lstrip("/")).exists()
    again = ansible_module("frelink_restore", args)
    assert again["changed"] is False and {r["status"] for r in again["results"]} == {"already_copied"}
    flat = ansible_module("frelink_restore", dict(args, dest_dir=str(work / "flat"), layout="flat"))
    assert sorted(p.name for p in (work / "flat").iterdir()) == ["a", "b"], flat


# -------------------------------------------------------- recover.yml

def test_recover_playbook_with_copy_check_then_real(work, holders):
    (work / "srv").mkdir()
    held = holders(work / "srv" / "keep.db", size=2 << 20)
    playbook = REPO / "playbooks" / "recover.yml"
    extra = {"frelink_recover_paths": [str(work / "srv" / "*")], "frelink_recover_method": "copy",
             "frelink_recover_dest_dir": str(work / "rescued")}
    checked = ansible_playbook(playbook, extra, check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "would copy" in checked.stdout and str(work / "srv" / "keep.db") in checked.stdout
    assert not (work / "rescued").exists()
    done = ansible_playbook(playbook, extra)
    assert done.returncode == 0, done.stdout + done.stderr
    restored = work / "rescued" / held.path.lstrip("/")
    assert restored.read_bytes() == held.content()
    assert "restored 1" in done.stdout


def test_recover_playbook_takes_its_variables_from_inventory(work, holders):
    """Settings in inventory (host_vars here) select and place what is restored: play vars
    would outrank them and leave nothing selected."""
    (work / "srv").mkdir()
    held = holders(work / "srv" / "inventory.db", size=1 << 20)
    inventory = work / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    (inventory / "host_vars" / "localhost.yml").write_text(json.dumps({
        "frelink_recover_paths": [str(work / "srv" / "*")], "frelink_recover_method": "copy",
        "frelink_recover_dest_dir": str(work / "from-inventory")}))
    done = ansible_playbook(REPO / "playbooks" / "recover.yml", inventory=inventory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restored 1" in done.stdout, done.stdout
    assert (work / "from-inventory" / held.path.lstrip("/")).read_bytes() == held.content()


def test_rerun_after_an_overlay_rescue_is_unchanged(work):
    """A file deleted in an overlay's merged view and relinked into the rescue directory of
    its upper filesystem (a hard link made before the deletion stands in for the kernel
    module's relink: the same inode, one name, still held): the same task run again finds
    it there and changes nothing, instead of failing because no deleted file is left."""
    from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string
    from orphans import holder
    _need_root_and_loop()
    upper_fs, lower, merged = work / "upper-fs", work / "lower", work / "merged"
    for directory in (upper_fs, lower, merged):
        directory.mkdir()
    _run(["mount", "-t", "tmpfs", "-o", "size=16m", "frelink-test-upper", str(upper_fs)])
    try:
        (upper_fs / "upper").mkdir()
        (upper_fs / "work").mkdir()
        _run(["mount", "-t", "overlay", "frelink-test-overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
              % (lower, upper_fs / "upper", upper_fs / "work"), str(merged)])
        try:
            original = merged / "srv" / "app.db"
            original.parent.mkdir()
            original.write_bytes(b"rescued\n" * 512)
            code = "fd = os.open(%r, os.O_RDONLY); out['ino'] = os.fstat(fd).st_ino" % str(original)
            with holder(code) as (_proc, out):
                upper_dev = device_string(os.stat(upper_fs / "upper").st_dev).replace(":", "-")
                rescued = upper_fs / "frelink-rescue" / ("overlay-" + upper_dev) / str(original).lstrip("/")
                rescued.parent.mkdir(parents=True)
                os.link(upper_fs / "upper" / "srv" / "app.db", rescued)
                original.unlink()
                result, failures = _restore({"path": str(original)})
                assert not failures, failures
                expected = (False, "nothing_to_restore", str(rescued))
                assert (result["changed"], result["status"], result["dest"]) == expected, result
                assert os.stat(rescued).st_ino == out["ino"] and not original.exists()
        finally:
            subprocess.run(["umount", "-l", str(merged)], check=False)
    finally:
        subprocess.run(["umount", "-l", str(upper_fs)], check=False)


def test_rerun_by_identity_after_the_file_has_its_name_again(work):
    """A file restored in place (the state a relink leaves: the same inode named at its
    original path again, the holder's descriptor still showing ' (deleted)'), selected
    again by device and inode without dest: unchanged, not 'no deleted file'."""
    from orphans import holder
    path = work / "named-again.db"
    path.write_bytes(b"x" * 8192)
    os.link(path, work / "spare-name")  # a second name, kept aside while the first is deleted
    with holder("fd = os.open(%r, os.O_RDWR); out['fd'] = fd" % str(path)) as (proc, out):
        src = "/proc/%d/fd/%d" % (proc.pid, out["fd"])
        path.unlink()
        os.rename(work / "spare-name", path)  # the inode has its original name again
        st = os.stat(src)
        assert os.readlink(src).endswith(" (deleted)") and os.stat(path).st_ino == st.st_ino
        result, failures = _restore({"device": "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev)),
                                     "inode": st.st_ino})
        assert not failures, failures
        expected = (False, "already_restored", str(path))
        assert (result["changed"], result["status"], result["dest"]) == expected, result
