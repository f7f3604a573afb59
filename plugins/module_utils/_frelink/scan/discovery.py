# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Discovery: find deleted-but-held inodes ("orphans") by reading /proc and /sys.

Standard library only, no subprocess.  Scanner.collect() makes one pass over
/proc/PID (fd, maps, cwd, root, exe), the bound loop devices, the swaps and the
mounts of every mount namespace (mount_holders.py);
select() filters and orders what it found.  Nothing here formats results:
that is enrich.py's job.

How it stays fast and safe: every /proc/PID/fd entry is read with readlinkat
on a directory fd; only links ending in ' (deleted)' are stat()ed, and only a
stat() with st_nlink == 0 makes an orphan (a live file may be named 'x (deleted)').
/proc/PID/maps is read whole and parsed only if it contains ' (deleted)'.
Nothing else is statted, so a dead NFS mount cannot block the scan unless an
orphan candidate lives on it (see docs/facts.md).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import errno
import fnmatch
import gc
import operator
import os
import re

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.kernel_holders import scan_loops, scan_swaps
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.kernel_scan import collect_from_kernel, kinds_mask
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.mount_holders import scan_mounts
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import (
    MountTable,
    parse_mountinfo,
    read_all,
    read_text,
)
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.procfs import DELETED_SUFFIX, parse_deleted_mappings

KINDS = ("fd", "mmap", "cwd", "root", "exe", "loop", "swap", "mount")
PROCESS_KINDS = ("fd", "mmap", "cwd", "root", "exe")
# How processes are inspected: "kernel" asks the frelink module (kernel_scan.py), "proc"
# reads /proc; "auto" asks the module when it is loaded and can list, else reads /proc.
BACKENDS = ("auto", "kernel", "proc")

_SUFFIX_LEN = len(DELETED_SUFFIX)
# fs/nfs/unlink.c: an NFS client renames a file removed while open to
# ".nfs" + 16 hex digits of the fileid + 8 of a counter, and removes it at the last close.
SILLY_RENAME = re.compile(r"/\.nfs[0-9a-f]{24}$")
NFS_FSTYPES = frozenset(("nfs", "nfs4"))
_PATH = operator.attrgetter("path")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Names the kernel gives files it creates on its internal mounts (never linked anywhere).
_INTERNAL_NAME_PREFIXES = ("memfd:", "SYSV", "[aio]", "drm mm object", "dev/zero")


_KERNEL_LISTING_HINTS = {
    errno.ENOENT: "/dev/frelink does not exist: the frelink module is not loaded; install and load it with "
                  "the frelink.frelink.frelink_kmod role, or use backend=auto",
    errno.ENOTTY: "the loaded frelink module is older and cannot list held files; update it with the "
                  "frelink.frelink.frelink_kmod role, or use backend=auto",
    errno.EPERM: "listing held files needs CAP_SYS_ADMIN and CAP_SYS_PTRACE: run as root (become: true)",
    errno.EACCES: "/dev/frelink is not accessible: run as root (become: true)",
}


def internal_shm_dev():
    """st_dev of the kernel's internal shmem mount (memfd, SysV shm, shared anonymous maps), or None."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is None:
        return None
    try:
        fd = memfd_create("frelink-probe", getattr(os, "MFD_CLOEXEC", 1))
    except OSError:
        return None
    try:
        return os.fstat(fd).st_dev
    finally:
        os.close(fd)


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for a block that makes tens of thousands of
    objects and no garbage (a scan): its passes over them cost a quarter of the scan."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Orphan:
    """One deleted inode and what holds it (raw, before enrichment)."""

    __slots__ = ("key", "dev", "ino", "st", "path", "holders", "mmap_pids", "size_hint", "silly_renamed",
                 "generation")

    def __init__(self, key, dev, ino, st, path):
        self.key = key
        self.dev = dev
        self.ino = ino
        self.st = st  # os.stat_result from a /proc handle or a mount point, None for loop/swap-only orphans
        self.path = path
        self.holders = []  # tuples (kind, pid or None, detail); kept minimal, enriched when listed
        self.mmap_pids = None  # pid -> [first range, number of mappings]
        self.size_hint = 0
        self.silly_renamed = False  # NFS: still named .nfsXXXX (st_nlink 1), gone at its last close
        self.generation = None  # loop backing file: i_generation from the module (FRELINK_IOC_IDENTIFY)

    @property
    def kinds(self):
        return {holder[0] for holder in self.holders}

    @property
    def size(self):
        return self.st.st_size if self.st is not None else None

    @property
    def allocated(self):
        return self.st.st_blocks * 512 if self.st is not None else None


class KernelListingError(OSError):
    """backend=kernel, and the frelink module cannot list (not loaded, too old, no privilege)."""


class Scanner:
    """One pass over processes, loop devices, swaps and mounts: collect(), then select()."""

    def __init__(self, kinds=None, proc="/proc", sys_block="/sys/block", backend="auto"):
        self.kinds = frozenset(kinds or KINDS)
        unknown = self.kinds - frozenset(KINDS)
        if unknown:
            raise ValueError("unknown kinds %s; choose from %s" % (", ".join(sorted(unknown)), ", ".join(KINDS)))
        if backend not in BACKENDS:
            raise ValueError("unknown backend %s; choose from %s" % (backend, ", ".join(BACKENDS)))
        self.backend = backend
        self.backend_used = None
        self.fd_state = {}  # (pid, fd) -> (open flags, position), when the kernel listed them
        self.proc = proc
        self.sys_block = sys_block
        self._proc_fd = None
        self.orphans = {}
        self.warnings = []
        self.complete = True
        self.processes = 0
        self.fds = 0
        self.denied_pids = []
        self.unconfirmed_mappings = 0
        self._maps_seen = {}  # (maps_dev, ino) -> orphan key, or None when not an orphan
        self.shm_dev = internal_shm_dev()
        self.mounts = MountTable(parse_mountinfo(read_text(proc + "/self/mountinfo")))
        self.mounted_devs = set(self.mounts.devices())
        self.nfs_devs = frozenset(m["dev"] for m in self.mounts.mounts if m["fstype"] in NFS_FSTYPES)
        self.self_mntns = readlink_or_none(proc + "/self/ns/mnt")
        self.euid = os.geteuid()

    # -- discovery -------------------------------------------------------

    def collect(self):
        with collector_paused():
            return self._collect()

    def _collect(self):
        process_kinds = self.kinds.intersection(PROCESS_KINDS)
        if process_kinds and self.backend != "proc" and self._collect_from_kernel(process_kinds):
            self.backend_used = "kernel"
        elif process_kinds:
            self.backend_used = "proc"
            self._collect_from_proc()
        if "loop" in self.kinds:
            scan_loops(self)
        if "swap" in self.kinds:
            scan_swaps(self)
        if "mount" in self.kinds:
            scan_mounts(self)
        if self.denied_pids:
            shown = ", ".join(self.denied_pids[:10]) + (", ..." if len(self.denied_pids) > 10 else "")
            if self.euid == 0:
                hint = "they are protected even from root (LSM policy, or another user namespace)"
            else:
                hint = "run as root (become: true) for a complete scan"
            self.partial("%d of %d processes could not be inspected (permission denied; pids %s): %s"
                         % (len(self.denied_pids), self.processes, shown, hint))
        if self.unconfirmed_mappings:
            self.partial("%d deleted-looking mappings could not be confirmed: /proc/PID/map_files needs "
                         "CAP_SYS_ADMIN; run as root (become: true)" % self.unconfirmed_mappings)
        return self

    def _collect_from_kernel(self, process_kinds):
        """True when the frelink module listed the processes' handles; False (auto) to read /proc."""
        try:
            collect_from_kernel(self, kinds_mask(process_kinds))
        except OSError as exc:
            if self.backend == "kernel":
                raise KernelListingError(exc.errno, _KERNEL_LISTING_HINTS.get(
                    exc.errno, "the frelink module could not list held files: %s" % exc.strerror))
            return False
        return True

    def _collect_from_proc(self):
        proc_fd = self._proc_fd = os.open(self.proc, _DIR_FLAGS)
        try:
            for pid in [name for name in os.listdir(proc_fd) if name.isdigit()]:
                self.apply_process(self._read_process(proc_fd, pid))
        finally:
            self._proc_fd = None
            os.close(proc_fd)

    def is_silly_rename(self, path):
        return SILLY_RENAME.search(path) is not None

    def new_orphan(self, key, dev, ino, st, path):
        orphan = self.orphans[key] = Orphan(key, dev, ino, st, path)
        return orphan

    def partial(self, message):
        self.complete = False
        self.warnings.append(message)

    def is_nameless(self, path, st):
        """True for files that never had a name: memfd, SysV shm, shared anonymous maps, O_TMPFILE."""
        if st.st_dev == self.shm_dev:
            return True
        head, _sep, base = path.rpartition("/")
        if base[:1] == "#" and base == "#%d" % st.st_ino:
            return True  # O_TMPFILE: the kernel names it '#<ino>'
        if st.st_dev not in self.mounted_devs and path.startswith("/") and \
                path[1:].startswith(_INTERNAL_NAME_PREFIXES) and (head in ("", "/dev")):
            return True  # kernel-internal mount (hugetlbfs memfd, aio ring, drm): not in mountinfo
        return False

    def _add(self, st, path, holder):
        key = (st.st_dev, st.st_ino)
        orphan = self.orphans.get(key)
        if orphan is None:
            orphan = self.orphans[key] = Orphan(key, st.st_dev, st.st_ino, st, path)
        elif orphan.st is None:
            orphan.st = st
        orphan.holders.append(holder)
        return orphan

    def _read_process(self, proc_fd, pid):
        """The system calls for one process (nothing shared is changed; _apply merges).

        Returns (pid, links, fd_count, fd_hits, maps, denied): links and fd_hits are the
        (kind or fd, stat_result, target) of deleted-looking handles whose stat has
        st_nlink == 0; maps is the /proc/PID/maps text when it has a deleted mapping.
        """
        kinds = self.kinds
        readlink = os.readlink
        has_mm = True
        denied = False
        links = []
        fd_count = 0
        fd_hits = []
        maps = None
        for kind in ("exe", "cwd", "root"):
            if kind != "exe" and kind not in kinds:
                continue
            link = pid + "/" + kind
            try:
                target = readlink(link, dir_fd=proc_fd)
            except FileNotFoundError:
                if kind == "exe":
                    has_mm = False  # kernel thread or zombie: no mm, no maps
                continue
            except ProcessLookupError:
                return pid, links, fd_count, fd_hits, maps, denied
            except PermissionError:
                denied = True
                continue
            except OSError:
                continue
            if kind in kinds and target.endswith(DELETED_SUFFIX) and target.startswith("/"):
                try:
                    st = os.stat(link, dir_fd=proc_fd)
                except OSError:
                    continue
                if st.st_nlink == 0:
                    links.append((kind, st, target))

        if "fd" in kinds:
            try:
                dfd = os.open(pid + "/fd", _DIR_FLAGS, dir_fd=proc_fd)
            except (FileNotFoundError, ProcessLookupError):
                return pid, links, fd_count, fd_hits, maps, denied
            except PermissionError:
                dfd = None
                denied = True
            if dfd is not None:
                try:
                    fd_count = self._read_fds(dfd, fd_hits)
                finally:
                    os.close(dfd)

        if "mmap" in kinds and has_mm:
            try:
                mfd = os.open(pid + "/maps", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
            except (FileNotFoundError, ProcessLookupError):
                return pid, links, fd_count, fd_hits, maps, denied
            except PermissionError:
                mfd = None
                denied = True
            if mfd is not None:
                try:
                    data = read_all(mfd)
                except OSError:
                    data = b""
                finally:
                    os.close(mfd)
                if b" (deleted)\n" in data:
                    maps = data
        return pid, links, fd_count, fd_hits, maps, denied

    def _read_fds(self, dfd, hits):
        """Read every fd link of one process; stat those ending in ' (deleted)' (and, with an NFS
        mount, those named like an NFS silly rename).  Returns the fd count."""
        readlink = os.readlink
        nfs = bool(self.nfs_devs)
        try:
            names = os.listdir(dfd)
        except OSError:
            return 0
        try:
            candidates = [(name, target) for name in names
                          if (target := readlink(name, dir_fd=dfd)).endswith(DELETED_SUFFIX)
                          or (nfs and "/.nfs" in target)]
        except OSError:  # an fd closed meanwhile: redo this process one link at a time
            candidates = []
            for name in names:
                try:
                    target = readlink(name, dir_fd=dfd)
                except OSError:
                    continue
                if target.endswith(DELETED_SUFFIX) or (nfs and "/.nfs" in target):
                    candidates.append((name, target))
        stat_at = os.stat
        fd_hit = self.fd_hit
        for name, target in candidates:
            if target[0] != "/":
                continue
            try:
                st = stat_at(name, dir_fd=dfd)
            except OSError:
                continue
            if fd_hit(st, target):
                hits.append((name, st, target))
        return len(names)

    # -- the rules for one handle, the same for both backends ------------------

    def fd_hit(self, st, target):
        """A descriptor's file, statted and read as TARGET, is held deleted (st_nlink 0, not on
        the internal shmem mount) or, on NFS, silly-renamed (st_nlink 1, named .nfsXXXX)."""
        if not target.endswith(DELETED_SUFFIX):
            return bool(st.st_nlink and st.st_dev in self.nfs_devs and SILLY_RENAME.search(target))
        return not st.st_nlink and st.st_dev != self.shm_dev

    def add_link(self, kind, pid, st, target):
        """exe, cwd or root whose TARGET ends in ' (deleted)' and whose st_nlink is 0."""
        path = target[:-_SUFFIX_LEN]
        if not self.is_nameless(path, st):
            self._add(st, path, (kind, pid, None))

    def add_fd(self, pid, name, st, target):
        """A descriptor for which fd_hit() is true."""
        key = (st.st_dev, st.st_ino)
        orphan = self.orphans.get(key)
        if orphan is None:
            silly = not target.endswith(DELETED_SUFFIX)
            path = target if silly else target[:-_SUFFIX_LEN]
            if not silly and self.is_nameless(path, st):
                return
            orphan = self.orphans[key] = Orphan(key, key[0], key[1], st, path)
            orphan.silly_renamed = silly
        orphan.holders.append(("fd", pid, name))

    def mapping_orphan(self, st, path):
        """The orphan of a mapped file (statted through map_files; PATH without ' (deleted)'),
        made if new, or None when the file is not deleted or never had a name."""
        if st.st_nlink != 0 or self.is_nameless(path, st):
            return None
        key = (st.st_dev, st.st_ino)
        orphan = self.orphans.get(key)
        if orphan is None:
            orphan = self.orphans[key] = Orphan(key, key[0], key[1], st, path)
        return orphan

    @staticmethod
    def add_mapping(orphan, pid, rng):
        """The first mapping of ORPHAN in process PID; later ones only count (mmap_pids)."""
        if orphan.mmap_pids is None:
            orphan.mmap_pids = {}
        orphan.mmap_pids[pid] = [rng, 1]
        orphan.holders.append(("mmap", pid, rng))

    def apply_process(self, record):
        """Merge what _read_process found for one process."""
        pid, links, fd_count, fd_hits, maps, denied = record
        self.processes += 1
        self.fds += fd_count
        for kind, st, target in links:
            self.add_link(kind, pid, st, target)
        for name, st, target in fd_hits:
            self.add_fd(pid, name, st, target)
        if maps is not None:
            self._scan_mappings(self._proc_fd, pid, maps)
        if denied:
            self.denied_pids.append(pid)

    def _scan_mappings(self, proc_fd, pid, data):
        seen_here = {}
        for rng, _perms, _offset, maps_dev, ino, path in parse_deleted_mappings(data):
            if maps_dev == self.shm_dev:
                continue  # SysV shm, memfd, MAP_SHARED|MAP_ANONYMOUS
            mkey = (maps_dev, ino)
            if mkey in seen_here:
                orphan = seen_here[mkey]
                if orphan is not None:
                    orphan.mmap_pids[pid][1] += 1
                continue
            if mkey in self._maps_seen:
                okey = self._maps_seen[mkey]
                orphan = self.orphans.get(okey) if okey is not None else None
            else:
                try:
                    st = os.stat(pid + "/map_files/" + rng, dir_fd=proc_fd)
                except PermissionError:
                    self.unconfirmed_mappings += 1
                    seen_here[mkey] = None
                    continue
                except OSError:
                    seen_here[mkey] = None
                    continue
                orphan = self.mapping_orphan(st, path)
                self._maps_seen[mkey] = orphan.key if orphan is not None else None
            seen_here[mkey] = orphan
            if orphan is not None:
                self.add_mapping(orphan, pid, rng)

    # -- selection ---------------------------------------------------------

    def select(self, include=None, exclude=None, min_size=0):
        """The orphans that pass the filters, largest allocated first (then by path)."""
        selected = self.orphans.values()
        if include or exclude or min_size:
            selected = [orphan for orphan in selected if _passes(orphan, include, exclude, min_size)]
        # two stable sorts on keys of one type each: Python compares those fastest
        selected = sorted(selected, key=_PATH)
        selected.sort(key=_largest_first)
        return selected


def _largest_first(orphan):
    st = orphan.st
    return -(st.st_blocks * 512) if st is not None else -orphan.size_hint


def _passes(orphan, include, exclude, min_size):
    path = orphan.path
    if include and not any(fnmatch.fnmatchcase(path, pattern) for pattern in include):
        return False
    if exclude and any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude):
        return False
    if min_size:
        size = orphan.size if orphan.size is not None else orphan.size_hint
        if size < min_size:
            return False
    return True


def readlink_or_none(path):
    try:
        return os.readlink(path)
    except OSError:
        return None
