# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Parsers for /proc/PID/mountinfo and /proc/swaps, and device number helpers.

Standard library only; the parsers take text so that they can be tested on
captured files.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

# Filesystems whose stat() may block for a long time when the server is gone.
# We never stat their mount points just to map a device number.
NETWORK_FSTYPES = frozenset((
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs",
    "lustre", "gfs2", "ocfs2", "fuse", "fuseblk", "davfs", "ncpfs", "coda",
))

# Filesystems that report a st_dev different from the maj:min of their
# mountinfo line (btrfs subvolumes, overlay, ...): their mount points are
# statted, only when an orphan's device could not be matched otherwise.
ANON_DEV_FSTYPES = frozenset(("btrfs", "overlay", "bcachefs", "zfs"))

# Filesystems where FICLONE can share extents (xfs only when made with reflink=1);
# a prediction for the facts and check mode, the real run asks the kernel.
REFLINK_FSTYPES = frozenset(("btrfs", "xfs", "ocfs2", "bcachefs"))

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field):
    """Undo the kernel's octal escaping (\\040 for space...) of paths in /proc text."""
    if "\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def device_string(st_dev):
    """'maj:min' of a st_dev, as mountinfo and lsblk show it."""
    return "%d:%d" % (os.major(st_dev), os.minor(st_dev))


def parse_device_string(text):
    """st_dev from 'maj:min' (decimal, as in mountinfo)."""
    major, minor = text.split(":")
    return os.makedev(int(major), int(minor))


def parse_hex_device(text):
    """st_dev from the 'MM:mm' hexadecimal device field of /proc/PID/maps."""
    major, minor = text.split(":")
    return os.makedev(int(major, 16), int(minor, 16))


def is_network_fstype(fstype):
    return fstype in NETWORK_FSTYPES or fstype.startswith("fuse.")


def parse_mountinfo(text):
    """List of mounts, each a dict: id, parent, dev (st_dev), root, mount_point, fstype, source, options,
    super_options (raw, still escaped).

    See proc(5): fields 1-6, optional fields up to '-', then fstype, source, super options.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 10:
            continue
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        mounts.append({
            "id": int(fields[0]),
            "parent": int(fields[1]),
            "dev": parse_device_string(fields[2]),
            "root": unescape(fields[3]),
            "mount_point": unescape(fields[4]),
            "options": fields[5],
            "fstype": fields[sep + 1],
            "source": unescape(fields[sep + 2]) if len(fields) > sep + 2 else "",
            "super_options": fields[sep + 3] if len(fields) > sep + 3 else "",
        })
    return mounts


def parse_swaps(text):
    """Entries of /proc/swaps: path (unescaped, with any ' (deleted)' kept), type, size/used in bytes, priority."""
    swaps = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        try:
            size_kib, used_kib, priority = int(fields[-3]), int(fields[-2]), int(fields[-1])
        except ValueError:
            continue
        swaps.append({
            "path": unescape(fields[0]),
            "type": fields[-4],
            "size": size_kib * 1024,
            "used": used_kib * 1024,
            "priority": priority,
        })
    return swaps


def read_text(path, dir_fd=None):
    """Whole content of a /proc or /sys file as text (they are generated, stat size is 0)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return read_all(fd).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class MountTable:
    """Mounts of one mount namespace, indexed by device, with lazy resolution of anonymous devices."""

    def __init__(self, mounts, root_prefix=""):
        self.mounts = mounts
        # Path prefix through which the scanner reaches this namespace's paths
        # ("" for its own, "/proc/PID/root" for another namespace).
        self.root_prefix = root_prefix
        self.by_dev = {}
        for mount in mounts:
            self.by_dev.setdefault(mount["dev"], []).append(mount)
        self._anon_resolved = False

    def devices(self):
        return self.by_dev.keys()

    def _resolve_anonymous_devices(self):
        """Stat mount points of filesystems whose st_dev differs from mountinfo (btrfs subvolumes...).

        Only local filesystems of ANON_DEV_FSTYPES are statted, never network ones.
        """
        if self._anon_resolved:
            return
        self._anon_resolved = True
        for mount in self.mounts:
            if mount["fstype"] not in ANON_DEV_FSTYPES:
                continue
            try:
                st_dev = os.stat(self.root_prefix + mount["mount_point"]).st_dev
            except OSError:
                continue
            if st_dev != mount["dev"]:
                self.by_dev.setdefault(st_dev, []).append(mount)

    def lookup(self, st_dev, path=None):
        """The mount that best holds a file of device st_dev at path (in this namespace), or None.

        Among the mounts of that device (bind mounts...) the one with the longest
        mount point that is a prefix of path wins.  For a device not in mountinfo
        (nested btrfs subvolume), the longest-prefix mount of an ANON_DEV_FSTYPES
        filesystem is taken.
        """
        candidates = self.by_dev.get(st_dev)
        if not candidates:
            self._resolve_anonymous_devices()
            candidates = self.by_dev.get(st_dev)
        if not candidates and path:
            candidates = [m for m in self.mounts if m["fstype"] in ANON_DEV_FSTYPES]
            best = longest_prefix_mount(candidates, path)
            return best
        if not candidates:
            return None
        if path and len(candidates) > 1:
            best = longest_prefix_mount(candidates, path)
            if best is not None:
                return best
        return candidates[0]


def longest_prefix_mount(mounts, path):
    """The mount of ``mounts`` whose mount point is the longest prefix of ``path``."""
    best = None
    for mount in mounts:
        mount_point = mount["mount_point"]
        if mount_point == "/" or path == mount_point or path.startswith(mount_point + "/"):
            if best is None or len(mount_point) > len(best["mount_point"]):
                best = mount
    return best
