# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Selection: which inode a frelink_restore task means (by original path, by
what holds it, by identity), from the same scan frelink_facts runs."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import loop as loop_mod
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import facts as scan_mod
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.discovery import SILLY_RENAME
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string, parse_device_string
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.procfs import DELETED_SUFFIX

_PROC_OPEN_PATH = re.compile(r"^/proc/(\d+)/(fd/\d+|map_files/[0-9a-f]+-[0-9a-f]+|exe)$")
_LOOP_DEVICE = re.compile(r"^/dev/loop\d+$")
_DEVICE_PAIR = re.compile(r"^(\d+):(\d+)$")


def parse_device(value):
    """st_dev from an int, a decimal string or "major:minor"."""
    if isinstance(value, bool) or value is None:
        raise RestoreError("device %r is neither an st_dev number nor 'major:minor' (e.g. '8:1')" % (value,))
    if isinstance(value, int):
        if value < 0:
            raise RestoreError("device %d is negative; give st_dev (0 or more) or 'major:minor' (e.g. '8:1')" % value)
        return value
    text = str(value).strip()
    if _DEVICE_PAIR.match(text):
        return parse_device_string(text)
    if text.isdigit():
        return int(text)
    raise RestoreError("device %r is neither an st_dev number nor 'major:minor' (e.g. '8:1')" % (value,))


def describe(orphan):
    holders = []
    for holder in orphan.get("holders") or []:
        if holder.get("pid") is not None:
            holders.append("%s pid %s (%s)" % (holder.get("kind"), holder.get("pid"), holder.get("name", "?")))
        elif holder.get("device") or holder.get("loop"):
            holders.append("%s %s" % (holder.get("kind"), holder.get("device") or holder.get("loop")))
        elif holder.get("host_path"):
            holders.append("%s on %s" % (holder.get("kind"), holder["host_path"]))
        else:
            holders.append(str(holder.get("kind")))
    return "%s (device %s inode %s, %s bytes, held by %s)" % (
        orphan.get("path"), orphan.get("device") or device_string(orphan["dev"]), orphan["ino"],
        orphan.get("size"), ", ".join(holders) or "?")


def candidate_list(orphans):
    return [{"path": o.get("path"), "dev": o["dev"], "device": o.get("device") or device_string(o["dev"]),
             "ino": o["ino"], "size": o.get("size"), "open_path": o.get("open_path"),
             "holders": o.get("holders")} for o in orphans]


def orphans_by_path(path):
    """(orphans, scan): every orphan whose original path (or path seen from our
    namespace, /proc/PID/root/...) is `path`, and the scan's completeness."""
    try:
        return scan_mod.resolve_selector_and_scan(path)
    except scan_mod.SelectorError as exc:
        raise RestoreError("cannot open %s (has the process exited, or the loop device been detached? list what is "
                           "recoverable now with frelink_facts)" % exc)


def orphans_by_globs(globs):
    facts = scan_mod.scan(include=list(globs), limit=0)
    return facts.get("orphans") or [], facts.get("scan") or {}


class Target(object):
    """The inode to restore: an orphan from the scan or, when it already has a
    name again, just its identity (for idempotence)."""

    def __init__(self, dev, ino, orphan=None, nlink=0, path=None, size=None, upper=None):
        self.upper = upper  # overlay upper layer of a target that has a name again
        self.dev = dev
        self.ino = ino
        self.orphan = orphan
        self.nlink = nlink
        self.path = path if path is not None else names.raw(orphan or {}, "path")
        self.size = size if size is not None else (orphan or {}).get("size")

    @property
    def is_orphan(self):
        return self.orphan is not None and self.nlink == 0

    @property
    def open_path(self):
        return names.raw(self.orphan or {}, "open_path")

    @property
    def silly_renamed(self):
        """An NFS client's .nfsXXXX name for a file removed while open: it still has that name."""
        return bool((self.orphan or {}).get("nfs_silly_rename"))

    @property
    def current_name(self):
        return self.path if self.silly_renamed else None

    @property
    def overlay(self):
        """The upper layer (overlay.upper_layer()) of a file held through an overlay, else None."""
        if self.orphan is not None:
            return self.orphan.get("overlay")
        return self.upper

    @property
    def rescue_dest(self):
        """The overlay's rescue path for this file (overlay.rescue_dest()), or None."""
        return names.raw(self.overlay, "dest") if self.overlay else None

    def name_identity(self):
        """(st_dev, st_ino) of the name the file has after a relink: on an overlay the
        upper layer's device (the overlay reports the upper inode's number)."""
        upper = self.overlay
        return (upper["upper_dev"], self.ino) if upper else (self.dev, self.ino)

    def default_dest(self):
        """The original path, seen from the holder's mount namespace when the
        scan says it differs from ours; for an overlay file a rescue directory on
        the upper layer's filesystem; None when it is not known.  A file held
        only by mounts goes back to its source path as our namespace sees it
        (a mount's host_path is where it is mounted, not where it came from)."""
        if self.silly_renamed:
            return (self.orphan or {}).get("original_path")
        if self.overlay:
            return self.rescue_dest
        holders = (self.orphan or {}).get("holders") or []
        foreign = [names.raw(h, "host_path") for h in holders if h.get("host_path") and h.get("pid") is not None]
        ours = [h for h in holders if h.get("pid") is not None and not h.get("host_path")]
        if foreign and not ours:
            return foreign[0]
        if not foreign and not ours and any(h.get("source_visible") is False for h in holders):
            return None  # a mount of a filesystem that no mount of ours shows: path is within that filesystem
        return self.path


def _target_from_stat(st, path, orphan=None, pid=None):
    held_deleted = st.st_nlink == 0 or SILLY_RENAME.search(path) is not None
    if held_deleted and orphan is None:
        orphan = scan_mod.find_orphan(st.st_dev, st.st_ino)
    if orphan is not None and (st.st_nlink == 0 or orphan.get("nfs_silly_rename")):
        return Target(st.st_dev, st.st_ino, orphan=orphan, nlink=0)
    return Target(st.st_dev, st.st_ino, orphan=None, nlink=st.st_nlink, path=path, size=st.st_size,
                  upper=scan_mod.overlay_upper(st.st_dev, path, pid))


def resolve_src(src):
    """/proc/PID/fd/N, /proc/PID/map_files/A-B, /proc/PID/exe or /dev/loopN."""
    if _LOOP_DEVICE.match(src):
        return _resolve_loop(src)
    if not _PROC_OPEN_PATH.match(src):
        raise RestoreError("src %s is neither /proc/PID/fd/N, /proc/PID/map_files/START-END, /proc/PID/exe "
                           "nor /dev/loopN; to select by the file's original name use path=" % src)
    try:
        st = os.stat(src)
        link = os.readlink(src)
    except OSError as exc:
        raise RestoreError("cannot open %s: %s (has the process exited or closed it? list the current holders "
                           "with frelink_facts)" % (src, exc.strerror))
    if link.endswith(DELETED_SUFFIX):
        link = link[:-len(DELETED_SUFFIX)]
    if not stat.S_ISREG(st.st_mode):
        raise RestoreError("%s is not a regular file (%s); only regular files can be restored" % (src, link))
    target = _target_from_stat(st, link, pid=src.split("/")[2])
    if target.orphan is None and st.st_nlink == 0:
        raise RestoreError("%s (%s) is deleted but the scan did not find it again; rerun" % (src, link))
    return target


def _resolve_loop(loop):
    try:
        status = loop_mod.loop_status(loop)
    except OSError as exc:
        raise RestoreError("cannot query %s: %s (is it a bound loop device? see losetup -a)" % (loop, exc.strerror))
    dev, ino = status["backing_dev"], status["backing_ino"]
    orphan = scan_mod.find_orphan(dev, ino)
    if orphan is not None:
        return Target(dev, ino, orphan=orphan)
    name = status.get("file_name") or None
    return Target(dev, ino, orphan=None, nlink=-1, path=name)


def resolve_inode(dev, ino, generation=None):
    orphan = scan_mod.find_orphan(dev, ino)
    if orphan is not None:
        if generation is not None:
            _same_generation(orphan, int(generation))
        return Target(dev, ino, orphan=orphan)
    return _named_again(dev, ino) or Target(dev, ino, orphan=None, nlink=-1)


def _same_generation(orphan, generation):
    """The deleted file of (dev, ino) now is the one of the facts that gave GENERATION, or a
    RestoreError.  The relink passes the scan's generation to the kernel module, which checks
    it again under the locks of the link."""
    current = orphan.get("generation")
    where = "device %s inode %s" % (orphan.get("device") or device_string(orphan["dev"]), orphan["ino"])
    if current is None:
        raise RestoreError("cannot check the generation of %s (%s): the scan gives it only for a file that only a "
                           "loop device holds, with the kernel module loaded (modprobe frelink, or the role "
                           "frelink.frelink.frelink_kmod); nothing was changed. Gather the facts again and restore "
                           "by path or src" % (where, orphan.get("path")))
    if current != generation:
        raise RestoreError("%s is another deleted file now (%s, generation %d; the facts gave generation %d): the "
                           "file of those facts was freed and its inode number reused; nothing was changed. Gather "
                           "the facts again" % (where, orphan.get("path"), current, generation))


def _named_again(dev, ino):
    """The target as a process still holds it once it has a name again (after a relink):
    a descriptor whose fstat is (dev, ino) with links. Its /proc link text, the name it
    was opened by, is only the candidate default dest; restore_target() decides by the
    identity of what that name holds. None when no process holds it."""
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # exited, or not ours to look at
        for fd in fds:
            open_path = "%s/%s" % (fd_dir, fd)
            try:
                st = os.stat(open_path)
                if (st.st_dev, st.st_ino) != (dev, ino) or st.st_nlink == 0 or not stat.S_ISREG(st.st_mode):
                    continue
                link = os.readlink(open_path)
            except OSError:
                continue
            if link.endswith(DELETED_SUFFIX):
                link = link[:-len(DELETED_SUFFIX)]
            return _target_from_stat(st, link, pid=pid)
    return None
