# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Loop devices: backing file, identity of the backing inode (LOOP_GET_STATUS64), mounts.

Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import fcntl
import os
import struct

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import (
    parse_device_string,
    read_text,
)

LOOP_GET_STATUS64 = 0x4C05  # include/uapi/linux/loop.h

# struct loop_info64: lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit (u64),
# lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags (u32),
# lo_file_name[64], lo_crypt_name[64], lo_encrypt_key[32] (u8), lo_init[2] (u64).
LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")  # 232 bytes

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8
LO_FLAGS_DIRECT_IO = 16


def decode_huge_dev(encoded):
    """st_dev from the kernel's huge_encode_dev() form used by lo_device/lo_rdevice.

    new_encode_dev(): minor low byte in bits 0-7, major in bits 8-19, the rest
    of the minor from bit 20 up.  glibc's makedev() agrees for majors below
    4096, but decode explicitly so a change on either side cannot go unnoticed.
    """
    major = (encoded & 0xFFF00) >> 8
    minor = (encoded & 0xFF) | ((encoded >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def parse_loop_info64(buf):
    """Fields of a struct loop_info64 buffer (as returned by LOOP_GET_STATUS64) as a dict."""
    (lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit,
     lo_number, _encrypt_type, _key_size, lo_flags,
     lo_file_name, _crypt_name, _key, _init0, _init1) = LOOP_INFO64.unpack(bytes(buf[:LOOP_INFO64.size]))
    return {
        "backing_dev": decode_huge_dev(lo_device),
        "backing_ino": lo_inode,
        "backing_rdev": decode_huge_dev(lo_rdevice),
        "offset": lo_offset,
        "sizelimit": lo_sizelimit,
        "number": lo_number,
        "flags": lo_flags,
        "read_only": bool(lo_flags & LO_FLAGS_READ_ONLY),
        "autoclear": bool(lo_flags & LO_FLAGS_AUTOCLEAR),
        "file_name": lo_file_name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
    }


def loop_status(device_path):
    """LOOP_GET_STATUS64 of a loop device node (needs read access to it, i.e. root)."""
    fd = os.open(device_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        buf = bytearray(LOOP_INFO64.size)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, buf, True)
    finally:
        os.close(fd)
    return parse_loop_info64(buf)


def bound_loops(sys_block="/sys/block"):
    """Bound loop devices: list of dicts name, device (/dev/loopN), devs (st_dev of it and its partitions), backing_file.

    backing_file is the kernel's text (d_path), so it ends in ' (deleted)' once
    the backing file's dentry was unlinked.  Devices without a backing file are skipped.
    """
    loops = []
    try:
        names = os.listdir(sys_block)
    except OSError:
        return loops
    for name in names:
        if not name.startswith("loop"):
            continue
        base = "%s/%s" % (sys_block, name)
        try:
            backing = read_text(base + "/loop/backing_file").rstrip("\n")
            devs = [parse_device_string(read_text(base + "/dev").strip())]
        except OSError:
            continue  # unbound (no loop/ directory) or gone meanwhile
        try:
            for entry in os.listdir(base):
                if entry.startswith(name + "p"):
                    try:
                        devs.append(parse_device_string(read_text("%s/%s/dev" % (base, entry)).strip()))
                    except OSError:
                        pass
        except OSError:
            pass
        loops.append({"name": name, "device": "/dev/" + name, "devs": devs, "backing_file": backing})
    loops.sort(key=lambda loop: loop["name"])
    return loops
