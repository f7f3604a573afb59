"""In-guest half of tests/guest/test_kmod.py: exercise /dev/frelink for real.

Run as root inside a test guest with the frelink module loaded, next to a copy
of plugins/module_utils/_frelink/kmod_abi.py:

    python3 kmod_suite.py SCENARIO [SCENARIO...] [--stress N] [--fuzz N]

Every scenario builds its own filesystems on loop devices under /var/tmp,
creates real deleted-but-held files, relinks them through the module and
records what it observed.  One JSON document goes to stdout; pytest on the
host asserts on it.  Cleanup (holders, mounts, loops) also happens on failure.
"""

import argparse
import collections
import ctypes
import errno
import fcntl
import hashlib
import json
import mmap
import os
import random
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kmod_abi as abi  # noqa: E402  pylint: disable=wrong-import-position

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
LIBC.linkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400
LOOP_GET_STATUS64 = 0x4C05
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10

WORK = "/var/tmp/frelink-kmod"
CLEANUP = []  # callables, run in reverse order


def eventfd():
    """os.eventfd(0) (Python 3.10); bullseye's guest has 3.9."""
    if hasattr(os, "eventfd"):
        return os.eventfd(0)
    fd = LIBC.eventfd(0, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "eventfd")
    return fd


def name_of(err):
    return abi.errno_name(err) if err else "OK"


def run(*argv, check=True):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          check=False)
    if check and proc.returncode:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(argv), proc.returncode, proc.stdout))
    return proc


def sha(path_or_fd):
    digest = hashlib.sha256()
    if isinstance(path_or_fd, int):
        os.lseek(path_or_fd, 0, os.SEEK_SET)
        fd, close = path_or_fd, False
    else:
        fd, close = os.open(path_or_fd, os.O_RDONLY), True
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        if close:
            os.close(fd)


def seeded_bytes(seed, size):
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little")


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def refusal(call):
    """Run call(); return "OK" or the errno name it raised."""
    try:
        call()
    except OSError as exc:
        return name_of(exc.errno)
    return "OK"


def same_file(one, other):
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def kill(pid):
    """Kill (if still running) and reap a forked child; idempotent."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def listing(directory):
    return sorted(os.listdir(directory))


class Holder:
    """A forked child that keeps `path` open; with writer=True it also keeps
    writing 512-byte blocks at random offsets until paused.

    Commands over a pipe: p (pause, reply "count sha"), r (resume),
    w N (N writes while paused, reply "count sha"), q (quit: close and exit).
    """

    def __init__(self, path, writer=False, seed=1):
        cmd_r, self.cmd_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 0
            try:
                os.close(self.cmd_w)
                os.close(self.reply_r)
                self._child(path, writer, seed, cmd_r, reply_w)
            except BaseException:  # pylint: disable=broad-except
                traceback.print_exc()
                code = 1
            os._exit(code)  # pylint: disable=protected-access
        os.close(cmd_r)
        os.close(reply_w)
        self.fd = int(self._reply())
        self.proc_path = "/proc/%d/fd/%d" % (self.pid, self.fd)
        CLEANUP.append(self.stop)

    @staticmethod
    def _child(path, writer, seed, cmd_r, reply_w):
        fd = os.open(path, os.O_RDWR)
        os.write(reply_w, b"%d\n" % fd)
        model = bytearray(os.pread(fd, os.fstat(fd).st_size, 0)) if writer else None
        rng = random.Random(seed)
        running, count = writer, 0

        def write_one():
            offset = rng.randrange(0, max(1, len(model) - 512))
            block = rng.getrandbits(4096).to_bytes(512, "little")
            os.pwrite(fd, block, offset)
            model[offset:offset + 512] = block

        def state():
            digest = hashlib.sha256(model).hexdigest() if writer else "-"
            return ("%d %s\n" % (count, digest)).encode()

        with os.fdopen(cmd_r, "rb", buffering=0) as cmds:
            while True:
                ready = select.select([cmds], [], [], 0.001 if running else None)[0]
                if not ready:
                    write_one()
                    count += 1
                    continue
                line = b""
                while not line.endswith(b"\n"):
                    byte = cmds.read(1)
                    if not byte:
                        return
                    line += byte
                word = line.split()
                if word[0] == b"p":
                    running = False
                    os.write(reply_w, state())
                elif word[0] == b"r":
                    running = True
                elif word[0] == b"w":
                    for dummy in range(int(word[1])):
                        write_one()
                        count += 1
                    os.write(reply_w, state())
                elif word[0] == b"q":
                    os.close(fd)
                    return

    def _reply(self):
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self.reply_r, 256)
            if not chunk:
                raise RuntimeError("holder %d died" % self.pid)
            data += chunk
        return data.decode().strip()

    def ask(self, command):
        os.write(self.cmd_w, command.encode() + b"\n")
        if command[0] in "pw":
            count, digest = self._reply().split()
            return int(count), digest
        return None

    def stop(self):
        if self.pid is None:
            return
        try:
            os.write(self.cmd_w, b"q\n")
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.cmd_w)
        os.close(self.reply_r)
        self.pid = None


class Fs:
    """A filesystem on a loop device (or tmpfs) mounted at /mnt/frelink-NAME."""

    MKFS = {
        "ext4": (["mkfs.ext4", "-q", "-F"], 64),
        "ext4-orphan_file": (["mkfs.ext4", "-q", "-F", "-O", "orphan_file"], 64),
        "xfs": (["mkfs.xfs", "-q", "-f"], 320),
        "btrfs": (["mkfs.btrfs", "-q", "-f"], 256),
        "jfs": (["mkfs.jfs", "-q"], 64),
        "vfat": (["mkfs.vfat"], 64),
    }
    FSCK = {
        "ext4": ["e2fsck", "-fn"],
        "xfs": ["xfs_repair", "-n"],
        "btrfs": ["btrfs", "check"],
    }

    def __init__(self, name, kind, directory=WORK):
        self.name, self.kind = name, kind
        self.type = kind.split("-")[0]
        self.mnt = "/mnt/frelink-%s" % name
        os.makedirs(self.mnt, exist_ok=True)
        self.image = self.loop = None
        self.fds = []
        if kind == "tmpfs":
            run("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", self.mnt)
        else:
            argv, size_mb = self.MKFS[kind]
            self.image = os.path.join(directory, "%s.img" % name)
            with open(self.image, "wb") as img:
                img.truncate(size_mb << 20)
            run(*(argv + [self.image]))
            self.loop = run("losetup", "--find", "--show", self.image).stdout.strip()
            self.mount()
        self.mounted = True
        CLEANUP.append(self.destroy)

    def mount(self):
        run("mount", "-t", self.type, self.loop, self.mnt)
        self.mounted = True

    def open_dir(self, path):
        """An O_PATH directory fd, closed again before unmounting."""
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        self.fds.append(fd)
        return fd

    def close_fds(self):
        while self.fds:
            os.close(self.fds.pop())

    def umount(self):
        self.close_fds()
        run("umount", self.mnt)
        self.mounted = False

    def fsck(self):
        proc = run(*(self.FSCK[self.type] + [self.loop]), check=False)
        return {"rc": proc.returncode, "output": proc.stdout[-3000:] if proc.returncode else ""}

    def dev(self):
        return os.stat(self.mnt).st_dev

    def destroy(self):
        self.close_fds()
        if self.mounted:
            run("umount", "-l", self.mnt, check=False)
            self.mounted = False
        if self.loop:
            run("losetup", "-d", self.loop, check=False)
            self.loop = None


def deleted_file(path, data, writer=False):
    """Create path with data, start a holder (and a writer), delete path."""
    write_file(path, data)
    holder = Holder(path)
    writer_proc = Holder(path, writer=True, seed=len(data)) if writer else None
    os.unlink(path)
    return holder, writer_proc


# --- scenarios --------------------------------------------------------------

def scenario_relink(kind):
    """Holder + random writer; plain linkat fails; relink by fd and by (dev, ino)."""
    fs = Fs(kind, kind)
    res = {}
    os.mkdir(fs.mnt + "/dir")
    dir_fd = fs.open_dir(fs.mnt + "/dir")
    data1, data2 = seeded_bytes(1, 1 << 20), seeded_bytes(2, 256 << 10)

    holder, writer = deleted_file(fs.mnt + "/dir/victim", data1, writer=True)
    src = os.stat(holder.proc_path)
    res["deleted_nlink"] = src.st_nlink
    # (os.link() would call link(2), which does not follow the magic link)
    rc = LIBC.linkat(AT_FDCWD, holder.proc_path.encode(), AT_FDCWD, (fs.mnt + "/dir/try1").encode(),
                     AT_SYMLINK_FOLLOW)
    res["linkat_follow"] = name_of(ctypes.get_errno()) if rc else "OK"
    src_fd = os.open(holder.proc_path, os.O_RDONLY)
    rc = LIBC.linkat(src_fd, b"", AT_FDCWD, (fs.mnt + "/dir/try2").encode(), AT_EMPTY_PATH)
    res["linkat_empty_path"] = name_of(ctypes.get_errno()) if rc else "OK"

    res["by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
    new = os.stat(fs.mnt + "/dir/restored")
    res["by_fd_same_inode"] = (new.st_dev, new.st_ino) == (src.st_dev, src.st_ino)
    res["by_fd_nlink"] = new.st_nlink
    digest = writer.ask("p")[1]
    res["by_fd_content_equal"] = sha(fs.mnt + "/dir/restored") == digest
    writer.ask("r")
    count = writer.ask("p")[0]
    count2, digest2 = writer.ask("w 64")
    res["writes_after_relink_visible"] = count2 > count and sha(fs.mnt + "/dir/restored") == digest2
    writer.ask("r")
    os.close(src_fd)

    holder2, unused = deleted_file(fs.mnt + "/dir/victim2", data2)
    src2 = os.stat(holder2.proc_path)
    res["by_inode"] = refusal(lambda: abi.relink_by_inode(src2.st_dev, src2.st_ino, dir_fd, "restored2"))
    new2 = os.stat(fs.mnt + "/dir/restored2")
    res["by_inode_same_inode"] = (new2.st_dev, new2.st_ino) == (src2.st_dev, src2.st_ino)
    res["by_inode_nlink"] = new2.st_nlink
    res["by_inode_content_equal"] = sha(fs.mnt + "/dir/restored2") == hashlib.sha256(data2).hexdigest()

    final = writer.ask("p")[1]
    for proc in (writer, holder, holder2):
        proc.stop()
    expect = {"restored": final, "restored2": hashlib.sha256(data2).hexdigest()}
    res["listing_after_holders_exit"] = listing(fs.mnt + "/dir")
    if kind == "tmpfs":
        res["content_after_holders_exit"] = {n: sha(fs.mnt + "/dir/" + n) == h for n, h in expect.items()}
    else:
        os.sync()
        fs.umount()
        res["fsck"] = fs.fsck()
        fs.mount()
        res["listing_after_remount"] = listing(fs.mnt + "/dir")
        res["content_after_remount"] = {n: sha(fs.mnt + "/dir/" + n) == h for n, h in expect.items()}
        res["nlink_after_remount"] = {n: os.stat(fs.mnt + "/dir/" + n).st_nlink for n in expect}
    if kind == "btrfs":
        res["subvolumes"] = btrfs_subvolumes(fs)
    fs.destroy()
    return res


def btrfs_subvolumes(fs):
    """Two subvolumes of one superblock hold the same inode number: (dev, ino)
    picks the one of the right subvolume; another subvolume is EXDEV."""
    res = {}
    run("btrfs", "subvolume", "create", fs.mnt + "/sub")
    run("btrfs", "subvolume", "create", fs.mnt + "/sub2")
    write_file(fs.mnt + "/sub2/live", b"live\n")
    live = os.stat(fs.mnt + "/sub2/live")
    data = seeded_bytes(3, 64 << 10)
    holder, unused = deleted_file(fs.mnt + "/sub/victim", data)
    src = os.stat(holder.proc_path)
    res["same_ino_in_both"] = live.st_ino == src.st_ino
    res["devs_differ"] = live.st_dev != src.st_dev
    sub_fd, sub2_fd = fs.open_dir(fs.mnt + "/sub"), fs.open_dir(fs.mnt + "/sub2")
    src_fd = os.open(holder.proc_path, os.O_RDONLY)
    res["by_fd_other_subvolume"] = refusal(lambda: abi.relink_by_fd(src_fd, sub2_fd, "x"))
    res["by_inode_other_subvolume_dir"] = refusal(lambda: abi.relink_by_inode(src.st_dev, src.st_ino, sub2_fd, "y"))
    res["by_inode_dev_of_other_subvolume"] = refusal(
        lambda: abi.relink_by_inode(live.st_dev, src.st_ino, sub2_fd, "z"))
    res["sub2_listing"] = listing(fs.mnt + "/sub2")
    res["by_inode"] = refusal(lambda: abi.relink_by_inode(src.st_dev, src.st_ino, sub_fd, "restored"))
    res["content_equal"] = sha(fs.mnt + "/sub/restored") == hashlib.sha256(data).hexdigest()
    os.close(src_fd)
    holder.stop()
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.mount()
    res["present_after_remount"] = sha(fs.mnt + "/sub/restored") == hashlib.sha256(data).hexdigest()
    return res


def scenario_btrfs_negative_control():
    """Relink on btrfs into the same directory, then btrfs check.  Run with a
    module built without the transaction commit, this must find the damage."""
    fs = Fs("negative", "btrfs")
    os.mkdir(fs.mnt + "/dir")
    dir_fd = fs.open_dir(fs.mnt + "/dir")
    holder, unused = deleted_file(fs.mnt + "/dir/victim", seeded_bytes(8, 64 << 10))
    src_fd = os.open(holder.proc_path, os.O_RDONLY)
    res = {"by_fd": refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))}
    os.close(src_fd)
    holder.stop()
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def scenario_refusals():
    """Every refusal gives its own errno and changes nothing."""
    fs = Fs("refuse", "ext4")
    other = Fs("other", "tmpfs")
    res = {}
    base = fs.mnt
    os.mkdir(base + "/dir")
    dir_fd = fs.open_dir(base + "/dir")
    write_file(base + "/dir/existing", b"keep me\n")
    holder, unused = deleted_file(base + "/dir/victim", b"deleted data\n")
    src_fd = os.open(holder.proc_path, os.O_RDONLY)
    src = os.fstat(src_fd)
    before = listing(base + "/dir")

    def raw(request):
        dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
        try:
            fcntl.ioctl(dev_fd, abi.IOC_RELINK, request)
        except OSError as exc:
            return name_of(exc.errno)
        finally:
            os.close(dev_fd)
        return "OK"

    good = dict(flags=abi.BY_FD, src_fd=src_fd, dir_fd=dir_fd, name=b"new")
    cases = collections.OrderedDict()
    cases["flags_zero"] = raw(abi.pack_request(**dict(good, flags=0)))
    cases["flags_both"] = raw(abi.pack_request(**dict(good, flags=3)))
    cases["flags_unknown"] = raw(abi.pack_request(**dict(good, flags=4)))
    cases["reserved0_set"] = raw(abi.pack_request(reserved0=1, **good))
    cases["reserved_set"] = raw(abi.pack_request(reserved=(0, 0, 1), **good))
    cases["by_fd_with_ino"] = raw(abi.pack_request(ino=5, **good))
    cases["by_inode_with_src_fd"] = raw(abi.pack_request(flags=abi.BY_INODE, src_fd=src_fd, dir_fd=dir_fd,
                                                         dev=src.st_dev, ino=src.st_ino, name=b"new"))
    cases["by_inode_dev_zero"] = raw(abi.pack_request(flags=abi.BY_INODE, dir_fd=dir_fd, ino=src.st_ino,
                                                      name=b"new"))
    cases["name_not_terminated"] = raw(abi.pack_request(**dict(good, name=b"n" * abi.NAME_SIZE)))
    for label, name in (("empty", b""), ("dot", b"."), ("dotdot", b".."), ("slash", b"a/b"),
                        ("trailing_slash", b"new/")):
        cases["name_" + label] = raw(abi.pack_request(**dict(good, name=name)))
    cases["bad_src_fd"] = refusal(lambda: abi.relink_by_fd(9999, dir_fd, "new"))
    cases["negative_src_fd"] = refusal(lambda: abi.relink_by_fd(-5, dir_fd, "new"))
    cases["bad_dir_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, 9999, "new"))
    file_fd = os.open(base + "/dir/existing", os.O_RDONLY)
    cases["dir_fd_not_dir"] = refusal(lambda: abi.relink_by_fd(src_fd, file_fd, "new"))
    os.close(file_fd)
    cases["name_exists"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "existing"))
    live_fd = os.open(base + "/dir/existing", os.O_RDONLY)
    cases["link_count_not_zero"] = refusal(lambda: abi.relink_by_fd(live_fd, dir_fd, "new"))
    os.close(live_fd)
    other_fd = other.open_dir(other.mnt)
    cases["dir_on_other_fs"] = refusal(lambda: abi.relink_by_fd(src_fd, other_fd, "new"))
    cases["by_inode_dev_mismatch"] = refusal(lambda: abi.relink_by_inode(os.stat(other.mnt).st_dev, src.st_ino,
                                                                         dir_fd, "new"))
    cases["by_inode_not_in_memory"] = refusal(lambda: abi.relink_by_inode(src.st_dev, 999999, dir_fd, "new"))
    # a directory held as cwd and a FIFO: deleted but not regular files
    os.mkdir(base + "/dir/gone")
    cwd_pid = os.fork()
    if cwd_pid == 0:
        os.chdir(base + "/dir/gone")
        time.sleep(600)
        os._exit(0)  # pylint: disable=protected-access
    CLEANUP.append(lambda: kill(cwd_pid))
    while os.readlink("/proc/%d/cwd" % cwd_pid) != base + "/dir/gone":
        time.sleep(0.01)
    os.rmdir(base + "/dir/gone")
    cwd_fd = os.open("/proc/%d/cwd" % cwd_pid, os.O_RDONLY | os.O_DIRECTORY)
    cases["directory"] = refusal(lambda: abi.relink_by_fd(cwd_fd, dir_fd, "new"))
    os.mkfifo(base + "/dir/fifo")
    fifo_fd = os.open(base + "/dir/fifo", os.O_RDWR)
    os.unlink(base + "/dir/fifo")
    cases["fifo"] = refusal(lambda: abi.relink_by_fd(fifo_fd, dir_fd, "new"))
    # read-only bind mount of the same filesystem
    ro_mnt = "/mnt/frelink-ro"
    os.makedirs(ro_mnt, exist_ok=True)
    run("mount", "--bind", base, ro_mnt)
    CLEANUP.append(lambda: run("umount", "-l", ro_mnt, check=False))
    run("mount", "-o", "remount,bind,ro", ro_mnt)
    ro_fd = os.open(ro_mnt + "/dir", os.O_PATH | os.O_DIRECTORY)
    cases["read_only_mount"] = refusal(lambda: abi.relink_by_fd(src_fd, ro_fd, "new"))
    os.close(ro_fd)
    run("umount", ro_mnt)
    # immutable: vfs_link() itself refuses after I_LINKABLE was set; the flag
    # must be cleared again, so plain linkat still fails afterwards
    flags = struct.unpack("l", fcntl.ioctl(src_fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
    fcntl.ioctl(src_fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_IMMUTABLE_FL))
    cases["immutable"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "new"))
    fcntl.ioctl(src_fd, FS_IOC_SETFLAGS, struct.pack("l", flags))
    rc = LIBC.linkat(src_fd, b"", AT_FDCWD, (base + "/dir/plain").encode(), AT_EMPTY_PATH)
    cases["plain_linkat_after_failed_vfs_link"] = name_of(ctypes.get_errno()) if rc else "OK"
    cases["wrong_ioctl_cmd"] = raw_cmd(abi.IOC_RELINK + 1)
    res["errno"] = cases
    res["listing_unchanged"] = listing(base + "/dir") == before
    res["existing_unchanged"] = open(base + "/dir/existing", "rb").read() == b"keep me\n"
    res["victim_still_deleted"] = os.fstat(src_fd).st_nlink
    res["other_fs_unchanged"] = listing(other.mnt)
    # after all refusals the inode can still be relinked
    res["relink_after_refusals"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "new"))
    res["relinked_content"] = open(base + "/dir/new", "rb").read() == b"deleted data\n"
    res["non_root"] = non_root(src_fd, dir_fd, base + "/dir")
    # last holder gone: the inode is freed, relink by (dev, ino) finds nothing
    holder2, unused = deleted_file(base + "/dir/victim2", b"short-lived\n")
    src2 = os.stat(holder2.proc_path)
    holder2.stop()
    res["last_holder_gone"] = refusal(lambda: abi.relink_by_inode(src2.st_dev, src2.st_ino, dir_fd, "late"))
    for fd in (src_fd, cwd_fd, fifo_fd):
        os.close(fd)
    holder.stop()
    kill(cwd_pid)
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    other.destroy()
    return res


def raw_cmd(cmd, arg=None):
    dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
    try:
        buf = ctypes.create_string_buffer(abi.RELINK_STRUCT_SIZE) if arg is None else arg
        rc = LIBC.ioctl(dev_fd, cmd, ctypes.addressof(buf) if not isinstance(buf, int) else buf)
        return name_of(ctypes.get_errno()) if rc else "OK"
    finally:
        os.close(dev_fd)


def non_root(src_fd, dir_fd, directory):
    """The device is root-only (0600), and CAP_SYS_ADMIN is checked again at
    open and at every ioctl, so an fd or a mode change does not help."""
    import pwd  # pylint: disable=import-outside-toplevel
    tester = pwd.getpwnam("tester")
    res = {"device_mode": oct(stat.S_IMODE(os.stat(abi.DEVICE_PATH).st_mode))}
    dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
    before = listing(directory)
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = {}
        try:
            os.setgroups([])
            os.setgid(tester.pw_gid)
            os.setuid(tester.pw_uid)
            out["open_0600"] = refusal(lambda: os.close(os.open(abi.DEVICE_PATH, os.O_RDWR)))
            request = abi.pack_request(abi.BY_FD, src_fd=src_fd, dir_fd=dir_fd, name=b"by-tester")
            out["ioctl_on_inherited_fd"] = refusal(lambda: fcntl.ioctl(dev_fd, abi.IOC_RELINK, request))
            os.write(read_w, json.dumps(out).encode())
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.close(read_w)
    os.waitpid(pid, 0)
    res.update(json.loads(os.read(read_r, 4096).decode()))
    os.close(read_r)
    os.chmod(abi.DEVICE_PATH, 0o666)
    try:
        pid = os.fork()
        if pid == 0:
            os.setgroups([])
            os.setgid(tester.pw_gid)
            os.setuid(tester.pw_uid)
            try:
                os.close(os.open(abi.DEVICE_PATH, os.O_RDWR))
                os._exit(0)  # pylint: disable=protected-access
            except OSError as exc:
                os._exit(exc.errno)  # pylint: disable=protected-access
        res["open_0666"] = name_of(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    finally:
        os.chmod(abi.DEVICE_PATH, 0o600)
    os.close(dev_fd)
    res["listing_unchanged"] = listing(directory) == before
    return res


def scenario_unsupported():
    """jfs has no ->tmpfile, vfat no ->link: both refuse, nothing changes."""
    res = {}
    for kind in ("jfs", "vfat"):
        fs = Fs(kind, kind)
        holder, unused = deleted_file(fs.mnt + "/victim", b"data\n")
        src_fd = os.open(holder.proc_path, os.O_RDONLY)
        dir_fd = os.open(fs.mnt, os.O_PATH | os.O_DIRECTORY)
        before = listing(fs.mnt)
        res[kind] = {
            "by_fd": refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored")),
            "by_inode": refusal(lambda: abi.relink_by_inode(os.fstat(src_fd).st_dev, os.fstat(src_fd).st_ino,
                                                            dir_fd, "restored")),
            "listing_unchanged": listing(fs.mnt) == before,
            "still_deleted": os.fstat(src_fd).st_nlink,
        }
        os.close(src_fd)
        os.close(dir_fd)
        holder.stop()
        fs.destroy()
    return res


def loop_status(loop_dev):
    fd = os.open(loop_dev, os.O_RDONLY)
    try:
        buf = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(232))
    finally:
        os.close(fd)
    lo_device, lo_inode = struct.unpack_from("=QQ", buf)
    return lo_device, lo_inode


def scenario_loop():
    """ext4 image mounted via loop, image deleted, relinked by the loop
    device's (dev, ino); every write, also after the relink, survives detach."""
    res = {}
    outer = Fs("outer", "ext4")
    inner_img = outer.mnt + "/inner.img"
    with open(inner_img, "wb") as img:
        img.truncate(32 << 20)
    run("mkfs.ext4", "-q", "-F", inner_img)
    loop = run("losetup", "--find", "--show", inner_img).stdout.strip()
    CLEANUP.append(lambda: run("losetup", "-d", loop, check=False))
    inner_mnt = "/mnt/frelink-inner"
    os.makedirs(inner_mnt, exist_ok=True)
    run("mount", loop, inner_mnt)
    CLEANUP.append(lambda: run("umount", "-l", inner_mnt, check=False))
    before = seeded_bytes(4, 300 << 10)
    write_file(inner_mnt + "/before", before)
    img_stat = os.stat(inner_img)
    os.unlink(inner_img)
    lo_device, lo_inode = loop_status(loop)
    res["loop_status_matches"] = (lo_device, lo_inode) == (img_stat.st_dev, img_stat.st_ino)
    res["backing_file_deleted"] = open("/sys/block/%s/loop/backing_file" % os.path.basename(loop)).read().strip()
    during = seeded_bytes(5, 200 << 10)
    write_file(inner_mnt + "/during", during)
    outer_fd = outer.open_dir(outer.mnt)
    res["by_inode"] = refusal(lambda: abi.relink_by_inode(lo_device, lo_inode, outer_fd, "inner.img"))
    relinked = os.stat(inner_img)
    res["same_inode"] = (relinked.st_dev, relinked.st_ino) == (img_stat.st_dev, img_stat.st_ino)
    res["nlink"] = relinked.st_nlink
    after = seeded_bytes(6, 100 << 10)
    write_file(inner_mnt + "/after", after)
    run("umount", inner_mnt)
    run("losetup", "-d", loop)
    res["inner_fsck"] = run("e2fsck", "-fn", inner_img, check=False).returncode
    os.sync()
    outer.umount()
    res["outer_fsck"] = outer.fsck()
    outer.mount()
    run("mount", "-o", "loop,ro", inner_img, inner_mnt)
    res["inner_files"] = {n: sha(inner_mnt + "/" + n) == hashlib.sha256(d).hexdigest()
                          for n, d in (("before", before), ("during", during), ("after", after))}
    run("umount", inner_mnt)
    outer.destroy()
    return res


FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long); ext4 writes an int


def fs_generation(path):
    """The inode generation userspace sees while the file is open (FS_IOC_GETVERSION)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return struct.unpack_from("=I", fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8)))[0]
    finally:
        os.close(fd)


def kernel_generation(dev, ino, dir_fd):
    """FRELINK_IOC_IDENTIFY's generation, or its errno name (ENOTTY: a module without it)."""
    try:
        return abi.inode_generation(dev, ino, dir_fd)
    except OSError as exc:
        return name_of(exc.errno)


def relink_recorded(dev, ino, generation, dir_fd, name):
    """The request restore makes from recorded facts: (dev, ino) and, if the module
    reported one, the generation; a module without FRELINK_IOC_IDENTIFY gets (dev, ino)."""
    if isinstance(generation, int):
        return refusal(lambda: abi.relink_by_inode(dev, ino, dir_fd, name, generation=generation))
    return refusal(lambda: abi.relink_by_inode(dev, ino, dir_fd, name))


def wait_detached(loop, timeout=30):
    """losetup -d can return before the loop device is unbound."""
    deadline = time.monotonic() + timeout
    while os.path.exists("/sys/block/%s/loop/backing_file" % os.path.basename(loop)) and time.monotonic() < deadline:
        time.sleep(0.05)


def scenario_loop_reuse():
    """A loop device's backing file has no descriptor anywhere, so it is named
    by (dev, ino) from LOOP_GET_STATUS64.  After a detach its inode number is
    freed and reused by another deleted file: a request by the recorded
    identity must not name that other file.  And with the right generation a
    loop's backing file is relinked; with a wrong one it is refused."""
    res = {}
    fs = Fs("reuse", "ext4")
    directory = fs.mnt + "/dir"
    os.mkdir(directory)
    dir_fd = fs.open_dir(directory)

    def loop_held(path, seed):
        """PATH written, attached to a loop device and deleted: (loop, dev, ino, its
        FS_IOC_GETVERSION before the delete, FRELINK_IOC_IDENTIFY's generation)."""
        write_file(path, seeded_bytes(seed, 1 << 20))
        getversion = fs_generation(path)
        loop = run("losetup", "--find", "--show", path).stdout.strip()
        CLEANUP.append(lambda: run("losetup", "-d", loop, check=False))
        os.unlink(path)
        dev, ino = loop_status(loop)
        return loop, dev, ino, getversion, kernel_generation(dev, ino, dir_fd)

    loop, dev, ino, a_getversion, generation = loop_held(directory + "/a.img", 7)
    res["identify_matches_getversion"] = generation == a_getversion if isinstance(generation, int) else generation

    def identify_raw(flags=0, dev_=dev, ino_=ino, generation_=0, reserved=(0, 0, 0, 0), fd=dir_fd):
        request = bytearray(abi.IDENTIFY_STRUCT.pack(fd, flags, dev_, ino_, generation_, *reserved))
        dev_fd = os.open(abi.DEVICE_PATH, os.O_RDONLY)
        try:
            return refusal(lambda: fcntl.ioctl(dev_fd, abi.IOC_IDENTIFY, request, True))
        finally:
            os.close(dev_fd)

    res["identify_refusals"] = {
        "flags_set": identify_raw(flags=1), "generation_set": identify_raw(generation_=1),
        "reserved_set": identify_raw(reserved=(0, 0, 0, 1)), "dev_zero": identify_raw(dev_=0),
        "not_in_memory": identify_raw(ino_=999999), "dev_mismatch": identify_raw(dev_=dev + 1),
        "bad_fd": identify_raw(fd=9999),
    }
    null_fd = os.open("/dev/null", os.O_RDONLY)
    res["identify_refusals"]["not_a_dir"] = identify_raw(fd=null_fd)
    os.close(null_fd)
    if isinstance(generation, int):
        res["wrong_generation"] = refusal(lambda: abi.relink_by_inode(dev, ino, dir_fd, "wrong",
                                                                      generation=generation ^ 1))
        res["listing_after_wrong"] = listing(directory)
    run("losetup", "-d", loop)
    wait_detached(loop)
    # the loop lets its file go (a deferred fput), then ext4 frees the inode number:
    # the next file created in the directory takes it
    b_holder = None
    for attempt in range(100):
        b_path = directory + "/b%d" % attempt
        write_file(b_path, seeded_bytes(8, 4096))
        if os.stat(b_path).st_ino == ino:
            b_holder = Holder(b_path)
            CLEANUP.append(b_holder.stop)
            os.unlink(b_path)
            break
        os.unlink(b_path)
        time.sleep(0.1)
    res["number_reused"] = b_holder is not None
    res["reuse_attempts"] = attempt + 1
    res["by_recorded_identity"] = relink_recorded(dev, ino, generation, dir_fd, "a.img")
    res["listing_after_reuse"] = listing(directory)
    if b_holder is not None:
        b_holder.stop()

    c_path = directory + "/c.img"
    loop, dev, ino, c_getversion, generation = loop_held(c_path, 9)
    res["right_generation"] = relink_recorded(dev, ino, generation, dir_fd, "c.img")
    relinked = os.stat(c_path) if os.path.exists(c_path) else None
    res["relinked_same_inode"] = relinked is not None and relinked.st_ino == ino
    res["relinked_generation"] = fs_generation(c_path) == c_getversion if relinked else None
    run("losetup", "-d", loop)
    wait_detached(loop)
    for attempt in range(100):  # and its deferred fput() releases the filesystem
        try:
            fs.umount()
            break
        except RuntimeError:
            if attempt == 99:
                raise
            time.sleep(0.1)
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


F_SETDELEG = 1024 + 16  # F_LINUX_SPECIFIC_BASE + 16, include/uapi/linux/fcntl.h (7.x)
F_RDLCK, F_UNLCK = 0, 2


def scenario_dir_delegation():
    """A read delegation on the destination directory (F_SETDELEG, 7.x) is
    broken before a relink adds a name to it, as vfs_link() breaks it: the
    holder gets SIGIO while the name does not exist yet, lets go, and the
    relink goes on.  Without directory delegations the kernel says EINVAL."""
    res = {}
    fs = Fs("deleg", "ext4")
    directory = fs.mnt + "/dir"
    os.mkdir(directory)
    holder, _writer = deleted_file(fs.mnt + "/victim", seeded_bytes(10, 8192))
    CLEANUP.append(holder.stop)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        out = {}
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

            def on_break(_signum, _frame):
                # the lease is broken before the link: the name must not exist yet
                out["broken_before_link"] = not os.path.lexists(directory + "/restored")
                fcntl.fcntl(fd, F_SETDELEG, struct.pack("=IHH", 0, F_UNLCK, 0))

            signal.signal(signal.SIGIO, on_break)
            try:
                fcntl.fcntl(fd, F_SETDELEG, struct.pack("=IHH", 0, F_RDLCK, 0))
                out["setdeleg"] = "OK"
            except OSError as exc:
                out["setdeleg"] = name_of(exc.errno)
            os.write(ready_w, b"r")
            deadline = time.monotonic() + 20
            while "broken_before_link" not in out and time.monotonic() < deadline \
                    and out["setdeleg"] == "OK" and not os.path.lexists(directory + "/restored"):
                time.sleep(0.05)
        finally:
            os.write(ready_w, json.dumps(out).encode())
            os._exit(0)  # pylint: disable=protected-access
    CLEANUP.append(lambda: kill(pid))
    os.read(ready_r, 1)
    dir_fd = fs.open_dir(directory)
    src_fd = os.open("/proc/%d/fd/%d" % (holder.pid, holder.fd), os.O_PATH)
    started = time.monotonic()
    res["relink"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
    res["relink_seconds"] = round(time.monotonic() - started, 1)
    os.close(src_fd)
    os.waitpid(pid, 0)
    res.update(json.loads(os.read(ready_r, 4096).decode()))
    res.setdefault("broken_before_link", False)
    res["listing"] = listing(directory)
    holder.stop()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


NR_BPF = 321  # x86_64
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN, BPF_LINK_CREATE = 5, 17, 28
BPF_PROG_TYPE_LSM, BPF_LSM_MAC = 29, 27
BTF_KIND_FUNC = 12
# bytes of the records that follow struct btf_type, by kind (include/uapi/linux/btf.h):
# a fixed part, and a part per vlen
BTF_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
             17: (4, 0), 19: (0, 12)}


def btf_func_id(name, path="/sys/kernel/btf/vmlinux"):
    """The BTF type id of the FUNC NAME in the kernel's BTF, or None."""
    with open(path, "rb") as f:
        data = f.read()
    _magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("=HBBIIIII", data)
    types, strings = hdr_len + type_off, hdr_len + str_off
    wanted = name.encode() + b"\0"
    offset, end, type_id = types, types + type_len, 1
    while offset < end:
        name_off, info, _size = struct.unpack_from("=III", data, offset)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == BTF_KIND_FUNC and data[strings + name_off:strings + name_off + len(wanted)] == wanted:
            return type_id
        fixed, per = BTF_EXTRA.get(kind, (0, 0))
        offset += 12 + fixed + per * vlen
        type_id += 1
    return None


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    fd = LIBC.syscall(NR_BPF, cmd, buf, len(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return fd


def lsm_inode_link_refusing(err):
    """Attach a BPF LSM program to inode_link that returns -ERR for every link:
    (prog fd, link fd); close both to detach."""
    btf_id = btf_func_id("bpf_lsm_inode_link")
    if btf_id is None:
        raise OSError(errno.ENOENT, "no bpf_lsm_inode_link in the kernel's BTF")
    insns = struct.pack("=BBhi", 0xB7, 0, 0, -err) + struct.pack("=BBhi", 0x95, 0, 0, 0)  # r0 = -err; exit
    insns_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = bytearray(128)
    struct.pack_into("=IIQQIIQ", attr, 0, BPF_PROG_TYPE_LSM, 2, ctypes.addressof(insns_buf),
                     ctypes.addressof(license_buf), 1, len(log), ctypes.addressof(log))
    struct.pack_into("=I", attr, 68, BPF_LSM_MAC)
    struct.pack_into("=I", attr, 108, btf_id)
    try:
        prog_fd = bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        raise OSError(exc.errno, "BPF_PROG_LOAD: %s: %s" % (exc.strerror, log.value.decode(errors="replace")[-500:]))
    try:
        attr = bytearray(16)
        struct.pack_into("=QI", attr, 0, 0, prog_fd)
        link_fd = bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    except OSError:
        attr = bytearray(32)
        struct.pack_into("=IIII", attr, 0, prog_fd, 0, BPF_LSM_MAC, 0)
        try:
            link_fd = bpf(BPF_LINK_CREATE, attr)
        except OSError:
            os.close(prog_fd)
            raise
    return prog_fd, link_fd


def scenario_lsm_enoent():
    """A security module whose inode_link hook refuses with ENOENT, made with a
    BPF LSM program (CONFIG_BPF_LSM, "bpf" in CONFIG_LSM on Debian 6.1, 6.12,
    7.2): linkat() of a live file fails with ENOENT; a relink must fail the
    same way and create nothing.  Measures the floor documented in
    docs/kmod.md ("What remains")."""
    res = {}
    try:  # the security modules this boot runs: an attached program acts only if "bpf" is one
        with open("/sys/kernel/security/lsm") as f:
            res["active_lsms"] = f.read().strip().split(",")
    except OSError as exc:
        res["active_lsms"] = "%s: %s" % (name_of(exc.errno), exc.strerror)
    fs = Fs("lsm", "ext4")
    directory = fs.mnt + "/dir"
    os.mkdir(directory)
    write_file(directory + "/live", b"live\n")
    holder, _writer = deleted_file(directory + "/victim", seeded_bytes(11, 4096))
    CLEANUP.append(holder.stop)
    dir_fd = fs.open_dir(directory)
    src_fd = os.open(holder.proc_path, os.O_PATH)
    try:
        fds = lsm_inode_link_refusing(errno.ENOENT)
        res["attached"] = "OK"
    except OSError as exc:
        res["attached"] = "%s: %s" % (name_of(exc.errno), exc.strerror)
        fds = ()
    try:
        rc = LIBC.linkat(AT_FDCWD, (directory + "/live").encode(), AT_FDCWD, (directory + "/live2").encode(), 0)
        res["linkat_live"] = name_of(ctypes.get_errno()) if rc else "OK"
        res["relink_by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
        res["listing_under_lsm"] = listing(directory)
    finally:
        for fd in fds:
            os.close(fd)
    rc = LIBC.linkat(AT_FDCWD, (directory + "/live").encode(), AT_FDCWD, (directory + "/live3").encode(), 0)
    res["linkat_live_after_detach"] = name_of(ctypes.get_errno()) if rc else "OK"
    os.close(src_fd)
    holder.stop()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def scenario_mapped_and_exe():
    """Only a shared mapping holds the file; and a deleted running executable."""
    res = {}
    fs = Fs("mapped", "ext4")
    path = fs.mnt + "/mapped.bin"
    size = 256 << 10
    write_file(path, seeded_bytes(7, size))
    cmd_r, cmd_w = os.pipe()
    ack_r, ack_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(cmd_w)
        # libc's mmap, not Python's: mmap.mmap() keeps a dup() of the fd
        LIBC.mmap.restype = ctypes.c_void_p
        LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long)
        LIBC.msync.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        fd = os.open(path, os.O_RDWR)
        area = LIBC.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        os.close(fd)
        os.write(ack_w, b"k")
        while os.read(cmd_r, 1) == b"w":
            ctypes.memmove(area + 1000, b"hello-after", 11)
            LIBC.msync(area, size, 4)  # MS_SYNC
            os.write(ack_w, b"k")
        os._exit(0)  # pylint: disable=protected-access
    CLEANUP.append(lambda: kill(pid))
    os.read(ack_r, 1)
    st = os.stat(path)
    os.unlink(path)
    entries = []
    for entry in os.listdir("/proc/%d/map_files" % pid):
        full = "/proc/%d/map_files/%s" % (pid, entry)
        if same_file(os.stat(full), st):
            entries.append(full)
    res["map_files_entries"] = len(entries)
    res["fd_entries"] = sum(1 for n in os.listdir("/proc/%d/fd" % pid)
                            if same_file(os.stat("/proc/%d/fd/%s" % (pid, n)), st))
    src_fd = os.open(entries[0], os.O_RDONLY)
    res["deleted_nlink"] = os.fstat(src_fd).st_nlink
    dir_fd = fs.open_dir(fs.mnt)
    res["mapped_by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "mapped.restored"))
    os.close(src_fd)
    os.write(cmd_w, b"w")
    os.read(ack_r, 1)
    with open(fs.mnt + "/mapped.restored", "rb") as restored:
        restored.seek(1000)
        res["mapping_write_visible"] = restored.read(11) == b"hello-after"
    res["mapped_same_inode"] = os.stat(fs.mnt + "/mapped.restored").st_ino == st.st_ino

    exe = fs.mnt + "/mysleep"
    shutil.copy("/bin/sleep", exe)
    os.chmod(exe, 0o755)
    proc = subprocess.Popen([exe, "600"])
    CLEANUP.append(proc.kill)
    while os.readlink("/proc/%d/exe" % proc.pid) != exe:
        time.sleep(0.01)
    os.unlink(exe)
    exe_fd = os.open("/proc/%d/exe" % proc.pid, os.O_RDONLY)
    res["exe_deleted_nlink"] = os.fstat(exe_fd).st_nlink
    res["exe_by_fd"] = refusal(lambda: abi.relink_by_fd(exe_fd, dir_fd, "mysleep.restored"))
    res["exe_content_equal"] = sha(fs.mnt + "/mysleep.restored") == sha("/bin/sleep")
    res["exe_runs"] = run(fs.mnt + "/mysleep.restored", "0", check=False).returncode
    os.close(exe_fd)
    proc.kill()
    proc.wait()
    os.write(cmd_w, b"q")
    kill(pid)
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def scenario_stress(kind, cycles, seed=42):
    """Relink cycles with holders that close before, after or at a random
    moment during the relink, plus concurrent relinks of one inode."""
    fs = Fs("stress-" + kind, kind)
    rng = random.Random(seed)
    os.mkdir(fs.mnt + "/src")
    os.mkdir(fs.mnt + "/dst")
    dir_fd = fs.open_dir(fs.mnt + "/dst")
    outcome = collections.Counter()
    violations = []
    for i in range(cycles):
        mode = ("closed_before", "held", "racing")[i % 3]
        by_inode = rng.random() < 0.5 or mode == "closed_before"
        data = b"%d\n" % i * 100
        path = fs.mnt + "/src/f%d" % i
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, data)
        st = os.fstat(fd)
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            if mode == "held":
                os.read(gate_r, 1)
            elif mode == "racing":
                time.sleep(rng.random() * 0.004)
            os._exit(0)  # pylint: disable=protected-access
        os.close(gate_r)
        os.unlink(path)
        os.close(fd)
        if mode == "closed_before":
            os.waitpid(pid, 0)
        name = "f%d" % i
        try:
            if by_inode:
                abi.relink_by_inode(st.st_dev, st.st_ino, dir_fd, name)
            else:
                src_fd = os.open("/proc/%d/fd/%d" % (pid, fd), os.O_RDONLY)
                try:
                    abi.relink_by_fd(src_fd, dir_fd, name)
                finally:
                    os.close(src_fd)
            result = "relinked"
        except OSError as exc:
            result = name_of(exc.errno)
        os.close(gate_w)
        if mode != "closed_before":
            os.waitpid(pid, 0)
        outcome["%s:%s" % (mode, result)] += 1
        target = fs.mnt + "/dst/" + name
        if result == "relinked":
            tst = os.stat(target)
            if tst.st_ino != st.st_ino or tst.st_nlink != 1 or open(target, "rb").read() != data:
                violations.append("cycle %d: relinked file wrong" % i)
        elif os.path.lexists(target):
            violations.append("cycle %d: refused (%s) but %s exists" % (i, result, name))
    res = {"outcomes": dict(outcome), "violations": violations}
    res["concurrent"] = concurrent_relinks(fs, dir_fd, 30)
    res["src_empty"] = os.listdir(fs.mnt + "/src")
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def concurrent_relinks(fs, dir_fd, rounds):
    """Two processes relink the same inode to two names at once: one wins."""
    winners = collections.Counter()
    losers = collections.Counter()
    bad = []
    for i in range(rounds):
        path = fs.mnt + "/src/c%d" % i
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"c%d" % i)
        os.unlink(path)
        gate_r, gate_w = os.pipe()
        pids = []
        for side in ("a", "b"):
            pid = os.fork()
            if pid == 0:
                os.read(gate_r, 1)
                try:
                    abi.relink_by_fd(fd, dir_fd, "c%d%s" % (i, side))
                    os._exit(0)  # pylint: disable=protected-access
                except OSError as exc:
                    os._exit(exc.errno)  # pylint: disable=protected-access
            pids.append(pid)
        os.write(gate_w, b"gg")
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        os.close(gate_r)
        os.close(gate_w)
        winners[codes.count(0)] += 1
        for code in codes:
            if code:
                losers[name_of(code)] += 1
        names = [n for n in ("c%da" % i, "c%db" % i) if os.path.lexists(fs.mnt + "/dst/" + n)]
        if len(names) != 1 or os.fstat(fd).st_nlink != 1:
            bad.append("round %d: names %s nlink %d" % (i, names, os.fstat(fd).st_nlink))
        os.close(fd)
    return {"winners_per_round": {str(k): v for k, v in winners.items()}, "loser_errno": dict(losers),
            "violations": bad}


def fuzz_held_request(rng, kind, records, straddling, bad_pointers):
    """A FRELINK_IOC_HELD request: random bytes, or plausible fields with odd values."""
    if kind == "held_random":
        return rng.getrandbits(8 * abi.HELD_STRUCT_SIZE).to_bytes(abi.HELD_STRUCT_SIZE, "little")
    pointer = rng.choice([ctypes.addressof(records)] * 4 + [straddling] + bad_pointers)
    size = rng.choice((0, 1, 95, 96, 200, 4096, 8192, 1 << 30, (1 << 30) + 1, 0xffffffff))
    if pointer == ctypes.addressof(records):
        size = min(size, 8192) if rng.random() < 0.9 else size  # mostly the true size, sometimes a lie
    split = {}
    if rng.random() < 0.3:  # a resume point, plausible or odd
        split = {"flags": rng.choice((abi.HELD_SPLIT, abi.HELD_SPLIT, 2)),
                 "next_kind": rng.choice((0, abi.HELD_FD, abi.HELD_MMAP, abi.HELD_EXE, 3)),
                 "next_at": rng.choice((0, 0, 1, 2 ** 63))}
    return abi.pack_held(pointer, size, rng.choice((abi.HELD_ALL, abi.HELD_FD, abi.HELD_MMAP, 0, 0x20, 0x3f,
                                                    rng.getrandbits(32))),
                         rng.choice((0, 0, 1, os.getpid(), rng.getrandbits(31), -1, -2 ** 31)),
                         tuple(rng.choice((0, 0, 0, 0, 1)) for dummy in range(2)), **split)


def scenario_fuzz(count, seed=7):
    """Random and malformed requests, bad fds, bad pointers, odd sizes."""
    fs = Fs("fuzz", "tmpfs")
    rng = random.Random(seed)
    os.mkdir(fs.mnt + "/d")
    dir_fd = os.open(fs.mnt + "/d", os.O_PATH | os.O_DIRECTORY)
    file_fd = os.open(fs.mnt + "/live", os.O_CREAT | os.O_RDWR, 0o644)
    deleted_fd = os.open(fs.mnt + "/deleted", os.O_CREAT | os.O_RDWR, 0o644)
    os.unlink(fs.mnt + "/deleted")
    fds = [dir_fd, file_fd, deleted_fd, -1, 0, 1, 2, 9999, 2 ** 31 - 1, -2 ** 31, os.open("/", os.O_PATH)]
    page = mmap.PAGESIZE
    guard = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(guard))
    LIBC.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    LIBC.mprotect(base + page, page, 0)  # second page inaccessible
    straddling = base + page - abi.RELINK_STRUCT_SIZE // 2
    bad_pointers = [0, 1, 0xdeadbeef, straddling, (1 << 47) - 8, 0xffff888000000000, 0xffffffffffffffff]
    counts = collections.Counter()
    kinds = collections.Counter()
    dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
    buf = ctypes.create_string_buffer(8192)
    records = ctypes.create_string_buffer(8192)
    held_counts = collections.Counter()
    for dummy in range(count):
        kind = rng.choice(("random_bytes", "random_fields", "plausible", "bad_pointer", "wrong_cmd", "odd_size",
                           "held_random", "held_plausible"))
        kinds[kind] += 1
        cmd, ptr = abi.IOC_RELINK, ctypes.addressof(buf)
        if kind.startswith("held_"):
            cmd = abi.IOC_HELD
            ctypes.memmove(buf, fuzz_held_request(rng, kind, records, straddling, bad_pointers), abi.HELD_STRUCT_SIZE)
        elif kind == "random_bytes":
            ctypes.memmove(buf, rng.getrandbits(8 * abi.RELINK_STRUCT_SIZE).to_bytes(abi.RELINK_STRUCT_SIZE,
                                                                                     "little"),
                           abi.RELINK_STRUCT_SIZE)
        elif kind == "plausible":  # well-formed, so it gets past the format checks
            name = rng.choice((b"n%d" % rng.randrange(50), b"live", b"d", b"x" * 255, b"."))
            if rng.random() < 0.5:
                # the live file more often: by (dev, ino) it is never a
                # candidate (ENOENT), by fd it is the EMLINK case
                request = abi.pack_request(abi.BY_FD, src_fd=rng.choice(fds + [file_fd] * 4), dir_fd=rng.choice(fds),
                                           name=name)
            else:
                request = abi.pack_request(abi.BY_INODE, dir_fd=rng.choice(fds), name=name,
                                           dev=rng.choice((os.fstat(deleted_fd).st_dev, os.stat("/").st_dev,
                                                           rng.getrandbits(64) or 1)),
                                           ino=rng.choice((os.fstat(deleted_fd).st_ino, os.fstat(file_fd).st_ino,
                                                           os.fstat(dir_fd).st_ino, rng.getrandbits(64))))
            ctypes.memmove(buf, request, len(request))
        elif kind == "random_fields":
            name = bytes(rng.choice(b"ab./\0\xff") for dummy in range(rng.choice((0, 1, 2, 5, 255, 256))))
            request = struct.pack(
                "=IiiIQQ4Q",
                rng.choice((0, 1, 2, 3, 0xffffffff, rng.getrandbits(32))),
                rng.choice(fds), rng.choice(fds), rng.choice((0, 0, 0, 1)),
                rng.choice((0, os.fstat(deleted_fd).st_dev, rng.getrandbits(64))),
                rng.choice((0, os.fstat(deleted_fd).st_ino, rng.getrandbits(64))),
                *[rng.choice((0, 0, 0, 0, 1)) for dummy in range(4)])
            request += name[:abi.NAME_SIZE].ljust(abi.NAME_SIZE, b"\0")
            if rng.random() < 0.3:  # not NUL-terminated
                request = request[:-abi.NAME_SIZE] + bytes(rng.choice(b"ab/.") for dummy in range(abi.NAME_SIZE))
            ctypes.memmove(buf, request, len(request))
        elif kind == "bad_pointer":
            ptr = rng.choice(bad_pointers)
        elif kind == "wrong_cmd":
            cmd = rng.choice((rng.getrandbits(32), abi.IOC_RELINK ^ (1 << rng.randrange(32)), 0))
        else:
            size = rng.choice((0, 1, abi.RELINK_STRUCT_SIZE - 1, abi.RELINK_STRUCT_SIZE + 1, 4096, (1 << 14) - 1))
            cmd = (abi.IOC_RELINK & ~(0x3fff << 16)) | (size << 16)
        rc = LIBC.ioctl(dev_fd, cmd, ptr)
        outcome = name_of(ctypes.get_errno()) if rc else "OK"
        counts[outcome] += 1
        if kind.startswith("held_"):
            held_counts[outcome] += 1
    os.close(dev_fd)
    guard.close()
    for fd in (dir_fd, file_fd, deleted_fd, fds[-1]):
        os.close(fd)
    fs.destroy()
    return {"requests": count, "results": dict(counts), "kinds": dict(kinds), "held_results": dict(held_counts)}


# --- issue #12: the kernel lists the handles on deleted files ---------------

HELD_FILESYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs")
CAP_SYS_PTRACE = 19
O_TMPFILE = 0o20200000


def held_key(record):
    """A listing record as a comparable tuple (kind, pid, fd, range, stat fields, path,
    (open flags, position))."""
    kind, pid, fd, rng, _flags, st, path, fdinfo = record
    return (kind, pid, fd, rng, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
            st.st_size, st.st_blocks, path, fdinfo)


def proc_oracle(pids, nlink_zero=True):
    """What a /proc reader sees of PIDS: held_key() tuples of every fd, mapping, exe, cwd
    and root whose readlink ends in ' (deleted)' and whose stat says st_nlink 0 (any with
    nlink_zero=False), except the files of the kernel's internal shmem mount (memfd,
    SysV shm), which never had a name."""
    found = set()
    probe = os.memfd_create("oracle-probe")
    shm_dev = os.fstat(probe).st_dev
    os.close(probe)

    def add(kind, pid, fd, rng, handle, target):
        if not target.endswith(" (deleted)"):
            return
        st = os.stat(handle)
        fdinfo = (0, 0)
        if kind == "fd":
            with open("/proc/%d/fdinfo/%d" % (pid, fd)) as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
            fdinfo = (int(fields["flags"], 8) & ~os.O_CLOEXEC, int(fields["pos"]))
        if (st.st_nlink == 0 or not nlink_zero) and st.st_dev != shm_dev:
            found.add((kind, pid, fd, rng, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
                       st.st_size, st.st_blocks, target, fdinfo))

    for pid in pids:
        base = "/proc/%d" % pid
        for name in os.listdir(base + "/fd"):
            add("fd", pid, int(name), (0, 0), "%s/fd/%s" % (base, name), os.readlink("%s/fd/%s" % (base, name)))
        with open(base + "/maps") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(None, 5)
                if len(fields) == 6 and fields[5].startswith("/"):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    handle = "%s/map_files/%x-%x" % (base, start, end)
                    add("mmap", pid, -1, (start, end), handle, fields[5])
        for kind in ("exe", "cwd", "root"):
            add(kind, pid, -1, (0, 0), "%s/%s" % (base, kind), os.readlink("%s/%s" % (base, kind)))
    return found


def held_request(buf_ptr, buf_size, kinds=abi.HELD_ALL, next_pid=0, reserved=(0, 0), **split):
    """(errno name, next_pid, used, processes, fds) of one raw FRELINK_IOC_HELD; split: its
    flags, next_kind, next_at."""
    request = ctypes.create_string_buffer(abi.pack_held(buf_ptr, buf_size, kinds, next_pid, reserved, **split),
                                          abi.HELD_STRUCT_SIZE)
    dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
    try:
        rc = LIBC.ioctl(dev_fd, abi.IOC_HELD, ctypes.addressof(request))
        err = ctypes.get_errno()
    finally:
        os.close(dev_fd)
    out = abi.HELD_STRUCT.unpack(request.raw)
    return (name_of(err) if rc else "OK",) + out[3:7]


def capset_without(cap):
    """Drop CAP from the effective set of the calling (single-threaded, forked) process."""
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = ctypes.create_string_buffer(24)
    hdr = ctypes.create_string_buffer(header, 8)
    if LIBC.syscall(125, hdr, data) != 0:  # capget
        raise OSError(ctypes.get_errno(), "capget")
    words = list(struct.unpack("=6I", data.raw))
    words[0] &= ~(1 << cap)  # effective, low word
    data = ctypes.create_string_buffer(struct.pack("=6I", *words), 24)
    if LIBC.syscall(126, hdr, data) != 0:  # capset
        raise OSError(ctypes.get_errno(), "capset")


def in_child(call):
    """call() in a forked child; its JSON-able result."""
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(read_w, json.dumps(call()).encode())
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.close(read_w)
    os.waitpid(pid, 0)
    with os.fdopen(read_r, "rb") as out:
        return json.loads(out.read().decode() or "null")


class HeldProcess:
    """A forked child holding deleted files by fd, by a shared mapping only, as its
    working directory and as its root, beside decoys that are not deleted files:
    a pipe, a socket, an eventfd, a memfd, an O_TMPFILE, a live file named
    'live (deleted)' and a file with a second name."""

    def __init__(self, filesystems, scratch, index):
        ready_r, ready_w = os.pipe()
        self.quit_r, self.quit_w = os.pipe()
        scratch = "%s/%d" % (scratch, index)
        os.mkdir(scratch)
        paths = ["%s/held-%s-%d" % (fs.mnt, fs.kind, index) for fs in filesystems]
        for i, path in enumerate(paths):
            write_file(path, seeded_bytes(i, 4096 * (i + 1)))
        mapped = "%s/mapped-only-%d" % (filesystems[0].mnt, index)
        write_file(mapped, seeded_bytes(9, 65536))
        live = scratch + "/live (deleted)"
        write_file(live, b"live\n")
        twice = scratch + "/twice"
        write_file(twice, b"two names\n")
        os.link(twice, scratch + "/twice-other")
        for name in ("cwd", "root"):
            os.mkdir("%s/%s" % (scratch, name))
        self.pid = os.fork()
        if self.pid == 0:
            try:
                LIBC.mmap.restype = ctypes.c_void_p
                LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_long)
                keep = [os.open(path, os.O_RDWR | (os.O_APPEND if i == 0 else 0)) for i, path in enumerate(paths)]
                for i, fd in enumerate(keep):
                    os.lseek(fd, 100 * (i + 1) + index, os.SEEK_SET)  # positions the listing must report
                fd = os.open(mapped, os.O_RDWR)
                LIBC.mmap(None, 65536, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
                LIBC.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 8192)
                os.close(fd)
                keep += list(os.pipe()) + [sock.detach() for sock in socket.socketpair()]
                keep += [eventfd(), os.memfd_create("held-decoy"), os.open(live, os.O_RDONLY),
                         os.open(twice, os.O_RDONLY), os.open(scratch, os.O_RDWR | O_TMPFILE, 0o600)]
                cwd_fd = os.open(scratch + "/cwd", os.O_RDONLY | os.O_DIRECTORY)
                os.chroot(scratch + "/root")
                os.fchdir(cwd_fd)  # a working directory outside the root is allowed
                os.close(cwd_fd)
                os.write(ready_w, b"k")
                os.read(self.quit_r, 1)
            finally:
                os._exit(0)  # pylint: disable=protected-access
        os.read(ready_r, 1)
        os.close(ready_r)
        os.close(ready_w)
        for path in paths + [mapped, scratch + "/twice"]:
            os.unlink(path)
        for name in ("cwd", "root"):
            os.rmdir("%s/%s" % (scratch, name))
        CLEANUP.append(self.stop)

    def stop(self):
        if self.pid is not None:
            os.write(self.quit_w, b"q")
            os.waitpid(self.pid, 0)
            self.pid = None


def scenario_held():
    """FRELINK_IOC_HELD against an independent /proc reader, its resumption with small
    buffers, and its refusals."""
    res = {}
    filesystems = [Fs("held-" + kind, kind) for kind in HELD_FILESYSTEMS]
    scratch = filesystems[-1].mnt + "/scratch"
    os.mkdir(scratch)
    holders = [HeldProcess(filesystems, scratch, index) for index in range(3)]
    pids = {h.pid for h in holders}
    before = {p: os.stat(p) for p in ["/proc/%d/fd/3" % h.pid for h in holders]}

    records, processes, fds = abi.list_held()
    proc_pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    mine = [r for r in records if r[1] in pids]
    got = {held_key(r) for r in mine if r[5].st_nlink == 0}
    want = proc_oracle(sorted(pids))
    res["records_total"] = len(records)
    res["kernel_deleted"] = len(got)
    res["oracle_deleted"] = len(want)
    res["missing"] = sorted(map(str, want - got))[:5]
    res["extra"] = sorted(map(str, got - want))[:5]
    res["kinds"] = dict(collections.Counter(r[0] for r in mine if r[5].st_nlink == 0))
    res["paths_named_deleted_not_listed"] = [r[6] for r in mine if "live (deleted)" in r[6]]
    res["fd_positions"] = sorted({r[7][1] for r in mine if r[0] == "fd" and r[5].st_nlink == 0})
    res["fd_appending"] = sum(1 for r in mine if r[0] == "fd" and r[7][0] & os.O_APPEND)
    res["second_name_listed_nlink"] = sorted({r[5].st_nlink for r in mine if r[6].endswith("/twice (deleted)")})
    res["pseudo_files_listed"] = [r[6] for r in mine if not r[6].startswith("/")]
    res["processes"] = processes
    res["proc_pids"] = len(proc_pids)
    res["fds"] = fds
    res["proc_fds"] = sum(len(os.listdir("/proc/%d/fd" % p)) for p in proc_pids if os.path.exists("/proc/%d" % p))

    small, small_processes, _fds = abi.list_held(buf_size=512)
    res["small_buffer_same"] = {held_key(r) for r in small if r[1] in pids} == {held_key(r) for r in mine}
    res["small_buffer_processes"] = small_processes
    only_fd = abi.list_held(kinds=abi.HELD_FD)[0]
    res["kinds_fd_only"] = sorted({r[0] for r in only_fd if r[1] in pids})

    first = min(pids)
    buf = ctypes.create_string_buffer(4096)
    res["tiny_buffer"] = held_request(ctypes.addressof(buf), 64, next_pid=first)
    res["tiny_buffer_next_pid_is_holder"] = res["tiny_buffer"][1] == first
    res["past_last_pid"] = held_request(ctypes.addressof(buf), 4096, next_pid=2 ** 31 - 1)
    res["null_buffer"] = held_request(0, 1 << 20, next_pid=first)[0]
    res["refusals"] = {
        "no_kinds": held_request(ctypes.addressof(buf), 4096, kinds=0)[0],
        "unknown_kind": held_request(ctypes.addressof(buf), 4096, kinds=0x20)[0],
        "reserved": held_request(ctypes.addressof(buf), 4096, reserved=(1, 0))[0],
        "negative_pid": held_request(ctypes.addressof(buf), 4096, next_pid=-1)[0],
        "huge_buffer": held_request(ctypes.addressof(buf), (1 << 30) + 1)[0],
        "bad_request_pointer": raw_cmd(abi.IOC_HELD, 0xdeadbeef),
    }
    res["without_cap_sys_ptrace"] = in_child(
        lambda: (capset_without(CAP_SYS_PTRACE), held_request(ctypes.addressof(buf), 4096)[0])[1])
    res["unchanged"] = all(os.stat(p) == st for p, st in before.items())
    for holder in holders:
        holder.stop()
    res["after_exit"] = len([r for r in abi.list_held()[0] if r[1] in pids])
    for fs in filesystems:
        if fs.type in fs.FSCK:
            os.sync()
            fs.umount()
            res.setdefault("fsck", {})[fs.kind] = fs.fsck()["rc"]
        fs.destroy()
    return res


def scenario_held_split(dups=5000, maps=200, buf_size=65536):
    """One process holds a deleted file with a ~3,000-byte path by DUPS descriptors and
    MAPS mappings: more records than BUF_SIZE takes.  The listing, never given a larger
    buffer, resumes inside the process (FRELINK_HELD_SPLIT) and returns every record
    exactly once; resume points it refuses; an old caller (no flag) still gets EOVERFLOW."""
    fs = Fs("held-split", "tmpfs")
    path = fs.mnt
    for i in range(12):
        path += "/" + ("d%02d" % i) * 80
        os.mkdir(path)
    path += "/victim"
    write_file(path, seeded_bytes(31, 4096))
    ready_r, ready_w = os.pipe()
    quit_r, quit_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (dups + 100, dups + 100))
            LIBC.mmap.restype = ctypes.c_void_p
            LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_long)
            fd = os.open(path, os.O_RDONLY)
            for dummy in range(maps):
                LIBC.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            fds = [fd] + [os.dup(fd) for dummy in range(dups - 1)]
            os.write(ready_w, json.dumps(fds).encode() + b"\n")
            os.read(quit_r, 1)
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        want_fds = sorted(json.loads(ready.readline().decode()))
    os.unlink(path)
    res = {"path_len": len(path)}
    try:
        records, processes, _fds = abi.list_held(buf_size=buf_size, buf_max=buf_size)
        mine = [r for r in records if r[1] == pid]
        fd_counts = collections.Counter(r[2] for r in mine if r[0] == "fd")
        map_counts = collections.Counter(r[3] for r in mine if r[0] == "mmap")
        res["fds_listed"] = len(fd_counts)
        res["fds_right"] = sorted(fd_counts) == want_fds
        res["fds_more_than_once"] = sum(1 for n in fd_counts.values() if n > 1)
        res["maps_listed"] = len(map_counts)
        res["maps_more_than_once"] = sum(1 for n in map_counts.values() if n > 1)
        res["order"] = [r[0] for r in mine] == ["fd"] * len(fd_counts) + ["mmap"] * len(map_counts)
        res["paths"] = sorted({r[6] for r in mine}) == [path + " (deleted)"]
        res["processes_vs_proc"] = [processes, len([n for n in os.listdir("/proc") if n.isdigit()])]
    except OSError as exc:
        res["error"] = name_of(exc.errno)
    buf = ctypes.create_string_buffer(buf_size)
    # an old caller, whole processes only: this one does not fit
    res["without_split"] = held_request(ctypes.addressof(buf), buf_size, next_pid=pid)[0]
    res["refusals"] = {
        "unknown_flag": held_request(ctypes.addressof(buf), buf_size, next_pid=pid, flags=2)[0],
        "next_kind_without_split": held_request(ctypes.addressof(buf), buf_size, next_pid=pid,
                                                next_kind=abi.HELD_FD)[0],
        "next_at_without_kind": held_request(ctypes.addressof(buf), buf_size, next_pid=pid,
                                             flags=abi.HELD_SPLIT, next_at=5)[0],
        "two_kinds": held_request(ctypes.addressof(buf), buf_size, next_pid=pid, flags=abi.HELD_SPLIT,
                                  next_kind=abi.HELD_FD | abi.HELD_MMAP)[0],
        "at_for_cwd": held_request(ctypes.addressof(buf), buf_size, next_pid=pid, flags=abi.HELD_SPLIT,
                                   next_kind=abi.HELD_CWD, next_at=1)[0],
        "kind_without_pid": held_request(ctypes.addressof(buf), buf_size, flags=abi.HELD_SPLIT,
                                         next_kind=abi.HELD_FD)[0],
    }
    # a resume point in the middle of the descriptors: the next record is that descriptor
    middle = want_fds[len(want_fds) // 2]
    out = held_request(ctypes.addressof(buf), buf_size, next_pid=pid, flags=abi.HELD_SPLIT,
                       next_kind=abi.HELD_FD, next_at=middle)
    first = next(abi.iter_held_records(buf.raw[:out[2]]))[0] if out[2] else None
    res["resume_middle"] = [out[0], out[1] == pid, first and (first.pid, first.fd) == (pid, middle)]
    # one record alone larger than the buffer: EOVERFLOW, the resume point as passed
    request = ctypes.create_string_buffer(abi.pack_held(ctypes.addressof(buf), 512, abi.HELD_ALL, pid,
                                                        flags=abi.HELD_SPLIT, next_kind=abi.HELD_FD,
                                                        next_at=middle), abi.HELD_STRUCT_SIZE)
    dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
    rc = LIBC.ioctl(dev_fd, abi.IOC_HELD, ctypes.addressof(request))
    err = ctypes.get_errno()
    os.close(dev_fd)
    fields = abi.HELD_STRUCT.unpack(request.raw)
    res["record_too_large"] = [name_of(err) if rc else "OK", fields[3] == pid, fields[8], fields[9] == middle]
    os.write(quit_w, b"q")
    os.waitpid(pid, 0)
    fs.destroy()
    return res


def scenario_held_threads():
    """Two processes /proc shows only under /proc/PID/task/TID: one with a thread that
    unshared its fd table (unshare(CLONE_FILES)) and opened a deleted file there, one whose
    main thread exited (pthread_exit) while another thread holds a deleted file by fd and
    by a mapping.  FRELINK_IOC_HELD lists them with the thread group's pid; a descriptor
    that /proc/PID/fd does not show has its thread's tid in start."""
    fs = Fs("held-threads", "tmpfs")
    paths = {name: "%s/%s" % (fs.mnt, name) for name in ("shared", "own", "orphaned", "mapped")}
    for i, path in enumerate(paths.values()):
        write_file(path, seeded_bytes(40 + i, 4096))
    ready_r, ready_w = os.pipe()
    quit_r, quit_w = os.pipe()
    pids = []
    for role in ("unshared", "zombie_leader"):
        pid = os.fork()
        if pid == 0:
            try:
                LIBC.mmap.restype = ctypes.c_void_p
                LIBC.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_long)
                if role == "unshared":
                    os.open(paths["shared"], os.O_RDONLY)

                    def own_table():
                        if LIBC.unshare(0x400) != 0:  # CLONE_FILES
                            os._exit(3)  # pylint: disable=protected-access
                        os.open(paths["own"], os.O_RDONLY)
                        os.write(ready_w, b"%d\n" % threading.get_native_id())
                        os.read(quit_r, 1)
                        os._exit(0)  # pylint: disable=protected-access
                    threading.Thread(target=own_table).start()
                    os.read(quit_r, 1)
                else:
                    os.open(paths["orphaned"], os.O_RDONLY)
                    fd = os.open(paths["mapped"], os.O_RDONLY)
                    LIBC.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                    os.close(fd)

                    def survivor():
                        os.write(ready_w, b"%d\n" % threading.get_native_id())
                        os.read(quit_r, 1)
                        os._exit(0)  # pylint: disable=protected-access
                    threading.Thread(target=survivor).start()
                    time.sleep(0.2)
                    LIBC.pthread_exit(None)  # ctypes releases the GIL first
            finally:
                os._exit(0)  # pylint: disable=protected-access
        pids.append(pid)
    ready = os.fdopen(ready_r, "rb")
    tids = sorted(int(ready.readline()) for dummy in pids)
    unshared, zombie = pids
    for dummy in range(100):
        with open("/proc/%d/stat" % zombie) as stat_file:
            if stat_file.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.1)
    for path in paths.values():
        os.unlink(path)
    res = {"zombie_leader_state": open("/proc/%d/stat" % zombie).read().rsplit(")", 1)[1].split()[0],
           "proc_fd_of_zombie_leader": len(os.listdir("/proc/%d/fd" % zombie))}
    want = set()
    for pid in pids:
        for tid in sorted(int(t) for t in os.listdir("/proc/%d/task" % pid)):
            base = "/proc/%d/task/%d" % (pid, tid)
            # /proc/PID/fd shows the main thread's table; any other: its tid in the record
            table = 0 if tid == pid else tid
            for name in os.listdir(base + "/fd"):
                target = os.readlink("%s/fd/%s" % (base, name))
                if target.endswith(" (deleted)"):
                    want.add(("fd", pid, int(name), table, target))
            with open(base + "/maps") as maps:
                for line in maps:
                    fields = line.rstrip("\n").split(None, 5)
                    if len(fields) == 6 and fields[5].endswith(" (deleted)") and fields[5].startswith(fs.mnt):
                        start = int(fields[0].split("-")[0], 16)
                        want.add(("mmap", pid, -1, start, fields[5]))
    got = {(r[0], r[1], r[2], r[3][0], r[6]) for r in abi.list_held()[0] if r[1] in pids}
    res["missing"] = sorted(map(str, want - got))
    res["extra"] = sorted(map(str, got - want))
    res["listed"] = sorted((["unshared", "zombie_leader"][pids.index(k[1])], k[0], os.path.basename(k[4]),
                            k[3] in tids) for k in got if k[4].startswith(fs.mnt + "/"))
    os.write(quit_w, b"qqqq")
    for pid in pids:
        os.waitpid(pid, 0)
    fs.destroy()
    return res


def scenario_held_fuse(timeout=30):
    """A deleted file held on a FUSE filesystem (bindfs, attr_timeout=0; bindfs's libfuse3
    knows no hard_remove, so its source is renamed .fuse_hidden*, yet the kernel's dentry is
    unlinked) whose daemon is stopped (SIGSTOP): a listing must not wait for the daemon
    (an unprivileged user's) to answer.  Run in a child with a timeout; the
    daemon is continued afterwards either way."""
    src = Fs("held-fuse-src", "tmpfs")
    mnt = "/mnt/frelink-held-fuse"
    os.makedirs(mnt, exist_ok=True)
    daemon = subprocess.Popen(["bindfs", "-f", "-o", "attr_timeout=0,entry_timeout=0",
                               src.mnt, mnt], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def unmount():
        os.kill(daemon.pid, signal.SIGCONT)
        run("umount", "-l", mnt, check=False)
        daemon.terminate()
        daemon.wait()
    CLEANUP.append(unmount)
    for dummy in range(100):
        if os.path.ismount(mnt):
            break
        time.sleep(0.1)
    res = {"mounted": os.path.ismount(mnt)}
    if not res["mounted"]:
        daemon.kill()
        res["bindfs"] = [daemon.wait(), daemon.stderr.read().decode(errors="replace")[-2000:]]
        return res
    write_file(mnt + "/victim", seeded_bytes(51, 8192))
    holder = ReadHolder(mnt + "/victim")
    os.unlink(mnt + "/victim")
    res["unlinked_in_source"] = not os.path.lexists(src.mnt + "/victim")
    res["source_hidden"] = [n.startswith(".fuse_hidden") for n in os.listdir(src.mnt)]
    os.kill(daemon.pid, signal.SIGSTOP)
    read_r, read_w = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            records = abi.list_held(kinds=abi.HELD_FD)[0]
            os.write(read_w, json.dumps([[r[6], r[5].st_nlink, r[5].st_size] for r in records
                                         if r[1] == holder.pid]).encode())
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.close(read_w)
    ready = select.select([read_r], [], [], timeout)[0]
    res["listing"] = "RETURNED" if ready else "BLOCKED"
    res["listing_seconds"] = round(time.monotonic() - started, 1)
    os.kill(daemon.pid, signal.SIGCONT)  # a blocked listing goes on now
    with os.fdopen(read_r, "rb") as out:
        data = out.read()
    os.waitpid(pid, 0)
    res["records"] = json.loads(data.decode() or "null")
    holder.stop()
    return res


# --- issue #11: a fuzzer that tries to break the module ------------------

FIFREEZE, FITHAW = 0xC0045877, 0xC0045878
SYS_DELETE_MODULE, SYS_FINIT_MODULE = 176, 313
MNT_DETACH = 2
LIBC.syscall.restype = ctypes.c_long
LIBC.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
LIBC.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
LIBC.epoll_create1.argtypes = (ctypes.c_int,)
HOSTILE_FILESYSTEMS = ("ext4", "xfs", "btrfs", "tmpfs", "vfat")
FREEZABLE = ("ext4", "xfs", "btrfs")
NAMES = ["r%d" % i for i in range(12)]
SENTINELS = ["s%d" % i for i in range(3)]
MODULE_KO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frelink.ko")


class Hostile:
    """Shared state of scenario_hostile's threads."""

    def __init__(self, seed):
        self.seed = seed
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counts = collections.Counter()   # request outcomes
        self.held_outcomes = collections.Counter()  # of the FRELINK_IOC_HELD ones
        self.kinds = collections.Counter()    # request kinds
        self.acts = collections.Counter()     # what the other threads did
        self.errors = []                      # unexpected Python exceptions
        self.templates = []                   # fds never closed: what slots are made of
        self.slots = []                       # fd numbers the churner closes and dup2()s over
        self.dirs = []                        # directory fds (O_PATH and O_RDONLY)
        self.inodes = []                      # (st_dev, st_ino) of deleted files
        self.held = []                        # (fd of a deleted file, fd of its directory)
        self.quiet = threading.Event()        # set: requesters open no device, so that an unload can succeed
        self.lazy = []                        # fds on a lazily unmounted tmpfs, replaced each cycle
        self.records = [ctypes.create_string_buffer(1 << 16) for dummy in range(3)]  # FRELINK_IOC_HELD's

    def count(self, counter, key, n=1):
        with self.lock:
            counter[key] += n

    def guard(self, name, body):
        """Run body() in a loop until stopped; record anything it raises."""
        def loop():
            rng = random.Random("%s-%s" % (self.seed, name))
            while not self.stop.is_set():
                try:
                    body(rng)
                except OSError:
                    self.count(self.acts, name + ":oserror")
                except Exception:  # pylint: disable=broad-except
                    with self.lock:
                        self.errors.append("%s: %s" % (name, traceback.format_exc()))
                    return
        return threading.Thread(target=loop, name=name, daemon=True)


def hostile_request(h, rng, buf, bad_pointers):
    """One request: (cmd, pointer), its kind counted."""
    def pick_fd():
        return rng.choice(h.slots + h.templates + h.dirs + h.lazy + [-1, 9999])

    name = rng.choice(NAMES * 3 + SENTINELS + ["", ".", "..", "a/b", "x" * 255])
    kind = rng.choice(("by_fd", "by_fd_dir", "plausible", "plausible", "by_inode", "by_inode", "random_bytes",
                       "bad_pointer", "wrong_cmd", "held", "held", "held_split", "identify", "by_generation"))
    h.count(h.kinds, kind)
    cmd, ptr = abi.IOC_RELINK, ctypes.addressof(buf)
    if kind in ("held", "held_split"):  # lists every process while the others close, exit and unmount
        cmd = abi.IOC_HELD
        records = rng.choice(h.records)
        split = {}
        if kind == "held_split":  # a process's records across calls, resumed at a plausible or odd point
            split = {"flags": abi.HELD_SPLIT, "next_kind": rng.choice((0, abi.HELD_FD, abi.HELD_MMAP)),
                     "next_at": rng.choice((0, rng.randrange(1, 64), rng.getrandbits(48) << 12))}
        request = abi.pack_held(ctypes.addressof(records), rng.choice((len(records), 512, 4096)),
                                rng.choice((abi.HELD_ALL, abi.HELD_FD, abi.HELD_MMAP | abi.HELD_EXE)),
                                rng.choice((0, 0, os.getpid(), rng.randrange(1, 4096))), **split)
    elif kind == "identify":  # the generation of an inode that may be freed, renamed or unmounted meanwhile
        cmd = abi.IOC_IDENTIFY
        dev, ino = rng.choice(h.inodes)
        request = abi.IDENTIFY_STRUCT.pack(rng.choice(h.dirs + h.lazy + [-1]), 0, dev, ino, 0, 0, 0, 0, 0)
    elif kind == "by_generation":  # by (dev, ino) with a generation, right only by chance
        dev, ino = rng.choice(h.inodes)
        request = abi.pack_request(abi.BY_INODE | abi.GENERATION, dir_fd=rng.choice(h.dirs + h.lazy), dev=dev,
                                   ino=ino, generation=rng.getrandbits(32), name=name.encode())
    elif kind == "plausible":  # a deleted file into its own directory: reaches the link itself
        src_fd, dir_fd = rng.choice(h.held)
        request = abi.pack_request(abi.BY_FD, src_fd=src_fd, dir_fd=dir_fd, name=rng.choice(NAMES).encode())
    elif kind in ("by_fd", "by_fd_dir"):
        dir_fd = rng.choice(h.dirs + h.lazy) if kind == "by_fd_dir" else pick_fd()
        request = abi.pack_request(abi.BY_FD, src_fd=pick_fd(), dir_fd=dir_fd, name=name.encode())
    elif kind == "by_inode":
        dev, ino = rng.choice(h.inodes) if rng.random() < 0.8 else (rng.getrandbits(32) or 1, rng.getrandbits(64))
        request = abi.pack_request(abi.BY_INODE, dir_fd=rng.choice(h.dirs + h.lazy), dev=dev, ino=ino,
                                   name=name.encode())
    elif kind == "random_bytes":
        request = rng.getrandbits(8 * abi.RELINK_STRUCT_SIZE).to_bytes(abi.RELINK_STRUCT_SIZE, "little")
    else:
        request = b""
        if kind == "bad_pointer":
            ptr = rng.choice(bad_pointers)
        else:
            cmd = rng.choice((rng.getrandbits(32), abi.IOC_RELINK ^ (1 << rng.randrange(32))))
    if request:
        ctypes.memmove(buf, request, len(request))
    return cmd, ptr


def scenario_hostile(count, seed=11):
    """>= count requests from three threads while other threads close and dup2()
    the descriptors they use, unlink and re-create the names they ask for,
    freeze and thaw the filesystems, mount and lazily unmount a tmpfs under
    them, and try to unload (and reload) the module.  Afterwards: every
    thread stopped, names that existed never replaced, fsck clean, and the
    module unloads cleanly."""
    h = Hostile(seed)
    filesystems = {kind: Fs("h-" + kind, kind) for kind in HOSTILE_FILESYSTEMS}
    sentinel_ids = {}
    for kind, fs in filesystems.items():
        os.mkdir(fs.mnt + "/d")
        for name in SENTINELS:
            write_file("%s/d/%s" % (fs.mnt, name), ("sentinel %s %s\n" % (kind, name)).encode())
            st = os.stat("%s/d/%s" % (fs.mnt, name))
            sentinel_ids[(kind, name)] = (st.st_dev, st.st_ino)
        h.dirs += [fs.open_dir(fs.mnt + "/d"), os.open(fs.mnt + "/d", os.O_RDONLY | os.O_DIRECTORY)]
        fs.fds.append(h.dirs[-1])
        for i in range(3):
            path = "%s/d/held%d" % (fs.mnt, i)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            os.write(fd, b"held %s %d\n" % (kind.encode(), i))
            os.unlink(path)
            h.templates.append(fd)
            h.held.append((fd, h.dirs[-1 - i % 2]))
            st = os.fstat(fd)
            h.inodes.append((st.st_dev, st.st_ino))
        h.templates.append(os.open(fs.mnt + "/d/" + SENTINELS[0], os.O_RDONLY))
        h.templates.append(os.open(fs.mnt + "/d/" + SENTINELS[1], os.O_PATH))
    h.templates += list(os.pipe()) + [sock.detach() for sock in socket.socketpair()]
    # (not the device itself: a descriptor of it that never closes would pin the module)
    h.templates += [os.memfd_create("hostile"), eventfd(), os.open("/", os.O_PATH), os.open("/dev/null", os.O_RDWR),
                    LIBC.epoll_create1(0)]
    h.slots = [os.dup(random.Random(seed).choice(h.templates)) for dummy in range(16)]

    page = mmap.PAGESIZE
    guard = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(guard))
    LIBC.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    LIBC.mprotect(base + page, page, 0)
    bad_pointers = [0, 1, base + page - abi.RELINK_STRUCT_SIZE // 2, 0xffff888000000000, (1 << 47) - 8]

    def requester(index):
        def body(rng):
            buf = ctypes.create_string_buffer(abi.RELINK_STRUCT_SIZE)
            # requester 0 keeps the device open for 500 requests, then lets go
            # for a moment, so that an unload attempt can also succeed
            while h.quiet.is_set() and not h.stop.is_set():
                time.sleep(0.001)
            dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR) if index == 0 else -1
            try:
                for dummy in range(500):
                    with h.lock:
                        if sum(h.counts.values()) >= count:
                            h.stop.set()
                    if h.stop.is_set() or h.quiet.is_set():
                        break
                    cmd, ptr = hostile_request(h, rng, buf, bad_pointers)
                    fd = dev_fd
                    if fd < 0:
                        try:
                            fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
                        except OSError as exc:
                            h.count(h.counts, "device:" + name_of(exc.errno))
                            continue
                    rc = LIBC.ioctl(fd, cmd, ptr)
                    outcome = name_of(ctypes.get_errno()) if rc else "OK"
                    h.count(h.counts, outcome)
                    if cmd == abi.IOC_HELD:
                        h.count(h.held_outcomes, outcome)
                    if fd != dev_fd:
                        os.close(fd)
            finally:
                if dev_fd >= 0:
                    os.close(dev_fd)
            time.sleep(0.02 if index == 0 else 0)
        return body

    def churner(rng):
        slot = rng.randrange(len(h.slots))
        if rng.random() < 0.3:
            os.close(h.slots[slot])
            h.count(h.acts, "close")
            time.sleep(0.0005)
        os.dup2(rng.choice(h.templates), h.slots[slot])
        h.count(h.acts, "dup2")
        time.sleep(0.0005)

    def namer(rng):
        fs = filesystems[rng.choice(HOSTILE_FILESYSTEMS)]
        path = "%s/d/%s" % (fs.mnt, rng.choice(NAMES))
        if os.path.lexists(path):
            os.unlink(path)  # a relinked inode is deleted again: relinkable again
            h.count(h.acts, "unlink")
        elif rng.random() < 0.3:
            write_file(path, b"squatter\n")
            h.count(h.acts, "create")
        time.sleep(0.001)

    def thaw_all():
        # the churner may have swapped the descriptor FIFREEZE went to: thaw
        # every filesystem through fresh ones, whichever was frozen
        for kind in FREEZABLE:
            fd = os.open(filesystems[kind].mnt, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError:
                pass
            finally:
                os.close(fd)

    def freezer(rng):
        fd = os.open(filesystems[rng.choice(FREEZABLE)].mnt, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
            h.count(h.acts, "freeze")
            time.sleep(rng.uniform(0.005, 0.03))
        finally:
            os.close(fd)
            thaw_all()
        time.sleep(rng.uniform(0.01, 0.05))

    lazy_dir = "/mnt/frelink-h-lazy"
    os.makedirs(lazy_dir, exist_ok=True)

    def mounter(rng):
        if LIBC.mount(b"tmpfs", lazy_dir.encode(), b"tmpfs", 0, b"size=8m") != 0:
            raise OSError(ctypes.get_errno(), "mount tmpfs")
        path = lazy_dir + "/held"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        os.unlink(path)
        new = [fd, os.open(lazy_dir, os.O_PATH | os.O_DIRECTORY)]
        old, h.lazy = h.lazy, new
        for stale in old:
            os.close(stale)
        time.sleep(rng.uniform(0.01, 0.05))
        LIBC.umount2(lazy_dir.encode(), MNT_DETACH)  # the fds stay, the mount is gone
        h.count(h.acts, "umount_lazy")
        time.sleep(rng.uniform(0.01, 0.05))

    def unloader(rng):
        time.sleep(rng.uniform(0.05, 0.2))
        # mostly while requests fly; rarely once the device is let go (an unload and
        # reload under lockdep and KASAN costs seconds, and opens meanwhile are slow)
        quiet = rng.random() < 0.03
        if quiet:
            h.quiet.set()
            time.sleep(0.05)
        rc = LIBC.syscall(SYS_DELETE_MODULE, b"frelink", os.O_NONBLOCK)
        h.quiet.clear()
        if rc != 0:
            h.count(h.acts, "unload:" + name_of(ctypes.get_errno()))
            return
        h.count(h.acts, "unload:OK")
        time.sleep(0.01)
        for dummy in range(50):  # the churner may swap or close the descriptor of the .ko
            try:
                fd = os.open(MODULE_KO, os.O_RDONLY)
                try:
                    rc = LIBC.syscall(SYS_FINIT_MODULE, fd, b"", 0)
                    err = ctypes.get_errno()
                finally:
                    os.close(fd)
            except OSError:
                rc, err = -1, None
            if os.path.exists("/sys/module/frelink"):
                h.count(h.acts, "reload:OK")
                break
            h.count(h.acts, "reload:" + (name_of(err) if err else "oserror"))

    def spawner(rng):
        # short-lived processes holding a deleted file: listings race with their exit
        fs = filesystems[rng.choice(("ext4", "tmpfs"))]
        path = "%s/d/spawned%d" % (fs.mnt, rng.randrange(4))
        # posix_spawn: no pipe of subprocess's own for the churner to dup2() over
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", 'exec 3<>"$1" && rm -f "$1" && sleep 0.0%d'
                                         % rng.randrange(1, 9), "sh", path], os.environ)
        os.waitpid(pid, 0)
        h.count(h.acts, "spawn")

    threads = [h.guard("requester%d" % i, requester(i)) for i in range(3)]
    helpers = (("churner", churner), ("namer", namer), ("freezer", freezer), ("mounter", mounter),
               ("unloader", unloader), ("spawner", spawner))
    threads += [h.guard(name, body) for name, body in helpers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads[:3]:
        thread.join(1800)
    h.stop.set()
    for thread in threads:
        thread.join(120)
    res = {"seconds_fuzzing": round(time.monotonic() - started, 1),
           "stuck_threads": [t.name for t in threads if t.is_alive()],
           "thread_errors": h.errors, "requests": sum(h.counts.values()),
           "outcomes": dict(h.counts), "kinds": dict(h.kinds), "acts": dict(h.acts),
           "held_outcomes": dict(h.held_outcomes)}
    thaw_all()
    if not os.path.exists("/sys/module/frelink"):
        run("insmod", MODULE_KO)
    res["sentinels_replaced"] = []
    for (kind, name), ids in sorted(sentinel_ids.items()):
        st = os.stat("%s/d/%s" % (filesystems[kind].mnt, name))
        if (st.st_dev, st.st_ino) != ids:
            res["sentinels_replaced"].append("%s/%s" % (kind, name))
    for fd in set(h.slots + h.templates + h.lazy) - set(h.dirs):
        try:
            os.close(fd)
        except OSError:
            pass
    guard.close()
    res["fsck"] = {}
    for kind, fs in filesystems.items():
        if fs.type in fs.FSCK:
            os.sync()
            fs.umount()
            res["fsck"][kind] = fs.fsck()
        fs.destroy()
    res["module_refcnt"] = open("/sys/module/frelink/refcnt").read().strip()
    res["rmmod"] = run("rmmod", "frelink", check=False).returncode
    res["unloaded_at_end"] = not os.path.exists("/sys/module/frelink") and not os.path.exists(abi.DEVICE_PATH)
    run("insmod", MODULE_KO)
    return res


# --- issue #9: allowlist, overlayfs, read-only source mounts, races --------

class ReadHolder:
    """A forked child that keeps `path` open read-only (an overlay file stays
    in its lower layer) until stopped."""

    def __init__(self, path):
        ready_r, ready_w = os.pipe()
        self.quit_r, self.quit_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                fd = os.open(path, os.O_RDONLY)
                os.write(ready_w, b"%d\n" % fd)
                os.read(self.quit_r, 1)
            finally:
                os._exit(0)  # pylint: disable=protected-access
        os.close(ready_w)
        self.fd = int(os.read(ready_r, 64).decode())
        os.close(ready_r)
        self.proc_path = "/proc/%d/fd/%d" % (self.pid, self.fd)
        CLEANUP.append(self.stop)

    def stop(self):
        if self.pid is None:
            return
        os.write(self.quit_w, b"q")
        os.waitpid(self.pid, 0)
        os.close(self.quit_w)
        os.close(self.quit_r)
        self.pid = None


def scenario_overlay(kind):
    """overlayfs with lower, upper and work on one `kind` filesystem: a held
    file deleted inside the merged dir is relinked by fd as its upper inode
    into a dir of that filesystem outside the layer dirs."""
    fs = Fs("ovl-" + kind, kind)
    res = {}
    base = fs.mnt
    for sub in ("lower", "upper", "work", "merged", "restore"):
        os.mkdir(base + "/" + sub)
    write_file(base + "/lower/lowfile", b"lower data\n")
    merged = base + "/merged"
    run("mount", "-t", "overlay", "overlay", "-o",
        "lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work" % (base, base, base), merged)
    CLEANUP.append(lambda: run("umount", "-l", merged, check=False))
    restore_fd = fs.open_dir(base + "/restore")

    # a file of the upper layer, held and written to, deleted in the merged dir
    data = seeded_bytes(11, 256 << 10)
    write_file(merged + "/victim", data)
    real = os.stat(base + "/upper/victim")
    holder = Holder(merged + "/victim")
    writer = Holder(merged + "/victim", writer=True, seed=11)
    os.unlink(merged + "/victim")
    upper = os.stat(holder.proc_path)  # the overlay's view: its own st_dev
    res["overlay_dev_differs"] = upper.st_dev != real.st_dev
    res["upper_deleted"] = not os.path.lexists(base + "/upper/victim")
    res["nlink_after_delete"] = upper.st_nlink
    src_fd = os.open(holder.proc_path, os.O_PATH)
    res["by_fd_into_merged"] = refusal(lambda: abi.relink_by_fd(src_fd, fs.open_dir(merged), "x"))
    other = Fs("ovl-other", "tmpfs")
    res["by_fd_into_other_fs"] = refusal(lambda: abi.relink_by_fd(src_fd, other.open_dir(other.mnt), "x"))
    res["by_inode_overlay_dev_dir_merged"] = refusal(
        lambda: abi.relink_by_inode(upper.st_dev, upper.st_ino, fs.open_dir(merged), "x"))
    res["by_inode_overlay_dev_dir_upper_fs"] = refusal(
        lambda: abi.relink_by_inode(upper.st_dev, upper.st_ino, restore_fd, "x"))
    res["restore_empty_after_refusals"] = listing(base + "/restore")
    res["by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, restore_fd, "victim"))
    os.close(src_fd)
    new = os.stat(base + "/restore/victim")
    res["same_upper_inode"] = (new.st_dev, new.st_ino) == (real.st_dev, real.st_ino)
    res["nlink"] = new.st_nlink
    res["merged_listing"] = listing(merged)
    count = writer.ask("p")[0]
    count2, final = writer.ask("w 64")
    res["write_after_relink_in_it"] = count2 > count and sha(base + "/restore/victim") == final

    # a lower-only file, held read-only and deleted in the merged dir: its
    # lower copy keeps its name, nothing to undelete
    low = ReadHolder(merged + "/lowfile")
    os.unlink(merged + "/lowfile")
    low_fd = os.open(low.proc_path, os.O_PATH)
    res["lower_only_by_fd"] = refusal(lambda: abi.relink_by_fd(low_fd, restore_fd, "lowfile"))
    os.close(low_fd)
    res["lower_intact"] = open(base + "/lower/lowfile", "rb").read() == b"lower data\n"
    res["restore_listing"] = listing(base + "/restore")

    for proc in (writer, holder, low):
        proc.stop()
    other.destroy()
    fs.close_fds()
    run("umount", merged)
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.mount()
    res["content_after_remount"] = sha(base + "/restore/victim") == final
    fs.destroy()
    return res


class MapHolder:
    """A forked child that maps `path` (MAP_SHARED, read-only) until stopped: the mapping
    and the descriptor Python's mmap keeps (a dup) hold the file."""

    def __init__(self, path, length=4096):
        ready_r, ready_w = os.pipe()
        self.quit_r, self.quit_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                fd = os.open(path, os.O_RDONLY)
                mapping = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
                os.close(fd)
                os.write(ready_w, b"k")
                os.read(self.quit_r, 1)
                mapping.close()
            finally:
                os._exit(0)  # pylint: disable=protected-access
        os.close(ready_w)
        os.read(ready_r, 1)
        os.close(ready_r)
        CLEANUP.append(self.stop)

    def stop(self):
        if self.pid is None:
            return
        os.write(self.quit_w, b"q")
        os.waitpid(self.pid, 0)
        self.pid = None


def scenario_held_overlay(kind):
    """Mappings of files deleted in an overlay's merged dir (a container's view), one still
    present in the lower layer, one of the upper layer only: FRELINK_IOC_HELD lists them as
    /proc/PID/maps and a stat of /proc/PID/map_files/A-B show them (merged path, overlay
    st_dev), and lists nothing more of the holders."""
    fs = Fs("hovl-" + kind, kind)
    base = fs.mnt
    for sub in ("lower", "upper", "work", "merged"):
        os.mkdir(base + "/" + sub)
    write_file(base + "/lower/lowlib", seeded_bytes(21, 8192))
    merged = base + "/merged"
    run("mount", "-t", "overlay", "overlay", "-o",
        "lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work" % (base, base, base), merged)
    CLEANUP.append(lambda: run("umount", "-l", merged, check=False))
    write_file(merged + "/uplib", seeded_bytes(22, 8192))
    holders = {"lower": MapHolder(merged + "/lowlib"), "upper": MapHolder(merged + "/uplib")}
    os.unlink(merged + "/lowlib")
    os.unlink(merged + "/uplib")
    res = {"lower_still_named": os.path.exists(base + "/lower/lowlib"),
           "upper_gone": not os.path.lexists(base + "/upper/uplib")}
    overlay_dev = os.stat(merged).st_dev
    pids = {h.pid: name for name, h in holders.items()}
    records = [r for r in abi.list_held()[0] if r[1] in pids]
    # the lower file keeps its name in the lower layer: st_nlink 1, yet maps says deleted
    want = proc_oracle(sorted(pids), nlink_zero=False)
    got = {held_key(r) for r in records}
    res["oracle"] = {pids[k[1]]: [k[12], k[4] == overlay_dev, k[7]] for k in want}
    res["kernel"] = sorted([pids[r[1]], r[0], r[6], r[5].st_dev == overlay_dev, r[5].st_nlink] for r in records)
    res["proc"] = []
    for pid, name in sorted(pids.items()):
        with open("/proc/%d/maps" % pid) as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and "/merged/" in fields[5]:
                    st = os.stat("/proc/%d/map_files/%s" % (pid, fields[0]))
                    res["proc"].append([name, fields[5].strip(), st.st_dev == overlay_dev, st.st_nlink])
    res["missing"] = sorted(map(str, want - got))
    res["extra"] = sorted(map(str, got - want))
    res["records_of_holders"] = len(records)
    for holder in holders.values():
        holder.stop()
    run("umount", merged)
    fs.destroy()
    return res


def scenario_not_allowed():
    """Filesystems off the allowlist refuse with EOPNOTSUPP, both forms, and
    nothing changes: vfat and jfs (on loop devices), ramfs, hugetlbfs."""
    res = {}
    for kind in ("ramfs", "hugetlbfs"):
        mnt = "/mnt/frelink-" + kind
        os.makedirs(mnt, exist_ok=True)
        proc = run("mount", "-t", kind, kind, mnt, check=False)
        if proc.returncode:
            res[kind] = {"mount_failed": proc.stdout}
            continue
        CLEANUP.append(lambda mnt=mnt: run("umount", "-l", mnt, check=False))
        fd = os.open(mnt + "/victim", os.O_CREAT | os.O_RDWR, 0o644)
        if kind == "ramfs":
            os.write(fd, b"data\n")
        os.unlink(mnt + "/victim")
        dir_fd = os.open(mnt, os.O_PATH | os.O_DIRECTORY)
        st = os.fstat(fd)
        res[kind] = {
            "by_fd": refusal(lambda: abi.relink_by_fd(fd, dir_fd, "restored")),
            "by_inode": refusal(lambda: abi.relink_by_inode(st.st_dev, st.st_ino, dir_fd, "restored")),
            "listing_unchanged": listing(mnt) == [],
            "still_deleted": os.fstat(fd).st_nlink,
        }
        os.close(dir_fd)
        os.close(fd)
        run("umount", mnt)
    return res


def scenario_tmpfile(kind):
    """O_TMPFILE | O_EXCL: the kernel promises such a file never gets a name
    (vfs_tmpfile() leaves I_LINKABLE off), so frelink refuses it (ENOLINK)
    by fd and by (dev, ino), changing nothing; an ordinary deleted file on
    the same filesystem is still relinked.  A plain O_TMPFILE is linked as
    linkat() links it; one that was linked and deleted again while its first
    descriptor is open is refused as well (the kernel keeps no record of
    O_EXCL but the missing I_LINKABLE, which the link cleared too)."""
    fs = Fs("tmpfile-" + kind, kind)
    res = {}
    os.mkdir(fs.mnt + "/dir")
    dir_fd = fs.open_dir(fs.mnt + "/dir")

    def proc_link(fd, name):
        rc = LIBC.linkat(AT_FDCWD, ("/proc/self/fd/%d" % fd).encode(), AT_FDCWD,
                         ("%s/dir/%s" % (fs.mnt, name)).encode(), AT_SYMLINK_FOLLOW)
        return name_of(ctypes.get_errno()) if rc else "OK"

    excl = os.open(fs.mnt + "/dir", os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    os.write(excl, b"never to be linked\n")
    st = os.fstat(excl)
    res["excl_nlink"] = st.st_nlink
    res["excl_linkat"] = proc_link(excl, "try")
    src_fd = os.open("/proc/self/fd/%d" % excl, os.O_RDONLY)
    res["excl_by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "excl"))
    res["excl_by_own_fd"] = refusal(lambda: abi.relink_by_fd(excl, dir_fd, "excl"))
    res["excl_by_inode"] = refusal(lambda: abi.relink_by_inode(st.st_dev, st.st_ino, dir_fd, "excl"))
    os.close(src_fd)
    res["excl_nlink_after"] = os.fstat(excl).st_nlink
    res["excl_linkat_after"] = proc_link(excl, "try")
    res["listing_after_excl"] = listing(fs.mnt + "/dir")

    # an ordinary deleted file beside it is relinked, both forms
    holder, unused = deleted_file(fs.mnt + "/dir/victim", b"ordinary\n")
    src_fd = os.open(holder.proc_path, os.O_RDONLY)
    res["ordinary_by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "ordinary"))
    os.close(src_fd)
    holder.stop()
    holder, unused = deleted_file(fs.mnt + "/dir/victim2", b"ordinary 2\n")
    st2 = os.stat(holder.proc_path)
    res["ordinary_by_inode"] = refusal(lambda: abi.relink_by_inode(st2.st_dev, st2.st_ino, dir_fd, "ordinary2"))
    holder.stop()

    # a plain O_TMPFILE carries I_LINKABLE: linked like linkat() links it
    plain = os.open(fs.mnt + "/dir", os.O_TMPFILE | os.O_RDWR, 0o600)
    os.write(plain, b"linkable\n")
    res["plain_by_fd"] = refusal(lambda: abi.relink_by_fd(plain, dir_fd, "plain"))
    res["plain_nlink"] = os.fstat(plain).st_nlink
    res["plain_same_inode"] = same_file(os.stat(fs.mnt + "/dir/plain"), os.fstat(plain))
    # linked by its holder and deleted again: O_EXCL or not, the kernel cannot tell
    again = os.open(fs.mnt + "/dir", os.O_TMPFILE | os.O_RDWR, 0o600)
    res["again_linkat"] = proc_link(again, "again")
    os.unlink(fs.mnt + "/dir/again")
    res["again_by_fd"] = refusal(lambda: abi.relink_by_fd(again, dir_fd, "again"))
    res["again_nlink"] = os.fstat(again).st_nlink

    res["listing"] = listing(fs.mnt + "/dir")
    for fd in (excl, plain, again):
        os.close(fd)
    if kind != "tmpfs":
        os.sync()
        fs.umount()
        res["fsck"] = fs.fsck()
    fs.destroy()
    return res


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def scenario_protected_hardlinks():
    """may_linkat() with fs.protected_hardlinks = 1: another user's file that
    the caller may not read and write is linked only with CAP_FOWNER.  Files
    of the user "tester" (mode 0644), two of them held read-only by a tester
    process and deleted; a root caller without CAP_FOWNER, CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH (still CAP_SYS_ADMIN) gets EPERM from linkat() of
    the live one, and from frelink of the deleted ones, both forms; root with
    CAP_FOWNER relinks them."""
    import pwd  # pylint: disable=import-outside-toplevel
    tester = pwd.getpwnam("tester")
    sysctl = "/proc/sys/fs/protected_hardlinks"
    with open(sysctl) as f:
        before = f.read().strip()

    def set_sysctl(value):
        with open(sysctl, "w") as f:
            f.write(value)

    CLEANUP.append(lambda: set_sysctl(before))
    set_sysctl("1")
    fs = Fs("protected", "ext4")
    res = {"sysctl_before": before}
    directory = fs.mnt + "/dir"
    os.mkdir(directory)
    os.chmod(directory, 0o777)
    dir_fd = fs.open_dir(directory)
    for name in ("live", "victim", "victim2"):
        write_file(directory + "/" + name, b"tester's file\n")
        os.chown(directory + "/" + name, tester.pw_uid, tester.pw_gid)
    ready_r, ready_w = os.pipe()
    quit_r, quit_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(tester.pw_gid)
            os.setuid(tester.pw_uid)
            fds = [os.open(directory + "/" + name, os.O_RDONLY) for name in ("victim", "victim2")]
            os.write(ready_w, json.dumps(fds).encode())
            os.read(quit_r, 1)
        finally:
            os._exit(0)  # pylint: disable=protected-access
    CLEANUP.append(lambda: kill(pid))
    fds = json.loads(os.read(ready_r, 64).decode())
    paths = ["/proc/%d/fd/%d" % (pid, fd) for fd in fds]
    os.unlink(directory + "/victim")
    os.unlink(directory + "/victim2")

    def restricted():
        for cap in (CAP_FOWNER, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            capset_without(cap)
        out = {}
        rc = LIBC.linkat(AT_FDCWD, (directory + "/live").encode(), AT_FDCWD, (directory + "/live-link").encode(), 0)
        out["linkat_live"] = name_of(ctypes.get_errno()) if rc else "OK"
        src_fd = os.open(paths[0], os.O_RDONLY)
        out["by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
        st = os.stat(paths[1])
        out["by_inode"] = refusal(lambda: abi.relink_by_inode(st.st_dev, st.st_ino, dir_fd, "restored2"))
        return out

    res["without_fowner"] = in_child(restricted)
    res["nlink_after_refusals"] = [os.stat(p).st_nlink for p in paths]
    res["listing_after_refusals"] = listing(directory)
    src_fd = os.open(paths[0], os.O_RDONLY)
    res["root_by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
    os.close(src_fd)
    st = os.stat(paths[1])
    res["root_by_inode"] = refusal(lambda: abi.relink_by_inode(st.st_dev, st.st_ino, dir_fd, "restored2"))
    os.write(quit_w, b"q")
    os.waitpid(pid, 0)
    res["listing"] = listing(directory)
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def scenario_ro_source():
    """A file seen only through a read-only bind mount does not gain a name
    through a writable mount of the same filesystem; through a writable
    mount it does."""
    fs = Fs("rosrc", "ext4")
    res = {}
    os.mkdir(fs.mnt + "/dir")
    write_file(fs.mnt + "/dir/victim", b"seen read-only\n")
    ro_mnt = "/mnt/frelink-rosrc-ro"
    os.makedirs(ro_mnt, exist_ok=True)
    run("mount", "--bind", fs.mnt, ro_mnt)
    CLEANUP.append(lambda: run("umount", "-l", ro_mnt, check=False))
    run("mount", "-o", "remount,bind,ro", ro_mnt)
    holder = ReadHolder(ro_mnt + "/dir/victim")
    os.unlink(fs.mnt + "/dir/victim")
    dir_fd = fs.open_dir(fs.mnt + "/dir")
    before = listing(fs.mnt + "/dir")
    src_fd = os.open(holder.proc_path, os.O_PATH)
    res["by_fd_through_ro_bind"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
    res["listing_unchanged"] = listing(fs.mnt + "/dir") == before
    res["still_deleted"] = os.fstat(src_fd).st_nlink
    os.close(src_fd)
    # the same kind of file held through the writable mount: relinked
    holder2, unused = deleted_file(fs.mnt + "/dir/victim2", b"seen read-write\n")
    src2 = os.open(holder2.proc_path, os.O_PATH)
    res["by_fd_through_rw_mount"] = refusal(lambda: abi.relink_by_fd(src2, dir_fd, "restored2"))
    os.close(src2)
    holder.stop()
    holder2.stop()
    run("umount", ro_mnt)
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def scenario_readonly_source():
    """RELINK asks no write access to the file, as linkat() does not
    (do_linkat(): may_linkat() and vfs_link()'s may_create() on the
    directory only).  Root-owned files of mode 0444, two held and deleted; a
    root caller without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER
    (still the owner, still CAP_SYS_ADMIN) cannot open them for writing,
    linkat() links the live one, and the deleted ones relink by an O_RDONLY
    and by an O_PATH descriptor."""
    res = {}
    fs = Fs("readonly", "ext4")
    directory = fs.mnt + "/dir"
    os.mkdir(directory)
    dir_fd = fs.open_dir(directory)
    for name in ("live", "victim", "victim2"):
        write_file(directory + "/" + name, b"read-only file\n", mode=0o444)
    holders = [Holder(directory + "/" + name) for name in ("victim", "victim2")]
    for holder in holders:
        CLEANUP.append(holder.stop)
    os.unlink(directory + "/victim")
    os.unlink(directory + "/victim2")

    def without_dac():
        for cap in (CAP_FOWNER, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            capset_without(cap)
        out = {"open_for_write": refusal(lambda: os.close(os.open(holders[0].proc_path, os.O_WRONLY)))}
        rc = LIBC.linkat(AT_FDCWD, (directory + "/live").encode(), AT_FDCWD, (directory + "/live-link").encode(), 0)
        out["linkat_live"] = name_of(ctypes.get_errno()) if rc else "OK"
        rdonly = os.open(holders[0].proc_path, os.O_RDONLY)
        out["by_fd_rdonly"] = refusal(lambda: abi.relink_by_fd(rdonly, dir_fd, "restored"))
        opath = os.open(holders[1].proc_path, os.O_PATH)
        out["by_fd_o_path"] = refusal(lambda: abi.relink_by_fd(opath, dir_fd, "restored2"))
        return out

    res["without_dac"] = in_child(without_dac)
    res["listing"] = listing(directory)
    res["nlink"] = [os.stat(h.proc_path).st_nlink for h in holders]
    for holder in holders:
        holder.stop()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def in_thread(call, timeout=60):
    """refusal(call) in a thread: its result, or "BLOCKED" if it has not
    returned after timeout seconds (it is then left to finish on its own)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(refusal(call)), daemon=True)
    thread.start()
    return thread, lambda: (thread.join(timeout), out[0] if out else "BLOCKED")[1]


def scenario_freeze(kind):
    """fsfreeze: a relink on a frozen filesystem is refused at once with EBUSY
    (both forms) while the filesystem stays frozen, changes nothing, and does
    not stall a relink on another filesystem meanwhile; after the thaw the
    same inode relinks and fsck is clean."""
    fs = Fs("freeze-" + kind, kind)
    other = Fs("freeze-other", "tmpfs")
    res = {}
    os.mkdir(fs.mnt + "/dir")
    dir_fd = fs.open_dir(fs.mnt + "/dir")
    data = seeded_bytes(5, 128 << 10)
    holder, unused = deleted_file(fs.mnt + "/dir/victim", data)
    other_holder, unused = deleted_file(other.mnt + "/victim", b"other filesystem\n")
    other_dir = other.open_dir(other.mnt)
    src_fd = os.open(holder.proc_path, os.O_PATH)
    other_src = os.open(other_holder.proc_path, os.O_PATH)
    src = os.fstat(src_fd)
    before = listing(fs.mnt + "/dir")
    run("fsfreeze", "--freeze", fs.mnt)
    thawed = []

    def thaw():
        if not thawed:
            run("fsfreeze", "--unfreeze", fs.mnt, check=False)
            thawed.append(True)
    CLEANUP.append(thaw)
    unused, frozen_by_fd = in_thread(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
    unused, frozen_by_inode = in_thread(lambda: abi.relink_by_inode(src.st_dev, src.st_ino, dir_fd, "restored"))
    unused, other_by_fd = in_thread(lambda: abi.relink_by_fd(other_src, other_dir, "restored"))
    # all three return before the thaw below
    res["frozen_by_fd"], res["frozen_by_inode"] = frozen_by_fd(), frozen_by_inode()
    res["other_fs_while_frozen"] = other_by_fd()
    res["still_deleted"] = os.fstat(src_fd).st_nlink
    thaw()
    res["listing_unchanged"] = listing(fs.mnt + "/dir") == before
    res["after_thaw_by_fd"] = refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, "restored"))
    res["content_equal"] = sha(fs.mnt + "/dir/restored") == hashlib.sha256(data).hexdigest()
    os.close(src_fd)
    os.close(other_src)
    holder.stop()
    other_holder.stop()
    os.sync()
    fs.umount()
    res["fsck"] = fs.fsck()
    fs.destroy()
    other.destroy()
    return res


def scenario_log_escape():
    """The name is logged escaped: a newline in it cannot forge a log line."""
    fs = Fs("logesc", "tmpfs")
    holder, unused = deleted_file(fs.mnt + "/victim", b"x\n")
    src_fd = os.open(holder.proc_path, os.O_PATH)
    dir_fd = fs.open_dir(fs.mnt)
    name = "evil\nfrelink: pid 1 relinked inode 1 of forged as x"
    res = {"by_fd": refusal(lambda: abi.relink_by_fd(src_fd, dir_fd, name))}
    os.close(src_fd)
    dmesg = run("dmesg").stdout
    res["escaped_in_log"] = "as evil\\nfrelink: pid 1 relinked" in dmesg
    res["forged_lines"] = [line for line in dmesg.splitlines() if "of forged as x" in line and "evil" not in line]
    holder.stop()
    fs.destroy()
    return res


def scenario_race(kind, rounds, locked_rounds):
    """frelink by fd against the holder's own linkat("/proc/self/fd/N",
    AT_SYMLINK_FOLLOW), two threads released together, `rounds` times into
    a writable directory and `locked_rounds` times into an immutable one
    (frelink then fails in vfs_link(), after its link count check)."""
    fs = Fs("race-" + kind, kind)
    for sub in ("src", "dst", "mine", "locked"):
        os.mkdir(fs.mnt + "/" + sub)
    dst_fd = fs.open_dir(fs.mnt + "/dst")
    locked_fd = fs.open_dir(fs.mnt + "/locked")
    flag_fd = os.open(fs.mnt + "/locked", os.O_RDONLY | os.O_DIRECTORY)
    flags = struct.unpack("l", fcntl.ioctl(flag_fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
    fcntl.ioctl(flag_fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_IMMUTABLE_FL))
    dev_fd = os.open(abi.DEVICE_PATH, os.O_RDWR)
    start, done = threading.Barrier(3), threading.Barrier(3)
    job = {"stop": False}

    def frelink_thread():
        while True:
            start.wait()
            if job["stop"]:
                return
            rc = LIBC.ioctl(dev_fd, abi.IOC_RELINK, ctypes.addressof(job["request"]))
            job["frelink"] = name_of(ctypes.get_errno()) if rc else "OK"
            done.wait()

    def linkat_thread():
        while True:
            start.wait()
            if job["stop"]:
                return
            rc = LIBC.linkat(AT_FDCWD, job["proc"], AT_FDCWD, job["mine"], AT_SYMLINK_FOLLOW)
            job["linkat"] = name_of(ctypes.get_errno()) if rc else "OK"
            done.wait()

    threads = [threading.Thread(target=t, daemon=True) for t in (frelink_thread, linkat_thread)]
    for thread in threads:
        thread.start()
    outcomes = collections.Counter()
    violations = []
    started = time.monotonic()
    try:
        for i in range(rounds + locked_rounds):
            locked = i >= rounds
            name = "f%d" % i
            path = fs.mnt + "/src/" + name
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            os.write(fd, b"%d\n" % i)
            os.unlink(path)
            request = abi.pack_request(abi.BY_FD, src_fd=fd, dir_fd=locked_fd if locked else dst_fd,
                                       name=name.encode())
            job.update(request=ctypes.create_string_buffer(request, len(request)),
                       proc=b"/proc/self/fd/%d" % fd, mine=(fs.mnt + "/mine/" + name).encode())
            start.wait()
            done.wait()
            nlink = os.fstat(fd).st_nlink
            names = [d for d in ("dst", "mine", "locked") if os.path.lexists("%s/%s/%s" % (fs.mnt, d, name))]
            mode = "locked" if locked else "open"
            outcomes["%s:frelink=%s,linkat=%s,nlink=%d" % (mode, job["frelink"], job["linkat"], nlink)] += 1
            if locked:
                # nobody may give a deleted file a name while frelink fails
                good = job["frelink"] == "EPERM" and job["linkat"] == "ENOENT" and nlink == 0 and not names
            else:
                # frelink always makes the first name; linkat can only link
                # a file that has one again (then it has two, legitimately)
                good = (job["frelink"] == "OK" and job["linkat"] in ("OK", "ENOENT")
                        and nlink == 1 + (job["linkat"] == "OK") and len(names) == nlink
                        and "dst" in names)
            if not good and len(violations) < 20:
                violations.append("round %d: frelink %s linkat %s nlink %d names %s" % (
                    i, job["frelink"], job["linkat"], nlink, names))
            for d in names:
                os.unlink("%s/%s/%s" % (fs.mnt, d, name))
            os.close(fd)
    finally:
        job["stop"] = True
        try:
            start.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        start.abort()
        done.abort()
        for thread in threads:
            thread.join(timeout=30)
        os.close(dev_fd)
    seconds = time.monotonic() - started
    fcntl.ioctl(flag_fd, FS_IOC_SETFLAGS, struct.pack("l", flags))
    os.close(flag_fd)
    res = {"rounds": rounds, "locked_rounds": locked_rounds, "outcomes": dict(outcomes),
           "violations": violations, "race_seconds": round(seconds, 1),
           "leftover": listing(fs.mnt + "/dst") + listing(fs.mnt + "/mine") + listing(fs.mnt + "/src")}
    if kind != "tmpfs":
        os.sync()
        fs.umount()
        res["fsck"] = fs.fsck()
    fs.destroy()
    return res


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", nargs="+")
    parser.add_argument("--stress", type=int, default=240)
    parser.add_argument("--fuzz", type=int, default=3000)
    parser.add_argument("--hostile", type=int, default=10000)
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    results = {}
    for scenario in args.scenarios:
        started = time.monotonic()
        try:
            if scenario.startswith("relink:"):
                results[scenario] = scenario_relink(scenario.split(":", 1)[1])
            elif scenario.startswith("stress:"):
                kind, cycles = (scenario.split(":", 2)[1:] + [""])[:2]
                results[scenario] = scenario_stress(kind, int(cycles or args.stress))
            elif scenario.startswith("freeze:"):
                results[scenario] = scenario_freeze(scenario.split(":", 1)[1])
            elif scenario.startswith("held_overlay:"):
                results[scenario] = scenario_held_overlay(scenario.split(":", 1)[1])
            elif scenario.startswith("overlay:"):
                results[scenario] = scenario_overlay(scenario.split(":", 1)[1])
            elif scenario.startswith("tmpfile:"):
                results[scenario] = scenario_tmpfile(scenario.split(":", 1)[1])
            elif scenario.startswith("race:"):
                kind, rounds, locked = scenario.split(":")[1:]
                results[scenario] = scenario_race(kind, int(rounds), int(locked))
            elif scenario == "fuzz":
                results[scenario] = scenario_fuzz(args.fuzz)
            elif scenario == "hostile":
                results[scenario] = scenario_hostile(args.hostile)
            else:
                results[scenario] = globals()["scenario_" + scenario]()
        except Exception:  # pylint: disable=broad-except
            results[scenario] = {"exception": traceback.format_exc()}
        finally:
            while CLEANUP:
                try:
                    CLEANUP.pop()()
                except Exception:  # pylint: disable=broad-except
                    pass
        results[scenario]["seconds"] = round(time.monotonic() - started, 1)
    json.dump(results, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
