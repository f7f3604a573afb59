# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The file to truncate, reached through a holder's descriptor (/proc/PID/fd/N) and verified by fstat:
the same identity (st_dev, st_ino) as the facts gave, a regular file, and deleted (st_nlink == 0).
The ' (deleted)' text of the link is never trusted."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import os
import stat
import struct

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.rules import restart_text

_OPEN = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
# linux/fs.h: the inode flags chattr sets; an append-only or immutable file cannot be truncated
FS_IOC_GETFLAGS = 0x80086601
FS_IMMUTABLE_FL = 0x10
FS_APPEND_FL = 0x20


class Gone(Exception):
    """The file is no longer held (its holder exited or closed it) or has a name again: nothing to do."""


def fd_paths(entry, proc="/proc"):
    """/proc/PID/fd/N of every descriptor holder of a facts entry, the writers first."""
    fds = [h for h in entry.get("holders") or [] if h.get("kind") == "fd" and h.get("pid") is not None]
    fds.sort(key=lambda h: "w" not in (h.get("mode") or ""))
    return ["%s/%d/fd/%d" % (proc, h["pid"], h["fd"]) for h in fds]


def _refuse_if_protected(fd, entry, through):
    """RestoreError when the inode is append-only or immutable (chattr +a / +i): ftruncate would fail with EPERM.
    Check mode opens read-only and learns it here, as the real run's open for writing would."""
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)
    except OSError:
        return  # a filesystem without these flags
    flags = struct.unpack("=i", raw[:4])[0]
    if flags & (FS_APPEND_FL | FS_IMMUTABLE_FL):
        raise RestoreError("%s (%s) is %s (chattr +%s): it cannot be truncated; nothing was changed (remove the "
                           "flag with chattr -%s on a name of it, or restart %s)" % (
                               through, entry.get("path"), "immutable" if flags & FS_IMMUTABLE_FL else "append-only",
                               "i" if flags & FS_IMMUTABLE_FL else "a", "i" if flags & FS_IMMUTABLE_FL else "a",
                               restart_text(entry)), errno=1)


def open_verified(entry, flags):
    """(fd, stat, through) of the file of ENTRY opened with FLAGS (os.O_WRONLY, os.O_RDWR or os.O_RDONLY) through the first
    of its descriptors that still opens it; raises Gone when none does (or it has a name again) and
    RestoreError when the file cannot be opened so or is not what the facts said."""
    dev, ino = entry["dev"], entry["ino"]
    last = None
    for through in fd_paths(entry):
        try:
            fd = os.open(through, flags | _OPEN)
        except (FileNotFoundError, ProcessLookupError) as exc:
            last = exc
            continue
        except OSError as exc:
            raise RestoreError("cannot open %s (%s) for %s: %s; nothing was changed (an append-only or immutable "
                               "file, chattr -a/-i, cannot be truncated)" % (
                                   through, entry.get("path"), "writing" if flags == os.O_WRONLY else "reading",
                                   exc.strerror), errno=exc.errno)
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if (st.st_dev, st.st_ino) != (dev, ino):
            os.close(fd)
            last = None
            continue  # the descriptor number was reused for another file: try the next holder
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise RestoreError("%s (device %s inode %d) is not a regular file; nothing was changed"
                               % (entry.get("path"), device_string(dev), ino))
        try:
            _refuse_if_protected(fd, entry, through)
        except RestoreError:
            os.close(fd)
            raise
        if st.st_nlink != 0:
            os.close(fd)
            raise Gone("%s (device %s inode %d) has a name again (%d links): it is not deleted, frelink_reclaim "
                       "leaves it alone" % (entry.get("path"), device_string(dev), ino, st.st_nlink))
        return fd, st, through
    raise Gone("%s (device %s inode %d) is no longer held through a descriptor (its holders exited or closed it%s)"
               % (entry.get("path"), device_string(dev), ino, ": %s" % last.strerror if last else ""))
