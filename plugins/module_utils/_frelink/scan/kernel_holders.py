# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Discovery of what the kernel itself holds: loop devices (backing files) and swap files.

Part of discovery.py's pass (Scanner.collect() calls these); they add to the
scanner's orphans.  Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.loop import bound_loops, loop_status
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import (
    ANON_DEV_FSTYPES,
    longest_prefix_mount,
    parse_swaps,
    read_text,
)
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.procfs import DELETED_SUFFIX

_SUFFIX_LEN = len(DELETED_SUFFIX)


def scan_loops(scanner):
    """Loop devices whose backing file is deleted: the kernel holds it, no process does."""
    for loop in bound_loops(scanner.sys_block):
        text = loop["backing_file"]
        if not text.endswith(DELETED_SUFFIX):
            continue
        try:
            status = loop_status(loop["device"])
        except PermissionError:
            scanner.partial("%s: cannot read its backing inode (LOOP_GET_STATUS64 needs read access to the "
                            "device); run as root (become: true)" % loop["device"])
            continue
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                continue  # detached (or removed) since /sys/block was read
            scanner.warnings.append("%s: LOOP_GET_STATUS64 failed: %s" % (loop["device"], exc.strerror))
            continue
        dev, ino = status["backing_dev"], status["backing_ino"]
        try:
            st = os.stat(text)
            if (st.st_dev, st.st_ino) == (dev, ino):
                continue  # a live file whose name really ends in ' (deleted)'
        except OSError:
            pass
        mounts = sorted(m["mount_point"] for m in scanner.mounts.mounts if m["dev"] in loop["devs"])
        detail = {
            "device": loop["device"],
            "offset": status["offset"],
            "sizelimit": status["sizelimit"],
            "read_only": status["read_only"],
            "autoclear": status["autoclear"],
            "mounts": mounts,
        }
        key = (dev, ino)
        orphan = scanner.orphans.get(key)
        if orphan is None:
            orphan = scanner.new_orphan(key, dev, ino, None, text[:-_SUFFIX_LEN])
        if orphan.generation is None:
            orphan.generation = backing_generation(scanner, dev, ino)
        orphan.holders.append(("loop", None, detail))
        try:
            device_bytes = int(read_text("%s/%s/size" % (scanner.sys_block, loop["name"]))) * 512
            orphan.size_hint = max(orphan.size_hint, device_bytes + status["offset"])
        except (OSError, ValueError):
            pass


def backing_generation(scanner, dev, ino):
    """The generation of the deleted inode (dev, ino) that only the kernel holds, as the
    module reports it (FRELINK_IOC_IDENTIFY), or None (no module, a module without the
    ioctl, no mount of the filesystem here).  (dev, ino) alone may name another deleted
    file once this one is freed; restore passes the generation back and the module
    refuses a file of that number with another generation (ESTALE)."""
    if not kmod_abi.module_loaded():
        return None
    for mount in scanner.mounts.mounts:
        if mount["dev"] != dev:
            continue
        try:
            dir_fd = os.open(mount["mount_point"], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            return kmod_abi.inode_generation(dev, ino, dir_fd)
        except OSError:
            continue
        finally:
            os.close(dir_fd)
    return None


def scan_swaps(scanner):
    """Swap files that were deleted while active (current kernels refuse to unlink them)."""
    try:
        swaps = parse_swaps(read_text(scanner.proc + "/swaps"))
    except OSError:
        return
    for swap in swaps:
        text = swap["path"]
        if swap["type"] != "file" or not text.endswith(DELETED_SUFFIX) or os.path.lexists(text):
            continue
        path = text[:-_SUFFIX_LEN]
        mount = longest_prefix_mount(scanner.mounts.mounts, path)
        dev = mount["dev"] if mount else None
        # /proc/swaps gives no inode: if a process holds a deleted file of that
        # path on that filesystem, it is the swap file (same name, same device).
        orphan = next((o for o in scanner.orphans.values() if o.path == path and o.st is not None
                       and stat.S_ISREG(o.st.st_mode)
                       and (dev is None or o.dev == dev or mount["fstype"] in ANON_DEV_FSTYPES)), None)
        if orphan is None:
            key = ("swap", path)
            orphan = scanner.orphans.get(key)
            if orphan is None:
                orphan = scanner.new_orphan(key, dev, None, None, path)
        detail = {"size": swap["size"], "used": swap["used"], "priority": swap["priority"]}
        orphan.holders.append(("swap", None, detail))
        orphan.size_hint = max(orphan.size_hint, swap["size"])
