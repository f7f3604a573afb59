# -*- coding: utf-8 -*-
"""A large population of real orphans for the frelink_facts benchmark.

Workload(procs, fds) forks `procs` children from this process; each holds
`fds` descriptors: a quarter are its own files, created and deleted; the rest
are live files, a pipe and a socket pair.  Every `mapped_every`-th child also
maps a deleted file and closes its fd (mapped-only), every `decoy_every`-th
child holds decoys that look deleted but are not orphans (memfd, O_TMPFILE, a
live file named 'x (deleted)').  `loops` deleted images stay attached to loop
devices.  The ground truth (dev, ino) and paths of every orphan is recorded.
Everything is removed on exit (children get EOF on a gate pipe, then SIGKILL).
"""

import ctypes
import mmap
import os
import shutil
import signal
import socket
import subprocess
import tempfile

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]


def _close_fds_except(keep):
    """A forked child holds only what the workload gives it, not whatever its parent
    (a pytest worker, say) had open: those would be orphans the truth does not list."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:  # the directory's own fd, closed by the time we get there
                pass


class Workload:
    def __init__(self, procs, fds, deleted_fraction=0.25, mapped_every=8, decoy_every=50, loops=0,
                 base_dir="/var/tmp", inherited=False):
        self.procs, self.fds = procs, fds
        # inherited: the deleted files are opened once by the parent and inherited by
        # every child (forked workers sharing deleted logs) instead of one set per child
        self.inherited = inherited
        self._inherited_fds = []
        self.deleted_per_proc = max(1, int(fds * deleted_fraction))
        self.mapped_every, self.decoy_every, self.loops = mapped_every, decoy_every, loops
        self.base_dir = base_dir
        self.pids = []
        self.truth = {}  # (dev, ino) -> (kind, path)
        self.loop_devices = []
        self.workdir = None

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self):
        self.workdir = tempfile.mkdtemp(prefix="frelink-bench-", dir=self.base_dir)
        live = []
        for k in range(8):
            path = os.path.join(self.workdir, "live-%d" % k)
            with open(path, "wb") as f:
                f.write(b"live\n")
            live.append(path)
        for k in range(self.loops):
            self._attach_loop(k)
        if self.inherited:
            for j in range(self.deleted_per_proc):
                path = os.path.join(self.workdir, "shared-%d" % j)
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                os.write(fd, b"x")
                st = os.fstat(fd)
                os.unlink(path)
                self._inherited_fds.append(fd)
                self.truth[(st.st_dev, st.st_ino)] = ("fd", path)
        report_r, report_w = os.pipe()
        gate_r, self._gate_w = os.pipe()
        for i in range(self.procs):
            pid = os.fork()
            if pid == 0:  # child: never return into the caller's code
                status = 0
                try:
                    os.close(report_r)
                    os.close(self._gate_w)
                    _close_fds_except({0, 1, 2, report_w, gate_r, *self._inherited_fds})
                    self._child(i, live, report_w)
                    os.close(report_w)
                    os.read(gate_r, 1)
                except BaseException:  # pylint: disable=broad-except
                    status = 1
                os._exit(status)
            self.pids.append(pid)
        os.close(report_w)
        os.close(gate_r)
        for fd in self._inherited_fds:  # only the children hold them now
            os.close(fd)
        self._inherited_fds = []
        with os.fdopen(report_r, "r") as reports:
            for line in reports:
                kind, dev, ino, path = line.rstrip("\n").split("\t")
                self.truth[(int(dev), int(ino))] = (kind, path)
        own = 0 if self.inherited else self.procs * self.deleted_per_proc
        expected = own + (self.deleted_per_proc if self.inherited else 0) \
            + len(range(0, self.procs, self.mapped_every)) + self.loops
        if len(self.truth) != expected:
            raise RuntimeError("workload incomplete: %d of %d orphans reported" % (len(self.truth), expected))

    def _attach_loop(self, k):
        path = os.path.join(self.workdir, "image-%d.img" % k)
        with open(path, "wb") as f:
            f.truncate(8 << 20)
        st = os.stat(path)
        device = subprocess.run(["losetup", "--find", "--show", path], check=True, stdout=subprocess.PIPE,
                                text=True).stdout.strip()
        self.loop_devices.append(device)
        os.unlink(path)
        self.truth[(st.st_dev, st.st_ino)] = ("loop", path)

    def _child(self, i, live, report_w):
        lines = []
        opened = len(self._inherited_fds)
        for j in range(0 if self.inherited else self.deleted_per_proc):
            path = os.path.join(self.workdir, "p%d-%d" % (i, j))
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.write(fd, b"x")
            st = os.fstat(fd)
            os.unlink(path)
            lines.append("fd\t%d\t%d\t%s\n" % (st.st_dev, st.st_ino, path))
            opened += 1
        if i % self.mapped_every == 0:
            path = os.path.join(self.workdir, "m%d.so" % i)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.write(fd, b"m" * 4096)
            st = os.fstat(fd)
            addr = _LIBC.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), "mmap")
            os.close(fd)
            os.unlink(path)
            lines.append("mmap\t%d\t%d\t%s\n" % (st.st_dev, st.st_ino, path))
        if i % self.decoy_every == 0:
            os.memfd_create("bench-decoy")
            os.open(self.workdir, os.O_TMPFILE | os.O_RDWR, 0o600)
            named = os.path.join(self.workdir, "d%d (deleted)" % i)
            os.close(os.open(named, os.O_CREAT | os.O_RDWR, 0o600))
            os.open(named, os.O_RDONLY)
            opened += 3
        os.pipe()
        self._sockets = socket.socketpair()  # kept referenced: they must stay open
        opened += 4
        for k in range(max(0, self.fds - opened - 3)):
            os.open(live[k % len(live)], os.O_RDONLY)
        for line in lines:
            os.write(report_w, line.encode())

    def __exit__(self, *exc):
        if getattr(self, "_gate_w", None) is not None:
            os.close(self._gate_w)
            self._gate_w = None
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []
        for device in self.loop_devices:
            subprocess.run(["losetup", "-d", device], check=False)
        self.loop_devices = []
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return False
