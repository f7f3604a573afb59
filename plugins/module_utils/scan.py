# -*- coding: utf-8 -*-
# Copyright: (c) frelink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find deleted-but-held files ("orphans"): inodes with st_nlink == 0 that a process
(fd, mapping, cwd, root, exe), a loop device or a swap area still holds.

Standard library only, no subprocess.  Public API:

- scan(include=None, exclude=None, min_size=0, kinds=None, limit=1000) -> facts dict
  {"summary": {...}, "orphans": [...], "scan": {"complete": bool, "warnings": [...]}}
- find_orphan(dev, ino, kinds=None) -> orphan entry or None
- resolve_selector(selector) -> list of orphan entries (selector: /proc/PID/fd/N,
  /proc/PID/map_files/A-B, /proc/PID/exe|cwd|root, /dev/loopN, an original path, or 'dev:ino')

How it stays fast and safe: every /proc/PID/fd entry is read with readlinkat
on a directory fd; only links ending in ' (deleted)' are stat()ed, and only a
stat() with st_nlink == 0 makes an orphan (a live file may be named 'x (deleted)').
/proc/PID/maps is read whole and parsed only if it contains ' (deleted)'.
Nothing else is statted, so a dead NFS mount cannot block the scan unless an
orphan candidate lives on it (see docs/facts.md).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fnmatch
import grp
import os
import pwd
import stat

from ansible_collections.frelink.frelink.plugins.module_utils.mounts import (
    ANON_DEV_FSTYPES,
    MountTable,
    device_string,
    longest_prefix_mount,
    parse_device_string,
    parse_mountinfo,
    parse_swaps,
    read_all,
    read_text,
)
from ansible_collections.frelink.frelink.plugins.module_utils.loop import bound_loops, loop_status
from ansible_collections.frelink.frelink.plugins.module_utils.procfs import (
    access_mode,
    parse_deleted_mappings,
    parse_fdinfo,
)

try:
    from ansible_collections.frelink.frelink.plugins.module_utils import kmod_abi
except ImportError:  # pragma: no cover - kmod_abi ships with the collection
    kmod_abi = None

KINDS = ("fd", "mmap", "cwd", "root", "exe", "loop", "swap")
PROCESS_KINDS = ("fd", "mmap", "cwd", "root", "exe")
DEFAULT_LIMIT = 1000
HOLDERS_CAP = 16  # holders listed per orphan; holder_count has the total

# Filesystems with ->link and ->tmpfile, which the frelink kernel module needs.
RELINK_FSTYPES = frozenset(("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "ubifs", "bcachefs"))
# Filesystems where FICLONE can share extents (xfs only when made with reflink=1).
REFLINK_FSTYPES = frozenset(("btrfs", "xfs", "ocfs2", "bcachefs"))

SUFFIX = " (deleted)"
_SUFFIX_LEN = len(SUFFIX)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Names the kernel gives files it creates on its internal mounts (never linked anywhere).
_INTERNAL_NAME_PREFIXES = ("memfd:", "SYSV", "[aio]", "drm mm object", "dev/zero")

_TYPES = (
    (stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
    (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"), (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
)


def file_type(mode):
    for test, name in _TYPES:
        if test(mode):
            return name
    return "unknown"


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


class Orphan:
    """One deleted inode and what holds it (raw, before enrichment)."""

    __slots__ = ("key", "dev", "ino", "st", "path", "holders", "mmap_pids", "size_hint")

    def __init__(self, key, dev, ino, st, path):
        self.key = key
        self.dev = dev
        self.ino = ino
        self.st = st  # os.stat_result from a /proc handle, None for loop/swap-only orphans
        self.path = path
        self.holders = []  # tuples (kind, pid or None, detail); kept minimal, enriched when listed
        self.mmap_pids = None  # pid -> [first range, number of mappings]
        self.size_hint = 0

    @property
    def kinds(self):
        return {holder[0] for holder in self.holders}

    @property
    def size(self):
        return self.st.st_size if self.st is not None else None

    @property
    def allocated(self):
        return self.st.st_blocks * 512 if self.st is not None else None


class Scanner:
    """One pass over /proc, loop devices and swaps.  Use collect(), then entries()."""

    def __init__(self, kinds=None, proc="/proc", sys_block="/sys/block"):
        self.kinds = frozenset(kinds or KINDS)
        unknown = self.kinds - frozenset(KINDS)
        if unknown:
            raise ValueError("unknown kinds %s; choose from %s" % (", ".join(sorted(unknown)), ", ".join(KINDS)))
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
        self._procinfo = {}
        self._tables = {}
        self._statvfs = {}
        self.shm_dev = internal_shm_dev()
        self.mounts = MountTable(parse_mountinfo(read_text(proc + "/self/mountinfo")))
        self.mounted_devs = set(self.mounts.devices())
        self.self_mntns = _readlink_or_none(proc + "/self/ns/mnt")
        self.euid = os.geteuid()

    # -- discovery -------------------------------------------------------

    def collect(self):
        proc_fd = self._proc_fd = os.open(self.proc, _DIR_FLAGS)
        try:
            pids = [name for name in os.listdir(proc_fd) if name.isdigit()]
            if self.kinds.intersection(PROCESS_KINDS):
                for pid in pids:
                    self._apply(self._read_process(proc_fd, pid))
        finally:
            self._proc_fd = None
            os.close(proc_fd)
        if "loop" in self.kinds:
            self._scan_loops()
        if "swap" in self.kinds:
            self._scan_swaps()
        if self.denied_pids:
            shown = ", ".join(self.denied_pids[:10]) + (", ..." if len(self.denied_pids) > 10 else "")
            if self.euid == 0:
                hint = "they are protected even from root (LSM policy, or another user namespace)"
            else:
                hint = "run as root (become: true) for a complete scan"
            self._partial("%d of %d processes could not be inspected (permission denied; pids %s): %s"
                          % (len(self.denied_pids), self.processes, shown, hint))
        if self.unconfirmed_mappings:
            self._partial("%d deleted-looking mappings could not be confirmed: /proc/PID/map_files needs "
                          "CAP_SYS_ADMIN; run as root (become: true)" % self.unconfirmed_mappings)
        return self

    def _partial(self, message):
        self.complete = False
        self.warnings.append(message)

    def _nameless(self, path, st):
        """True for files that never had a name: memfd, SysV shm, shared anonymous maps, O_TMPFILE."""
        if st.st_dev == self.shm_dev:
            return True
        head, _sep, base = path.rpartition("/")
        if base == "#%d" % st.st_ino:
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
            if kind in kinds and target.endswith(SUFFIX) and target.startswith("/"):
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
        """Read every fd link of one process; stat those ending in ' (deleted)'.  Returns the fd count."""
        readlink = os.readlink
        try:
            names = os.listdir(dfd)
        except OSError:
            return 0
        try:
            candidates = [(name, target) for name in names
                          if (target := readlink(name, dir_fd=dfd)).endswith(SUFFIX)]
        except OSError:  # an fd closed meanwhile: redo this process one link at a time
            candidates = []
            for name in names:
                try:
                    target = readlink(name, dir_fd=dfd)
                except OSError:
                    continue
                if target.endswith(SUFFIX):
                    candidates.append((name, target))
        shm_dev = self.shm_dev
        stat_at = os.stat
        for name, target in candidates:
            if target[0] != "/":
                continue
            try:
                st = stat_at(name, dir_fd=dfd)
            except OSError:
                continue
            if st.st_nlink or st.st_dev == shm_dev:
                continue
            hits.append((name, st, target))
        return len(names)

    def _apply(self, record):
        """Merge what _read_process found for one process."""
        pid, links, fd_count, fd_hits, maps, denied = record
        self.processes += 1
        self.fds += fd_count
        for kind, st, target in links:
            path = target[:-_SUFFIX_LEN]
            if not self._nameless(path, st):
                self._add(st, path, (kind, pid, None))
        orphans = self.orphans
        for name, st, target in fd_hits:
            key = (st.st_dev, st.st_ino)
            orphan = orphans.get(key)
            if orphan is None:
                path = target[:-_SUFFIX_LEN]
                if self._nameless(path, st):
                    continue
                orphan = orphans[key] = Orphan(key, key[0], key[1], st, path)
            orphan.holders.append(("fd", pid, name))
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
                if st.st_nlink != 0 or self._nameless(path, st):
                    self._maps_seen[mkey] = None
                    orphan = None
                else:
                    orphan = self.orphans.get((st.st_dev, st.st_ino))
                    if orphan is None:
                        orphan = self.orphans[(st.st_dev, st.st_ino)] = Orphan(
                            (st.st_dev, st.st_ino), st.st_dev, st.st_ino, st, path)
                    self._maps_seen[mkey] = orphan.key
            seen_here[mkey] = orphan
            if orphan is not None:
                if orphan.mmap_pids is None:
                    orphan.mmap_pids = {}
                orphan.mmap_pids[pid] = [rng, 1]
                orphan.holders.append(("mmap", pid, rng))

    def _scan_loops(self):
        for loop in bound_loops(self.sys_block):
            text = loop["backing_file"]
            if not text.endswith(SUFFIX):
                continue
            try:
                status = loop_status(loop["device"])
            except PermissionError:
                self._partial("%s: cannot read its backing inode (LOOP_GET_STATUS64 needs read access to the "
                              "device); run as root (become: true)" % loop["device"])
                continue
            except OSError as exc:
                self.warnings.append("%s: LOOP_GET_STATUS64 failed: %s" % (loop["device"], exc.strerror))
                continue
            dev, ino = status["backing_dev"], status["backing_ino"]
            try:
                st = os.stat(text)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    continue  # a live file whose name really ends in ' (deleted)'
            except OSError:
                pass
            mounts = sorted(m["mount_point"] for m in self.mounts.mounts if m["dev"] in loop["devs"])
            detail = {
                "device": loop["device"],
                "offset": status["offset"],
                "sizelimit": status["sizelimit"],
                "read_only": status["read_only"],
                "autoclear": status["autoclear"],
                "mounts": mounts,
            }
            key = (dev, ino)
            orphan = self.orphans.get(key)
            if orphan is None:
                orphan = self.orphans[key] = Orphan(key, dev, ino, None, text[:-_SUFFIX_LEN])
            orphan.holders.append(("loop", None, detail))
            try:
                device_bytes = int(read_text("%s/%s/size" % (self.sys_block, loop["name"]))) * 512
                orphan.size_hint = max(orphan.size_hint, device_bytes + status["offset"])
            except (OSError, ValueError):
                pass

    def _scan_swaps(self):
        try:
            swaps = parse_swaps(read_text(self.proc + "/swaps"))
        except OSError:
            return
        for swap in swaps:
            text = swap["path"]
            if swap["type"] != "file" or not text.endswith(SUFFIX) or os.path.lexists(text):
                continue
            path = text[:-_SUFFIX_LEN]
            mount = longest_prefix_mount(self.mounts.mounts, path)
            dev = mount["dev"] if mount else None
            # /proc/swaps gives no inode: if a process holds a deleted file of that
            # path on that filesystem, it is the swap file (same name, same device).
            orphan = next((o for o in self.orphans.values() if o.path == path and o.st is not None
                           and stat.S_ISREG(o.st.st_mode)
                           and (dev is None or o.dev == dev or mount["fstype"] in ANON_DEV_FSTYPES)), None)
            if orphan is None:
                key = ("swap", path)
                orphan = self.orphans.get(key)
                if orphan is None:
                    orphan = self.orphans[key] = Orphan(key, dev, None, None, path)
            detail = {"size": swap["size"], "used": swap["used"], "priority": swap["priority"]}
            orphan.holders.append(("swap", None, detail))
            orphan.size_hint = max(orphan.size_hint, swap["size"])

    # -- selection and enrichment -----------------------------------------

    def select(self, include=None, exclude=None, min_size=0):
        selected = []
        for orphan in self.orphans.values():
            path = orphan.path
            if include and not any(fnmatch.fnmatchcase(path, pattern) for pattern in include):
                continue
            if exclude and any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude):
                continue
            if min_size:
                size = orphan.size if orphan.size is not None else orphan.size_hint
                if size < min_size:
                    continue
            selected.append(orphan)
        selected.sort(key=_largest_first)
        return selected

    def summary(self, selected, listed):
        by_kind = dict((kind, 0) for kind in KINDS)
        by_fs = {}
        pinned = 0
        apparent = 0
        mapped_only = 0
        for orphan in selected:
            holders = orphan.holders
            if len(holders) == 1:
                kind = holders[0][0]
                by_kind[kind] += 1
                if kind == "mmap":
                    mapped_only += 1
            else:
                kinds = orphan.kinds
                for kind in kinds:
                    by_kind[kind] += 1
                if kinds == {"mmap"}:
                    mapped_only += 1
            st = orphan.st
            allocated = st.st_blocks * 512 if st is not None else 0
            pinned += allocated
            apparent += st.st_size if st is not None else 0
            fs = by_fs.get(orphan.dev)
            if fs is None:
                mount = self.mounts.lookup(orphan.dev) if orphan.dev is not None else None
                prefix = ""
                if mount is None:  # only mounted in a holder's namespace (or a swap path)
                    mount, prefix = self._mount_for(orphan)
                mount_point = mount["mount_point"] if mount else None
                fs = by_fs[orphan.dev] = {
                    "device": device_string(orphan.dev) if orphan.dev is not None else None,
                    "mount_point": mount_point,
                    "fstype": mount["fstype"] if mount else None,
                    "count": 0,
                    "bytes_pinned": 0,
                    "free_bytes": self._free_bytes(prefix + mount_point) if mount_point else None,
                }
            fs["count"] += 1
            fs["bytes_pinned"] += allocated
        return {
            "count": len(selected),
            "listed": listed,
            "truncated": listed < len(selected),
            "bytes_pinned": pinned,
            "bytes_apparent": apparent,
            "by_kind": by_kind,
            "mapped_only": mapped_only,
            "by_filesystem": sorted(by_fs.values(), key=lambda fs: -fs["bytes_pinned"]),
        }

    def _process(self, pid):
        info = self._procinfo.get(pid)
        if info is None:
            base = "%s/%s" % (self.proc, pid)
            try:
                name = _read_small(base + "/comm").rstrip("\n")
            except OSError:
                name = None
            try:
                uid = os.stat(base).st_uid
                user = _user_name(uid)
            except OSError:
                user = None
            mntns = _readlink_or_none(base + "/ns/mnt")
            # /proc links are resolved against the scanner's root, so a chroot in our
            # namespace shows host paths; only another mount namespace shows its own paths.
            foreign = mntns is not None and mntns != self.self_mntns
            info = self._procinfo[pid] = {
                "name": name,
                "user": user,
                "mntns": mntns if mntns != self.self_mntns else None,
                "prefix": "%s/%s/root" % (self.proc, pid) if foreign else "",
            }
        return info

    def _table_for(self, pid):
        """Mount table of the holder's namespace (own table when it shares ours)."""
        if pid is None:
            return self.mounts, ""
        info = self._process(pid)
        prefix = info["prefix"]
        if not prefix:
            return self.mounts, ""
        table = self._tables.get(pid)
        if table is None:
            try:
                mounts = parse_mountinfo(read_text("%s/%s/mountinfo" % (self.proc, pid)))
            except OSError:
                mounts = []
            table = self._tables[pid] = MountTable(mounts, prefix)
        return table, prefix

    def _free_bytes(self, where):
        if where not in self._statvfs:
            try:
                vfs = os.statvfs(where)
                self._statvfs[where] = vfs.f_bavail * vfs.f_frsize
            except OSError:
                self._statvfs[where] = None
        return self._statvfs[where]

    def _holder(self, holder, orphan):
        kind, pid, detail = holder
        if pid is None:
            entry = {"kind": kind}
            entry.update(detail)
            return entry
        info = self._process(pid)
        entry = {"kind": kind, "pid": int(pid), "name": info["name"], "user": info["user"]}
        if kind == "fd":
            entry["fd"] = int(detail)
            try:
                fdinfo = parse_fdinfo(_read_small("%s/%s/fdinfo/%s" % (self.proc, pid, detail)))
                entry["mode"] = access_mode(fdinfo.get("flags", 0))
                entry["pos"] = fdinfo.get("pos")
            except OSError:
                entry["mode"] = entry["pos"] = None
        elif kind == "mmap":
            entry["range"] = detail
            entry["mappings"] = (orphan.mmap_pids or {}).get(pid, [detail, 1])[1]
        if info["prefix"]:
            entry["mntns"] = info["mntns"]
            entry["host_path"] = info["prefix"] + orphan.path
        return entry

    def _mount_for(self, orphan):
        """(mount, prefix) of the orphan's filesystem, seen from a holder (our own namespace preferred)."""
        ref_pid = None
        for _kind, pid, _detail in orphan.holders:
            if pid is not None:
                if ref_pid is None or not self._process(pid)["prefix"]:
                    ref_pid = pid
                if not self._process(pid)["prefix"]:
                    break
        table, prefix = self._table_for(ref_pid)
        mount = table.lookup(orphan.dev, orphan.path) if orphan.dev is not None else None
        if mount is None and orphan.dev is None:
            mount = longest_prefix_mount(table.mounts, orphan.path)
        return mount, prefix

    def entry(self, orphan, relink_available):
        st = orphan.st
        holders = orphan.holders
        mount, prefix = self._mount_for(orphan)
        ftype = file_type(st.st_mode) if st is not None else (
            "file" if {"loop", "swap"} & orphan.kinds else "unknown")
        try:
            os.lstat(prefix + orphan.path)
            path_free = False
        except (FileNotFoundError, NotADirectoryError):
            path_free = True
        except OSError:
            path_free = None
        fstype = mount["fstype"] if mount else None
        mount_point = mount["mount_point"] if mount else None
        open_path = _open_path(self.proc, holders)
        size = st.st_size if st is not None else None
        is_file = ftype == "file"
        entry = {
            "dev": orphan.dev,
            "device": device_string(orphan.dev) if orphan.dev is not None else None,
            "ino": orphan.ino,
            "path": orphan.path,
            "type": ftype,
            "size": size,
            "allocated": orphan.allocated,
            "mode": "%04o" % stat.S_IMODE(st.st_mode) if st is not None else None,
            "uid": st.st_uid if st is not None else None,
            "owner": _user_name(st.st_uid) if st is not None else None,
            "gid": st.st_gid if st is not None else None,
            "group": _group_name(st.st_gid) if st is not None else None,
            "mtime": st.st_mtime if st is not None else None,
            "fstype": fstype,
            "mount_point": mount_point,
            "path_free": path_free,
            "open_path": open_path,
            "holders": [self._holder(h, orphan) for h in holders[:HOLDERS_CAP]],
            # A copy needs `size` bytes; the free space is per filesystem, in summary.by_filesystem.
            "restore": {
                "relink": bool(relink_available and is_file and fstype in RELINK_FSTYPES and orphan.ino is not None),
                "reflink": bool(is_file and fstype in REFLINK_FSTYPES and open_path is not None),
            },
        }
        # Lean payload (Ansible's cost grows with every value it returns): the
        # defaults confirmed=true and holder_count=len(holders) are left out.
        if st is None:
            entry["confirmed"] = False
        if len(holders) > HOLDERS_CAP:
            entry["holder_count"] = len(holders)
        return entry


def _largest_first(orphan):
    st = orphan.st
    return (-(st.st_blocks * 512 if st is not None else orphan.size_hint), orphan.path)


def _read_small(path):
    """A short /proc file (comm, fdinfo of a file) in one read: they are generated whole on the first read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def _open_path(proc, holders):
    """Best /proc path to open the inode through: fd, then exe, mapping, cwd, root; None for loop/swap only."""
    best = None
    rank = {"fd": 0, "exe": 1, "mmap": 2, "cwd": 3, "root": 4}
    for kind, pid, detail in holders:
        if pid is None:
            continue
        if best is None or rank[kind] < rank[best[0]]:
            best = (kind, pid, detail)
            if kind == "fd":
                break
    if best is None:
        return None
    kind, pid, detail = best
    if kind == "fd":
        return "%s/%s/fd/%s" % (proc, pid, detail)
    if kind == "mmap":
        return "%s/%s/map_files/%s" % (proc, pid, detail)
    return "%s/%s/%s" % (proc, pid, kind)


def _readlink_or_none(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


_USERS = {}
_GROUPS = {}


def _user_name(uid):
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = str(uid)
    return _USERS[uid]


def _group_name(gid):
    if gid not in _GROUPS:
        try:
            _GROUPS[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            _GROUPS[gid] = str(gid)
    return _GROUPS[gid]


def _relink_available():
    if kmod_abi is None:
        return False
    try:
        return bool(kmod_abi.module_loaded())
    except Exception:  # pylint: disable=broad-except
        return False


def _facts(scanner, selected, limit):
    listed = selected if limit is None else selected[:limit]
    relink = _relink_available()
    return {
        "summary": scanner.summary(selected, len(listed)),
        "orphans": [scanner.entry(orphan, relink) for orphan in listed],
        "scan": {
            "complete": scanner.complete,
            "warnings": scanner.warnings,
            "processes": scanner.processes,
            "fds": scanner.fds,
            "kinds": sorted(scanner.kinds, key=KINDS.index),
            "euid": scanner.euid,
        },
    }


def scan(include=None, exclude=None, min_size=0, kinds=None, limit=DEFAULT_LIMIT):
    """Scan the host and return the facts dict (see docs/facts.md and the module's RETURN).

    include/exclude: fnmatch globs on the original path ('*' also matches '/').
    min_size: bytes.  kinds: subset of KINDS to look for.  limit: max orphans listed,
    largest allocated first (None or 0 for all); the summary counts all that match.
    """
    scanner = Scanner(kinds).collect()
    selected = scanner.select(include, exclude, min_size)
    return _facts(scanner, selected, limit or None)


def find_orphan(dev, ino, kinds=None):
    """The orphan entry of inode (dev, ino), or None if nothing holds it deleted."""
    scanner = Scanner(kinds).collect()
    orphan = scanner.orphans.get((dev, ino))
    if orphan is None:
        return None
    return scanner.entry(orphan, _relink_available())


def resolve_selector(selector, kinds=None):
    """Orphan entries a selector designates (empty list: nothing deleted is held there).

    selector: '/proc/PID/fd/N', '/proc/PID/map_files/A-B', '/proc/PID/exe|cwd|root'
    (the inode behind that handle), '/dev/loopN' (its backing file), 'MAJ:MIN:INO',
    or an original path (every orphan whose path or host_path is that path).
    """
    key = _selector_key(selector)
    scanner = Scanner(kinds).collect()
    relink = _relink_available()
    if key is not None:
        orphan = scanner.orphans.get(key)
        return [scanner.entry(orphan, relink)] if orphan is not None else []
    found = []
    for orphan in scanner.select():
        if orphan.path == selector:
            found.append(scanner.entry(orphan, relink))
            continue
        entry = None
        for _kind, pid, _detail in orphan.holders:
            if pid is not None and scanner._process(pid)["prefix"] + orphan.path == selector:
                entry = scanner.entry(orphan, relink)
                break
        if entry is not None:
            found.append(entry)
    return found


def _selector_key(selector):
    """(dev, ino) for handle-like selectors, None for an original path."""
    parts = selector.split("/")
    if selector.startswith("/proc/") and len(parts) >= 4 and parts[2].isdigit():
        st = os.stat(selector)
        return (st.st_dev, st.st_ino)
    if selector.startswith("/dev/loop"):
        status = loop_status(selector)
        return (status["backing_dev"], status["backing_ino"])
    fields = selector.split(":")
    if len(fields) == 3 and all(f.isdigit() for f in fields):
        return (parse_device_string("%s:%s" % (fields[0], fields[1])), int(fields[2]))
    return None
