# -*- coding: utf-8 -*-
# Copyright: (c) frelink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
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

from ansible_collections.frelink.frelink.plugins.module_utils import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils.procfs import DELETED_SUFFIX

_SUFFIX_LEN = len(DELETED_SUFFIX)


def kinds_mask(kinds):
    """FRELINK_HELD_* bits of the process kinds among KINDS names (0: none)."""
    mask = 0
    for kind in kinds:
        mask |= kmod_abi.HELD_KINDS.get(kind, 0)
    return mask


def collect_from_kernel(scanner, mask):
    """Fill SCANNER's orphans, processes and fds from the kernel's listing.
    Raises OSError when the module cannot list (see kmod_abi.list_held)."""
    records, processes, fds = kmod_abi.list_held(mask)
    by_pid = {}
    for record in records:
        by_pid.setdefault(record[1], []).append(record)
    for pid, held in by_pid.items():
        _apply_process(scanner, str(pid), held)
    scanner.processes = processes  # apply_process() counted only those with a record
    scanner.fds = fds


def _apply_process(scanner, pid, held):
    links = []
    fd_hits = []
    mappings = []
    for kind, _pid, fd, rng, _flags, st, path in held:
        if not path.startswith("/"):
            continue
        if kind == "fd":
            if path.endswith(DELETED_SUFFIX):
                if st.st_nlink == 0 and st.st_dev != scanner.shm_dev:
                    fd_hits.append((str(fd), st, path))
            elif st.st_nlink and st.st_dev in scanner.nfs_devs and scanner.is_silly_rename(path):
                fd_hits.append((str(fd), st, path))
        elif kind == "mmap":
            if path.endswith(DELETED_SUFFIX) and st.st_dev != scanner.shm_dev:
                mappings.append(("%08x-%08x" % rng, st, path[:-_SUFFIX_LEN]))
        elif path.endswith(DELETED_SUFFIX) and st.st_nlink == 0:
            links.append((kind, st, path))
    scanner.apply_process((pid, links, 0, fd_hits, None, False))
    if mappings:
        _apply_mappings(scanner, pid, mappings)


def _apply_mappings(scanner, pid, mappings):
    """Like Scanner._scan_mappings, from stat results the kernel gave for each mapping."""
    seen_here = {}
    for rng, st, path in mappings:
        key = (st.st_dev, st.st_ino)
        if key in seen_here:
            orphan = seen_here[key]
            if orphan is not None:
                orphan.mmap_pids[pid][1] += 1
            continue
        orphan = None
        if st.st_nlink == 0 and not scanner.is_nameless(path, st):
            orphan = scanner.orphans.get(key)
            if orphan is None:
                orphan = scanner.new_orphan(key, key[0], key[1], st, path)
            if orphan.mmap_pids is None:
                orphan.mmap_pids = {}
            orphan.mmap_pids[pid] = [rng, 1]
            orphan.holders.append(("mmap", pid, rng))
        seen_here[key] = orphan
