# -*- coding: utf-8 -*-
"""Real orphans on this host, for tests: deleted-but-held files of every kind.

Every helper is a context manager that creates the real thing (a holder process,
a loop device, a mount), yields a `Held` namespace describing it, and removes
everything on exit, also when the test fails.  Needs root for loop/mount.

Import from a test under tests/host (pytest puts that directory on sys.path):

    from orphans import deleted_open_file, loop_image
    with deleted_open_file(tmp_path, size=8192) as held:
        held.pid, held.fd, held.path, held.dev, held.ino, held.proc_path

Elsewhere: sys.path.insert(0, "<repo>/tests/host").  `collection_path()` puts the
collection on sys.path so `from ansible_collections.frelink.frelink.plugins.module_utils
import scan` works.

Helpers:
- deleted_open_file(directory, size=4096, writer=False, name=..., recreate=False, mode=0o640)
- mapped_only_file(directory, size=8192)       (mmap, fd closed, file deleted)
- deleted_cwd(directory), deleted_root(directory), deleted_exe(directory)
- loop_image(directory, size_mb=16, mkfs="ext4", mount=True, offset=0, hold_fd=False)
- decoys(directory)                            (memfd, O_TMPFILE, SysV shm, shared anon map,
                                                socket, pipe, live 'x (deleted)' file: not orphans)
- holder(code)                                 (a python process running code, for custom cases)
- container_cgroup(runtime="docker")           (a cgroup v2 named as that runtime names a container's; .holder(code)
                                                runs holder(code) in its own mount namespace inside it: the
                                                facts then give its holders that container)
"""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def collection_path():
    """Make `ansible_collections.frelink.frelink` importable (the link scripts/bootstrap.sh makes)."""
    collections = REPO / ".build" / "collections"
    link = collections / "ansible_collections" / "frelink" / "frelink"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO)
    if str(collections) not in sys.path:
        sys.path.insert(0, str(collections))
    return collections


def facts_bench():
    """bench/facts/run.py loaded as a module (the benchmark's workload, floors and scoring)."""
    collection_path()
    sys.path.insert(0, str(REPO / "bench" / "facts"))
    spec = importlib.util.spec_from_file_location("facts_bench_run", REPO / "bench" / "facts" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_root():
    """Fail (not skip) with a clear message when the test cannot create loop devices/mounts."""
    if os.geteuid() != 0:
        raise AssertionError("this test needs root (loop devices, mounts, /proc/PID/map_files); run make test as root")
    if not os.path.exists("/dev/loop-control"):
        raise AssertionError("this test needs loop devices: /dev/loop-control is missing (modprobe loop)")


# The holder runs `code` with `out` (a dict) in scope; it prints `out` as JSON
# when ready, then sleeps until its stdin closes or it is killed.
_HOLDER = r"""
import json, os, sys, mmap, socket
out = {}
%s
sys.stdout.write(json.dumps(out) + "\n")
sys.stdout.flush()
sys.stdin.read()
"""


@contextlib.contextmanager
def holder(code, argv=None, user=None, env=None):
    """A process that runs `code` (python, fills dict `out`) and then holds on.

    Yields (Popen, out).  argv replaces the interpreter command (e.g. ["unshare", "-m", PYTHON]).
    """
    cmd = (argv or [PYTHON]) + ["-c", _HOLDER % code]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            user=user, env=env, start_new_session=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("holder failed: %s" % proc.stderr.read().decode(errors="replace"))
        yield proc, json.loads(line)
    finally:
        _stop(proc)


# cgroup v2 directory names of a container's processes, as plugins/module_utils/_frelink/containers.py reads them
_RUNTIME_SCOPES = {"docker": "docker-%s.scope", "podman": "libpod-%s.scope", "cri-o": "crio-%s.scope",
                   "containerd": "cri-containerd-%s.scope"}


def _cgroup2_mount():
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4].replace("\\040", " ")
    raise AssertionError("this test needs a cgroup v2 hierarchy (none in /proc/self/mountinfo)")


@contextlib.contextmanager
def container_cgroup(runtime="docker"):
    """What the scan sees of a container, without a container runtime: a cgroup v2 directory named
    as RUNTIME names a container's (<mount>/frelink-test-<pid>-<n>/docker-<id>.scope, a random id).

    Yields a namespace: runtime, id, short_id, path, and holder(code), a context manager that runs
    holder(code) under `unshare -m` (a container has its own mount namespace, and the scan reads
    /proc/PID/cgroup only then) and moves it into the cgroup before yielding (Popen, out).
    The processes are stopped and the cgroups removed on exit.
    """
    require_root()
    cid = os.urandom(32).hex()
    parent = Path(_cgroup2_mount()) / ("frelink-test-%d-%s" % (os.getpid(), cid[:6]))
    path = parent / (_RUNTIME_SCOPES[runtime] % cid)
    path.mkdir(parents=True)

    @contextlib.contextmanager
    def contained(code):
        with holder(code, argv=["unshare", "-m", PYTHON]) as (proc, out):
            (path / "cgroup.procs").write_text("%d\n" % proc.pid)
            yield proc, out

    try:
        yield types.SimpleNamespace(runtime=runtime, id=cid, short_id=cid[:12], path=str(path), holder=contained)
    finally:
        for directory in (path, parent):
            deadline = time.monotonic() + 10
            while True:
                try:
                    directory.rmdir()
                    break
                except OSError:  # EBUSY until the last process of the cgroup is gone
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def deleted_open_file(directory, size=4096, writer=False, name="orphan.dat", recreate=False, mode=0o640):
    """A file of `size` bytes, opened by a holder (for write when writer, else read), then deleted.

    With recreate, a new file is created at the same path afterwards (held.recreated_ino).
    Yields Held: pid, fd, path, dev, ino, size, blocks, mode, proc_path, writer, pos.
    """
    path = Path(directory) / name
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    os.chmod(path, mode)
    st = os.stat(path)
    flags = "os.O_RDWR" if writer else "os.O_RDONLY"
    code = "fd = os.open(%r, %s); os.lseek(fd, %d, 0); out['fd'] = fd" % (str(path), flags, size // 2)
    with holder(code) as (proc, out):
        os.unlink(path)
        held = types.SimpleNamespace(
            pid=proc.pid, fd=out["fd"], path=str(path), dev=st.st_dev, ino=st.st_ino, size=size,
            blocks=os.stat("/proc/%d/fd/%d" % (proc.pid, out["fd"])).st_blocks, mode=mode,
            proc_path="/proc/%d/fd/%d" % (proc.pid, out["fd"]), writer=writer, pos=size // 2,
            recreated_ino=None, proc=proc)
        if recreate:
            path.write_text("new file at the old path\n")
            held.recreated_ino = os.stat(path).st_ino
        try:
            yield held
        finally:
            if recreate:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


@contextlib.contextmanager
def mapped_only_file(directory, size=8192, name="mapped.dat"):
    """A file mapped (MAP_SHARED, read) by a holder that closed its fd; then deleted.

    Yields Held: pid, path, dev, ino, size, range ('start-end' as in maps, lower-case hex).
    """
    path = Path(directory) / name
    path.write_bytes(b"m" * size)
    st = os.stat(path)
    # libc mmap: Python's mmap.mmap keeps a dup of the fd, which would make it fd-held.
    code = ("import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.mmap.restype = ctypes.c_void_p\n"
            "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,"
            " ctypes.c_long]\n"
            "fd = os.open(%r, os.O_RDONLY)\n"
            "addr = libc.mmap(None, %d, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)\n"
            "assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()\n"
            "os.close(fd)\n"
            "out['addr'] = addr" % (str(path), size))
    with holder(code) as (proc, _out):
        os.unlink(path)
        ranges = []
        with open("/proc/%d/maps" % proc.pid) as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and int(fields[4]) == st.st_ino and fields[5] == str(path):
                    ranges.append(fields[0])
        assert ranges, "the holder's mapping of %s is missing from its maps" % path
        yield types.SimpleNamespace(pid=proc.pid, path=str(path), dev=st.st_dev, ino=st.st_ino, size=size,
                                    range=ranges[0], ranges=ranges, proc=proc)


def _held_deleted_dir(directory, name, holder_code):
    path = Path(directory) / name
    path.mkdir()
    st = os.stat(path)
    with holder(holder_code % str(path)) as (proc, _out):
        path.rmdir()
        yield types.SimpleNamespace(pid=proc.pid, path=str(path), dev=st.st_dev, ino=st.st_ino, proc=proc)


@contextlib.contextmanager
def deleted_cwd(directory, name="gone-cwd"):
    """A holder whose current directory was removed.  Yields Held: pid, path, dev, ino."""
    yield from _held_deleted_dir(directory, name, "os.chdir(%r)")


@contextlib.contextmanager
def deleted_root(directory, name="gone-root"):
    """A holder chrooted into a directory that was then removed (cwd and root hold it)."""
    # import what the holder needs after chroot before it chroots
    yield from _held_deleted_dir(directory, name, "import json\nos.chdir(%r); os.chroot('.')")


@contextlib.contextmanager
def deleted_exe(directory, name="sleeper"):
    """A copy of sleep(1) that runs after its file was deleted.  Yields Held: pid, path, dev, ino, size."""
    path = Path(directory) / name
    shutil.copy2(shutil.which("sleep"), path)
    st = os.stat(path)
    proc = subprocess.Popen([str(path), "3600"], start_new_session=True)
    try:
        # execve() sets exe before it maps the binary: wait for both
        _wait_for(lambda: os.readlink("/proc/%d/exe" % proc.pid) == str(path)
                  and str(path) in _read_text("/proc/%d/maps" % proc.pid))
        os.unlink(path)
        yield types.SimpleNamespace(pid=proc.pid, path=str(path), dev=st.st_dev, ino=st.st_ino,
                                    size=st.st_size, proc=proc)
    finally:
        _stop(proc)


def _read_text(path):
    with open(path) as f:
        return f.read()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %r" % predicate)
        time.sleep(0.01)


def _run(argv):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True).stdout


@contextlib.contextmanager
def loop_image(directory, size_mb=16, mkfs="ext4", mount=True, offset=0, sizelimit=0, hold_fd=False,
               name="disk.img"):
    """An image file attached to a loop device (optionally formatted and mounted), then deleted.

    Yields Held: path, dev, ino, size, device (/dev/loopN), mount_point (or None), offset,
    sizelimit, and pid/fd when hold_fd (a holder keeps an fd on the image too).
    Cleanup: umount, losetup -d, kill the holder.
    """
    require_root()
    path = Path(directory) / name
    with open(path, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    st = os.stat(path)
    argv = ["losetup", "--find", "--show"]
    if offset:
        argv += ["--offset", str(offset)]
    if sizelimit:
        argv += ["--sizelimit", str(sizelimit)]
    device = _run(argv + [str(path)]).strip()
    mount_point = None
    stack = contextlib.ExitStack()
    try:
        stack.callback(subprocess.run, ["losetup", "-d", device], check=False)
        if mkfs:
            _run(["mkfs." + mkfs, "-q", device] if mkfs.startswith("ext") else ["mkfs." + mkfs, device])
        if mount:
            mount_point = Path(directory) / (name + ".mnt")
            mount_point.mkdir()
            _run(["mount", device, str(mount_point)])
            stack.callback(subprocess.run, ["umount", "-l", str(mount_point)], check=False)
        held = types.SimpleNamespace(path=str(path), dev=st.st_dev, ino=st.st_ino, size=st.st_size,
                                     device=device, mount_point=str(mount_point) if mount_point else None,
                                     offset=offset, sizelimit=sizelimit, pid=None, fd=None)
        if hold_fd:
            proc, out = stack.enter_context(holder("out['fd'] = os.open(%r, os.O_RDONLY)" % str(path)))
            held.pid, held.fd = proc.pid, out["fd"]
        os.unlink(path)
        yield held
    finally:
        stack.close()


@contextlib.contextmanager
def decoys(directory):
    """One holder with things that look deleted but never had a name, or are not deleted:

    memfd, O_TMPFILE file, SysV shm segment (attached), shared anonymous mapping,
    socket, pipe, and a live file literally named 'live (deleted)'.
    Yields Held: pid, live_path (+ its ino), tmpfile_ino, memfd_ino.
    """
    directory = Path(directory)
    live = directory / "live (deleted)"
    live.write_text("I am not deleted\n")
    code = r"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
out['memfd'] = os.memfd_create('frelink-decoy')
os.write(out['memfd'], b'x' * 4096)
out['memfd_ino'] = os.fstat(out['memfd']).st_ino
out['tmpfile'] = os.open(%(dir)r, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(out['tmpfile'], b'y' * 4096)
out['tmpfile_ino'] = os.fstat(out['tmpfile']).st_ino
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
shmid = libc.shmget(0, 65536, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
assert shmid >= 0, ctypes.get_errno()
assert libc.shmat(shmid, None, 0) not in (None, ctypes.c_void_p(-1).value)
libc.shmctl(shmid, 0, None)  # IPC_RMID: gone when detached
anon = mmap.mmap(-1, 65536, flags=mmap.MAP_SHARED)
anon[0:1] = b'z'
sock = socket.socket()
out['socket'] = sock.fileno()
out['pipe'] = os.pipe()
out['live'] = os.open(%(live)r, os.O_RDONLY)
""" % {"dir": str(directory), "live": str(live)}
    with holder(code) as (proc, out):
        yield types.SimpleNamespace(pid=proc.pid, live_path=str(live), live_ino=os.stat(live).st_ino,
                                    memfd_ino=out["memfd_ino"], tmpfile_ino=out["tmpfile_ino"],
                                    fds=out, proc=proc)
