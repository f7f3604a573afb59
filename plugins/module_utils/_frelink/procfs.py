# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Parsers for per-process /proc text: maps, fdinfo.

Standard library only; they take text/bytes so that they can be tested on captured files.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import parse_hex_device

DELETED_SUFFIX = " (deleted)"
_DELETED_LINE_END = b" (deleted)\n"


def parse_deleted_mappings(data):
    """Mappings of a /proc/PID/maps buffer whose file name ends in ' (deleted)'.

    Returns a list of (range 'start-end', perms, offset, maps_dev, ino, path) with
    maps_dev the st_dev form of the 'MM:mm' field (the superblock's device, which
    for btrfs differs from a subvolume file's st_dev) and path without the suffix
    decoded as text.  The suffix only selects candidates; callers confirm with stat.
    """
    if not data.endswith(b"\n"):
        data += b"\n"
    if _DELETED_LINE_END not in data:
        return []
    found = []
    for line in data.split(b"\n"):
        if not line.endswith(b" (deleted)"):
            continue
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith(b"/"):
            continue
        ino = int(fields[4])
        if ino == 0:
            continue
        # maps escapes only '\n' in names (seq_file_path(m, file, "\n")).
        path = fields[5][:-len(DELETED_SUFFIX)].replace(b"\\012", b"\n").decode("utf-8", "surrogateescape")
        found.append((
            fields[0].decode("ascii"),
            fields[1].decode("ascii"),
            int(fields[2], 16),
            parse_hex_device(fields[3].decode("ascii")),
            ino,
            path,
        ))
    return found


def parse_fdinfo(text):
    """pos, flags (int, octal in the file) and mnt_id of a /proc/PID/fdinfo/N text."""
    info = {}
    for line in text.splitlines():
        key, _sep, value = line.partition(":")
        value = value.strip()
        if key == "pos":
            info["pos"] = int(value)
        elif key == "flags":
            info["flags"] = int(value, 8)
        elif key == "mnt_id":
            info["mnt_id"] = int(value)
    return info


def access_mode(flags):
    """'r', 'w' or 'rw' (+ 'a' for O_APPEND) from open flags."""
    mode = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}.get(flags & os.O_ACCMODE, "?")
    if flags & os.O_APPEND:
        mode += "a"
    return mode
