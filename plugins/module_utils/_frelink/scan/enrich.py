# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Enrichment: turn discovery's raw orphans into the facts' entries and summary.

Per listed entry only: holder names and users, fdinfo, the mount (seen from
the holder's mount namespace when it differs), free space, owner names, and
what each restore method could do with it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import os
import pwd
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import idioms
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import overlay
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.attribution import restart_target, unit_of
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.classes import CLASSES, Classifier
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.containers import container_of
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.discovery import KINDS, readlink_or_none
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import (
    REFLINK_FSTYPES,
    MountTable,
    device_string,
    longest_prefix_mount,
    parse_mountinfo,
    read_text,
)
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.procfs import access_mode, parse_fdinfo

HOLDERS_CAP = 16  # holders listed per orphan; holder_count has the total

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


class Report:
    """Entries and summary for the orphans a collected Scanner found."""

    def __init__(self, scanner):
        self.scanner = scanner
        self.proc = scanner.proc
        self.mounts = scanner.mounts
        self.fd_state = scanner.fd_state
        self.self_mntns = scanner.self_mntns
        self._procinfo = {}
        self._prefixes = {}
        self._units = {}  # /proc/PID/cgroup text -> (unit, user_unit)
        self._tables = {}
        self._statvfs = {}
        self._classes = {}  # orphan key -> (class, package)
        self.classifier = Classifier()

    def summary(self, selected, listed):
        by_kind = dict((kind, 0) for kind in KINDS)
        bytes_by_kind = dict((kind, 0) for kind in KINDS)
        by_fs = {}
        pinned = 0
        apparent = 0
        mapped_only = 0
        deliberate = {"count": 0, "bytes_pinned": 0, "by_idiom": {}}
        by_class = dict((name, {"count": 0, "bytes_pinned": 0}) for name in CLASSES)
        for orphan in selected:
            st = orphan.st
            allocated = st.st_blocks * 512 if st is not None else 0
            holders = orphan.holders
            if len(holders) == 1:
                kind = holders[0][0]
                by_kind[kind] += 1
                bytes_by_kind[kind] += allocated
                if kind == "mmap":
                    mapped_only += 1
            else:
                kinds = orphan.kinds
                for kind in kinds:
                    by_kind[kind] += 1
                    bytes_by_kind[kind] += allocated
                if kinds == {"mmap"}:
                    mapped_only += 1
            idiom = self.idiom(orphan)
            klass = by_class[self.klass(orphan, idiom)[0]]
            klass["count"] += 1
            klass["bytes_pinned"] += allocated
            if idiom is not None:
                deliberate["count"] += 1
                deliberate["bytes_pinned"] += allocated
                deliberate["by_idiom"][idiom] = deliberate["by_idiom"].get(idiom, 0) + 1
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
                    "mount_point": names.shown(mount_point),
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
            "bytes_by_kind": bytes_by_kind,
            "mapped_only": mapped_only,
            "deliberate": deliberate,
            "by_class": by_class,
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
            mntns, prefix = self._namespace(pid)
            try:
                cgroup = _read_small(base + "/cgroup")
            except OSError:
                cgroup = ""
            units = self._units.get(cgroup)
            if units is None:
                units = self._units[cgroup] = unit_of(cgroup)
            info = self._procinfo[pid] = {
                "name": names.shown(name),
                "user": names.shown(user),
                "mntns": mntns,
                "prefix": prefix,
                # a container always has its own mount namespace
                "container": container_of(cgroup) if prefix and cgroup else None,
                "unit": units[0],
                "user_unit": units[1],
            }
        return info

    def _namespace(self, pid):
        """(mntns, prefix) of a process: its mount namespace when it is not ours (else None), and
        '/proc/PID/root' then (else ''): the path prefix through which its paths are reached."""
        found = self._prefixes.get(pid)
        if found is None:
            mntns = readlink_or_none("%s/%s/ns/mnt" % (self.proc, pid))
            # /proc links are resolved against the scanner's root, so a chroot in our
            # namespace shows host paths; only another mount namespace shows its own paths.
            foreign = mntns is not None and mntns != self.self_mntns
            found = self._prefixes[pid] = (mntns if foreign else None, "%s/%s/root" % (self.proc, pid) if foreign else "")
        return found

    def _reference_pid(self, orphan):
        """The holder whose view of the orphan's path counts: the first process in our mount
        namespace, else the first process; None when only the kernel holds it."""
        first = None
        for _kind, pid, _detail in orphan.holders:
            if pid is not None:
                if not self._namespace(pid)[1]:
                    return pid
                if first is None:
                    first = pid
        return first

    def path_prefix(self, orphan):
        """The prefix (_namespace) through which the orphan's path is seen (_reference_pid's)."""
        pid = self._reference_pid(orphan)
        return self._namespace(pid)[1] if pid is not None else ""

    def klass(self, orphan, idiom):
        """(class, package or None) of a raw orphan (classes.py), once per orphan."""
        found = self._classes.get(orphan.key)
        if found is None:
            found = self._classes[orphan.key] = self.classifier.classify(
                orphan, idiom, lambda: self.path_prefix(orphan), lambda: open_path_of(self.proc, orphan.holders))
        return found

    def idiom(self, orphan):
        """idioms.classify() of a raw orphan (holder names read only when a pattern needs them)."""
        return idioms.classify(orphan.path, lambda: [self._process(pid)["name"] for _kind, pid, _detail
                                                     in orphan.holders if pid is not None])

    def holder_prefix(self, pid):
        """'/proc/PID/root' when the holder sees another mount namespace than ours, else ''."""
        return self._namespace(pid)[1]

    def table_for(self, pid):
        """Mount table of the holder's namespace (own table when it shares ours)."""
        if pid is None:
            return self.mounts, ""
        prefix = self._namespace(pid)[1]
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
            entry.update(names.json_safe(detail))
            return entry
        info = self._process(pid)
        entry = {"kind": kind, "pid": int(pid), "name": info["name"], "user": info["user"]}
        if info["unit"]:
            entry["unit"] = info["unit"]
            if info["user_unit"]:
                entry["user_unit"] = info["user_unit"]
        if kind == "fd":
            entry["fd"] = int(detail)
            state = self.fd_state.get((pid, detail))
            if state is None:
                try:
                    fdinfo = parse_fdinfo(_read_small("%s/%s/fdinfo/%s" % (self.proc, pid, detail)))
                    state = (fdinfo.get("flags", 0), fdinfo.get("pos"))
                except OSError:
                    state = None
            entry["mode"], entry["pos"] = (access_mode(state[0]), state[1]) if state else (None, None)
        elif kind == "mmap":
            entry["range"] = detail
            entry["mappings"] = (orphan.mmap_pids or {}).get(pid, [detail, 1])[1]
        if info["prefix"]:
            entry["mntns"] = info["mntns"]
            names.put(entry, "host_path", info["prefix"] + orphan.path)
        if info["container"]:
            entry["container"] = info["container"]
        return entry

    def _restart_target(self, holder):
        """restart_target() of a raw holder, from what attribution needs only (no fdinfo read)."""
        kind, pid, detail = holder
        if pid is None:
            found = {"kind": kind}
            found.update(detail)
            return restart_target(found)
        info = self._process(pid)
        return restart_target({"kind": kind, "pid": int(pid), "name": info["name"], "container": info["container"],
                               "unit": info["unit"], "user_unit": info["user_unit"]})

    def _mount_for(self, orphan):
        """(mount, prefix) of the orphan's filesystem, seen from a holder (our own namespace preferred)."""
        table, prefix = self.table_for(self._reference_pid(orphan))
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
        open_path = open_path_of(self.proc, holders)
        size = st.st_size if st is not None else None
        is_file = ftype == "file"
        idiom = self.idiom(orphan)
        klass, package = self.klass(orphan, idiom)
        entry = {
            "dev": orphan.dev,
            "device": device_string(orphan.dev) if orphan.dev is not None else None,
            "ino": orphan.ino,
            "path": None,  # names.put() below: the name as text, and path_b64 when it is not UTF-8
            "type": ftype,
            "size": size,
            "allocated": orphan.allocated,
            "mode": "%04o" % stat.S_IMODE(st.st_mode) if st is not None else None,
            "uid": st.st_uid if st is not None else None,
            "owner": names.shown(_user_name(st.st_uid)) if st is not None else None,
            "gid": st.st_gid if st is not None else None,
            "group": names.shown(_group_name(st.st_gid)) if st is not None else None,
            "mtime": st.st_mtime if st is not None else None,
            "fstype": fstype,
            "mount_point": names.shown(mount_point),
            "path_free": path_free,
            "open_path": None,  # names.put() below
            "class": klass,
            "holders": [self._holder(h, orphan) for h in holders[:HOLDERS_CAP]],
            # A copy needs `size` bytes; the free space is per filesystem, in summary.by_filesystem.
            "restore": {
                "relink": bool(relink_available and is_file and orphan.ino is not None
                               and kmod_abi.relink_supported(fstype)),
                "reflink": bool(is_file and fstype in REFLINK_FSTYPES and open_path is not None),
            },
        }
        # Lean payload (Ansible's cost grows with every value it returns): the
        # defaults confirmed=true and holder_count=len(holders) are left out, and
        # <key>_b64 is there only for a name that is not UTF-8 (names.put).
        names.put(entry, "path", orphan.path)
        names.put(entry, "open_path", open_path)
        if orphan.generation is not None:
            entry["generation"] = orphan.generation
        if package is not None:
            entry["package"] = package
        if st is None:
            entry["confirmed"] = False
        if idiom is not None:
            entry["deliberate"] = {"idiom": idiom, "why": idioms.IDIOMS[idiom]}
        if orphan.silly_renamed:
            entry["nfs_silly_rename"] = True
            entry["original_path"] = None
            entry["note"] = ("removed on an NFS client while open: the client renamed it to %s and removes that "
                             "name at the last close; the original name is recorded nowhere, so give dest when "
                             "restoring" % names.shown(orphan.path.rsplit("/", 1)[-1]))
            entry["path_free"] = False
            entry["restore"]["relink"] = True  # a plain link(2): it still has a name
        if fstype == overlay.OVERLAY_FSTYPE and mount is not None:
            self._add_overlay(entry, mount, prefix, orphan, relink_available and is_file and open_path is not None)
        if len(holders) > HOLDERS_CAP:
            entry["holder_count"] = len(holders)
            # what to restart is asked of every holder, not only of the listed ones
            entry["restart_targets"] = [{"kind": kind, "name": name} for kind, name in
                                        sorted(set(self._restart_target(h) for h in holders))]
        return entry

    def _add_overlay(self, entry, mount, prefix, orphan, relink_possible):
        """The upper layer that really holds an overlay file, where it can be relinked, and its container."""
        upper = overlay.upper_layer(mount, prefix, self.mounts)
        container = next((h["container"] for h in entry["holders"] if h.get("container")), None)
        if upper is not None:
            upper["dest"] = overlay.rescue_dest(upper, container, orphan.path)
        entry["overlay"] = names.json_safe(upper)
        entry["container"] = container
        names.put(entry, "path_in_container", orphan.path)
        entry["restore"]["relink"] = bool(relink_possible and upper is not None and upper.get("dest")
                                          and kmod_abi.relink_supported(overlay.OVERLAY_FSTYPE,
                                                                        upper.get("upper_fstype")))


def _read_small(path):
    """A short /proc file (comm, fdinfo of a file) in one read: they are generated whole on the first read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def open_path_of(proc, holders):
    """Best /proc path to open the inode through: fd, then exe, mapping, cwd, root; else the
    mount point of a mount whose root it is (opening it opens the inode); None for loop/swap only."""
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
        return next((detail["host_path"] for kind, _pid, detail in holders if kind == "mount"), None)
    kind, pid, detail = best
    if kind == "fd":
        return "%s/%s/fd/%s" % (proc, pid, detail)
    if kind == "mmap":
        return "%s/%s/map_files/%s" % (proc, pid, detail)
    return "%s/%s/%s" % (proc, pid, kind)


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
