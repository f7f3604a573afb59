# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The facts of deleted-but-held files: discovery (discovery.py), then
enrichment of what is listed (enrich.py).

Public API:

- scan(include=None, exclude=None, min_size=0, kinds=None, limit=1000) -> facts dict
  {"summary": {...}, "orphans": [...], "scan": {"complete": bool, "warnings": [...]}}
- find_orphan(dev, ino, kinds=None) -> orphan entry or None
- resolve_selector(selector) -> list of orphan entries (selector: /proc/PID/fd/N,
  /proc/PID/map_files/A-B, /proc/PID/exe|cwd|root, /dev/loopN, an original path, or 'dev:ino')
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink import overlay
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.discovery import BACKENDS, KINDS, KernelListingError, Scanner, collector_paused
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.enrich import Report
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.loop import loop_status
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import parse_device_string

# The summary counts every orphan; the entries list the largest DEFAULT_LIMIT
# (about 50 KB of facts): large host facts slow every later task of a play.
DEFAULT_LIMIT = 100
__all__ = ["BACKENDS", "DEFAULT_LIMIT", "KINDS", "KernelListingError", "SelectorError", "find_orphan", "resolve_selector", "resolve_selector_and_scan", "scan"]


def _relink_available():
    return kmod_abi.module_loaded()


def _facts(scanner, selected, limit):
    listed = selected if limit is None else selected[:limit]
    relink = _relink_available()
    report = Report(scanner)
    return {
        "summary": report.summary(selected, len(listed)),
        "orphans": [report.entry(orphan, relink) for orphan in listed],
        "scan": {
            "complete": scanner.complete,
            "warnings": [names.shown(warning) for warning in scanner.warnings],
            "processes": scanner.processes,
            "fds": scanner.fds,
            "kinds": sorted(scanner.kinds, key=KINDS.index),
            "euid": scanner.euid,
            "backend": scanner.backend_used,
        },
    }


def scan(include=None, exclude=None, min_size=0, kinds=None, limit=DEFAULT_LIMIT, backend="auto"):
    """Scan the host and return the facts dict (see docs/facts.md and the module's RETURN).

    include/exclude: fnmatch globs on the original path ('*' also matches '/').
    min_size: bytes.  kinds: subset of KINDS to look for.  limit: max orphans listed,
    largest allocated first (None or 0 for all); the summary counts all that match.
    backend: one of BACKENDS (discovery.py); "kernel" raises KernelListingError when the
    frelink module cannot list.
    """
    with collector_paused():
        scanner = Scanner(kinds, backend=backend).collect()
        selected = scanner.select(include, exclude, min_size)
        return _facts(scanner, selected, limit or None)


def find_orphan(dev, ino, kinds=None):
    """The orphan entry of inode (dev, ino), or None if nothing holds it deleted."""
    scanner = Scanner(kinds).collect()
    orphan = scanner.orphans.get((dev, ino))
    if orphan is None:
        return None
    return Report(scanner).entry(orphan, _relink_available())


def overlay_upper(st_dev, path, pid=None):
    """The upper layer of the overlay mount of device st_dev (our namespace, or the holder
    pid's), or None when st_dev is not an overlay: for reruns on a relinked overlay file."""
    scanner = Scanner(kinds=["loop"])
    report = Report(scanner)
    table, prefix = report.table_for(pid)
    mount = table.lookup(st_dev, path)
    if mount is None or mount["fstype"] != overlay.OVERLAY_FSTYPE:
        return None
    return overlay.upper_layer(mount, prefix, scanner.mounts)


class SelectorError(ValueError):
    """A handle-like selector that designates nothing (the process or loop device is gone)."""


def resolve_selector(selector, kinds=None):
    """Orphan entries a selector designates (empty list: nothing deleted is held there).

    selector: '/proc/PID/fd/N', '/proc/PID/map_files/A-B', '/proc/PID/exe|cwd|root'
    (the inode behind that handle), '/dev/loopN' (its backing file), 'MAJ:MIN:INO',
    or an original path (every orphan whose path or host_path is that path, or
    that a mount holds at that path: its mount point, /proc/PID/root/... for another namespace).
    Raises SelectorError for a handle that cannot be opened.
    """
    return resolve_selector_and_scan(selector, kinds)[0]


def resolve_selector_and_scan(selector, kinds=None):
    """(entries, scan): resolve_selector() and the facts' scan part (completeness, warnings)."""
    key = _selector_key(selector)
    scanner = Scanner(kinds).collect()
    scan_info = {"complete": scanner.complete, "warnings": [names.shown(warning) for warning in scanner.warnings],
                 "euid": scanner.euid}
    return _resolve(scanner, key, selector), scan_info


def _resolve(scanner, key, selector):
    report = Report(scanner)
    relink = _relink_available()
    if key is not None:
        orphan = scanner.orphans.get(key)
        return [report.entry(orphan, relink)] if orphan is not None else []
    found = []
    for orphan in scanner.select():
        if names.matches(selector, orphan.path):
            found.append(report.entry(orphan, relink))
            continue
        for kind, pid, detail in orphan.holders:
            if (pid is not None and names.matches(selector, report.holder_prefix(pid) + orphan.path)) or \
                    (kind == "mount" and names.matches(selector, detail["host_path"])):
                found.append(report.entry(orphan, relink))
                break
    return found


def _selector_key(selector):
    """(dev, ino) for handle-like selectors, None for an original path."""
    parts = selector.split("/")
    try:
        if selector.startswith("/proc/") and len(parts) >= 4 and parts[2].isdigit():
            st = os.stat(selector)
            return (st.st_dev, st.st_ino)
        if selector.startswith("/dev/loop"):
            status = loop_status(selector)
            return (status["backing_dev"], status["backing_ino"])
    except OSError as exc:
        raise SelectorError("%s: %s" % (selector, exc.strerror))
    fields = selector.split(":")
    if len(fields) == 3 and all(f.isdigit() for f in fields):
        return (parse_device_string("%s:%s" % (fields[0], fields[1])), int(fields[2]))
    return None
