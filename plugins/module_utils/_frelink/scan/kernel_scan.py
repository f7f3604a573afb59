# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Discovery through the kernel module: FRELINK_IOC_HELD lists every handle on a
deleted file (fd, mapping, exe, cwd, root) with what fstat(2) and readlink(2) of
it would give, so no /proc/PID/fd entry is read one by one.

The records are judged by the same rules as a /proc scan (discovery.py): a file is
deleted when its st_nlink is 0; nameless files (memfd, SysV shm, O_TMPFILE) are
skipped; NFS silly renames are kept.  Loop devices and swaps are not processes:
kernel_holders.py finds them as before.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import sys

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.procfs import DELETED_SUFFIX

_SUFFIX_LEN = len(DELETED_SUFFIX)
_DELETED = DELETED_SUFFIX.encode()


def kinds_mask(kinds):
    """FRELINK_HELD_* bits of the process kinds among KINDS names (0: none)."""
    mask = 0
    for kind in kinds:
        mask |= kmod_abi.HELD_KINDS.get(kind, 0)
    return mask


def collect_from_kernel(scanner, mask):
    """Fill SCANNER's orphans, processes and fds from the kernel's listing.
    Raises OSError when the module cannot list (see kmod_abi.list_held_raw).

    One pass over the records, which come a process at a time (its records may span
    chunks, consecutive) in the order a /proc scan meets the handles (exe, cwd, root, fds,
    mappings); each is judged by the
    Scanner's own rules for one handle (fd_hit, add_fd, add_link, mapping_orphan).  A
    record is its own stat (kmod_abi.HeldRecord)."""
    chunks, processes, fds = kmod_abi.list_held_raw(mask)
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    fd_kind, mmap_kind = kmod_abi.HELD_FD, kmod_abi.HELD_MMAP
    kind_names = kmod_abi.HELD_KIND_NAMES
    fd_hit, add_fd, fd_state = scanner.fd_hit, scanner.add_fd, scanner.fd_state
    last_pid, pid, mapped_here = None, None, {}
    for chunk in chunks:
        for record, raw in kmod_abi.iter_held_records(chunk):
            if raw[:1] != b"/":
                continue
            if record.pid != last_pid:
                last_pid, pid, mapped_here = record.pid, str(record.pid), {}
            kind = record.kind
            if kind == fd_kind and record.start:
                # in a table only /proc/PID/task/TID/fd shows (TID in start): the /proc scan
                # and everything that opens /proc/PID/fd/N know no such handle yet
                continue
            if kind == fd_kind:
                target = raw.decode(encoding, errors)
                if fd_hit(record, target):
                    name = str(record.fd)
                    add_fd(pid, name, record, target)
                    fd_state[(pid, name)] = (record.open_flags, record.pos)  # fdinfo's flags and pos
            elif kind == mmap_kind:
                if raw.endswith(_DELETED) and record.st_dev != scanner.shm_dev:
                    _add_mapping(scanner, pid, record, raw[:-_SUFFIX_LEN].decode(encoding, errors), mapped_here)
            elif record.st_nlink == 0 and raw.endswith(_DELETED):
                scanner.add_link(kind_names[kind], pid, record, raw.decode(encoding, errors))
    scanner.processes = processes
    scanner.fds = fds


def _add_mapping(scanner, pid, record, path, mapped_here):
    """A mapping record, as Scanner._scan_mappings takes a maps line: the first mapping of a
    file in a process makes the holder, later ones count."""
    key = (record.st_dev, record.st_ino)
    if key in mapped_here:
        orphan = mapped_here[key]
        if orphan is not None:
            orphan.mmap_pids[pid][1] += 1
        return
    orphan = mapped_here[key] = scanner.mapping_orphan(record, path)
    if orphan is not None:
        scanner.add_mapping(orphan, pid, "%08x-%08x" % (record.start, record.end))
