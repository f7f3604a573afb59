# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Python mirror of kmod/uapi/frelink.h: the /dev/frelink relink and listing ioctls.

Standard library only.  tests/unit/plugins/module_utils/_frelink/test_kmod_abi.py compiles the C header
and checks every constant and the structure layout below against it.  The
header carries the Linux-syscall-note, so this mirror of its interface is
licensed like the rest of the collection (GPL-3.0-or-later).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import ctypes
import errno
import fcntl
import os
import struct

DEVICE_PATH = "/dev/frelink"
MODULE_NAME = "frelink"
SYSFS_MODULE_PATH = "/sys/module/frelink"

NAME_SIZE = 256  # FRELINK_NAME_SIZE: NAME_MAX + 1

BY_FD = 0x1  # FRELINK_BY_FD
BY_INODE = 0x2  # FRELINK_BY_INODE
GENERATION = 0x4  # FRELINK_GENERATION: with BY_INODE, the generation field is set

# struct frelink_relink: flags, src_fd, dir_fd, reserved0, dev, ino,
# generation, reserved[3], name[NAME_SIZE]; native x86-64/aarch64 layout, no padding.
RELINK_STRUCT = struct.Struct("=IiiIQQQ3Q%ds" % NAME_SIZE)
RELINK_STRUCT_SIZE = RELINK_STRUCT.size  # 320

IOC_MAGIC = 0xF4
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction, magic, nr, size):
    return (direction << _IOC_DIRSHIFT) | (magic << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


IOC_RELINK = _ioc(_IOC_WRITE, IOC_MAGIC, 0x01, RELINK_STRUCT_SIZE)

# struct frelink_identify: dir_fd, flags, dev, ino, generation (out), reserved[4]
IDENTIFY_STRUCT = struct.Struct("=iIQQQ4Q")
IDENTIFY_STRUCT_SIZE = IDENTIFY_STRUCT.size  # 64
IOC_IDENTIFY = _ioc(_IOC_READ | _IOC_WRITE, IOC_MAGIC, 0x03, IDENTIFY_STRUCT_SIZE)

# FRELINK_IOC_HELD: the kernel lists the handles on deleted files of every process.
HELD_FD = 0x01  # FRELINK_HELD_FD
HELD_MMAP = 0x02  # FRELINK_HELD_MMAP
HELD_EXE = 0x04  # FRELINK_HELD_EXE
HELD_CWD = 0x08  # FRELINK_HELD_CWD
HELD_ROOT = 0x10  # FRELINK_HELD_ROOT
HELD_ALL = 0x1F  # FRELINK_HELD_ALL
HELD_KINDS = {"fd": HELD_FD, "mmap": HELD_MMAP, "exe": HELD_EXE, "cwd": HELD_CWD, "root": HELD_ROOT}
HELD_KIND_NAMES = {bit: name for name, bit in HELD_KINDS.items()}
HELD_NFS_RENAMED = 0x1  # FRELINK_HELD_NFS_RENAMED
HELD_SPLIT = 0x1  # FRELINK_HELD_SPLIT: a process's records may span calls

# struct frelink_held: buf, buf_size, kinds, next_pid, used, processes, fds, flags, next_kind, next_at,
# reserved[2]
HELD_STRUCT = struct.Struct("=QIIiIIIIIQ2Q")
HELD_STRUCT_SIZE = HELD_STRUCT.size  # 64
# struct frelink_held_record, then path[]; dev..blocks named as os.stat_result names them
HELD_RECORD_FIELDS = ("rec_len", "kind", "pid", "fd", "flags", "start", "end", "st_dev", "st_ino", "st_mode",
                      "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "mtime_sec", "mtime_nsec",
                      "open_flags", "pos")
HELD_RECORD_STRUCT = struct.Struct("=HHiiIQQQQIIIIQQqIIq")
HELD_RECORD_SIZE = HELD_RECORD_STRUCT.size  # 104
IOC_HELD = _ioc(_IOC_READ | _IOC_WRITE, IOC_MAGIC, 0x02, HELD_STRUCT_SIZE)
HELD_BUF_START = 1 << 20
HELD_BUF_MAX = 1 << 30  # FRELINK_HELD_MAX_BUF

# The filesystems the module relinks on, by superblock magic: exactly those the
# suite proves (kmod/frelink.c has the same table; test_kmod_abi compares).
# Everything else is refused with EOPNOTSUPP.  ext2 and ext3 are served by ext4.
RELINK_MAGICS = {
    "ext4": 0xEF53,
    "xfs": 0x58465342,
    "btrfs": 0x9123683E,
    "tmpfs": 0x01021994,
}
# mountinfo fstype names whose superblock has one of the magics above
RELINK_FSTYPES = frozenset(("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"))
# overlayfs, by descriptor only: the module relinks the upper layer's inode
# (the one holding the file's data) into a directory on the upper layer's
# filesystem, which must itself be in RELINK_FSTYPES.  By (st_dev, st_ino)
# overlayfs is refused (EOPNOTSUPP): its st_dev is anonymous.
RELINK_VIA_UPPER_MAGICS = {"overlay": 0x794C7630}
RELINK_VIA_UPPER_FSTYPES = frozenset(RELINK_VIA_UPPER_MAGICS)


def relink_supported(fstype, upper_fstype=None):
    """True when the module can relink a file of fstype (overlay: of upper_fstype)."""
    if fstype in RELINK_VIA_UPPER_FSTYPES:
        return upper_fstype in RELINK_FSTYPES
    return fstype in RELINK_FSTYPES


# One errno per refusal (see the comment of struct frelink_relink).  The
# hint says what happened and what to do next.
HINTS = {
    errno.EPERM: "relinking needs root (CAP_SYS_ADMIN); run it with become: true",
    errno.EACCES: "%s is only accessible to root (mode 0600); run it with become: true" % DEVICE_PATH,
    errno.ENODEV: "the frelink kernel module is not loaded; deploy it with the frelink.frelink.frelink_kmod role "
                  "or run 'modprobe frelink', or use the reflink/copy fallback",
    errno.EINVAL: "malformed request (flags, reserved fields or unused fields set); this is a bug in the caller",
    errno.ENAMETOOLONG: "the new name is longer than 255 bytes; choose a shorter name",
    errno.EILSEQ: "the new name must be a single path component: not empty, not '.' or '..', no '/' and no NUL; "
                  "choose another name",
    errno.EBADF: "the source or directory descriptor is not open; the holder may have closed it, rescan and retry",
    errno.ENOTDIR: "the destination is not a directory; give an existing directory on the same filesystem",
    errno.EMEDIUMTYPE: "the inode is not a regular file; only regular files can be relinked, copy its contents instead",
    errno.EMLINK: "the inode still has a name (link count is not 0): nothing to undelete, or another relink or link "
                  "just won; find its current name with 'find MOUNTPOINT -xdev -inum INO'",
    errno.EXDEV: "the destination directory is on another filesystem or btrfs subvolume than the deleted file; "
                 "choose a directory on the same filesystem (the deleted file's mount point), or use the copy fallback",
    errno.EOPNOTSUPP: "frelink does not relink on this filesystem (only ext2/ext3/ext4, xfs, btrfs, tmpfs, and "
                      "overlayfs by descriptor through its upper layer); use the copy fallback",
    errno.ENOENT: "by (st_dev, st_ino): no deleted regular file with that number is in memory any more (its last "
                  "holder let go), nothing left to relink; by descriptor: the destination directory was deleted, "
                  "choose an existing one",
    errno.ESTALE: "the deleted file with this (st_dev, st_ino) is not the one the scan saw (its generation differs): "
                  "its holder let go and another deleted file got the freed inode number; nothing was changed, "
                  "rescan",
    errno.EEXIST: "the new name already exists in the destination directory; nothing was overwritten, "
                  "choose another name or move the existing file away",
    errno.EROFS: "a read-only mount is in the way: the destination's (remount it read-write or choose a writable "
                 "mount of the same filesystem), or by descriptor the one the deleted file was opened through "
                 "(a file seen read-only never gains a name through a writable mount)",
    errno.EBUSY: "the filesystem is frozen (fsfreeze, or a snapshot or backup tool froze it); nothing was changed "
                 "and nothing waited: retry after 'fsfreeze --unfreeze MOUNTPOINT' or when the snapshot is done",
    errno.ENOLINK: "the file was created with O_TMPFILE | O_EXCL: its creator asked the kernel that it never get a "
                   "name, and frelink keeps that promise (so it does for an O_TMPFILE that its holder linked and "
                   "deleted again, which the kernel cannot tell apart); nothing was changed, copy its contents "
                   "instead (fallback: [copy])",
    errno.ENOSPC: "the filesystem has no room for the new directory entry; free some space and retry",
    errno.EDQUOT: "the quota of the directory's owner is exhausted; raise it or free space and retry",
}


# What an errno means depends on the form of the request; these replace
# HINTS for errors of the ioctl itself (not of opening the device).
HINTS_BY_FD = {
    errno.EPERM: "the link was refused: the deleted file or the destination directory is immutable or append-only "
                 "(lsattr), or fs.protected_hardlinks applies: the file belongs to another user and the caller "
                 "has neither CAP_FOWNER nor read and write access to it (as linkat() refuses it), or the caller "
                 "lacks CAP_SYS_ADMIN (run it with become: true)",
    errno.EACCES: "a security module (SELinux, Smack) refused the link; see the audit log",
    errno.EMLINK: HINTS[errno.EMLINK] + "; on overlayfs also when the file has no copy in the upper layer: its "
                  "lower-layer copy still has its name there, nothing to undelete",
    errno.EXDEV: HINTS[errno.EXDEV] + "; for a file on overlayfs choose a directory on the upper layer's "
                 "filesystem, outside the overlay's upper, work and lower directories",
    errno.ENOENT: "the destination directory was deleted; choose an existing directory",
    errno.EROFS: "a read-only mount is in the way: the destination's, or the one the deleted file was opened through "
                 "(a file seen through a read-only mount, e.g. a read-only bind mount, never gains a name through a "
                 "writable one); open it through a writable mount of its filesystem and choose a writable destination",
}
HINTS_BY_INODE = {
    errno.EPERM: HINTS_BY_FD[errno.EPERM],
    errno.EACCES: HINTS_BY_FD[errno.EACCES],
    errno.EOPNOTSUPP: HINTS[errno.EOPNOTSUPP] + "; a file on overlayfs can only be relinked by descriptor",
    errno.ENOENT: "no deleted regular file with this (st_dev, st_ino) is in memory any more: its last holder let go "
                  "and the filesystem freed it (or it is not a deleted regular file); nothing left to relink",
    errno.EROFS: "the destination is read-only; remount it read-write (or choose a writable mount of the same "
                 "filesystem)",
}


def hint_for(flags, err):
    """The hint for errno err of a request of form flags (BY_FD or BY_INODE)."""
    table = HINTS_BY_FD if flags == BY_FD else HINTS_BY_INODE
    return table.get(err) or HINTS.get(err)


# errno.errorcode calls 95 ENOTSUP; the header (and the kernel) say EOPNOTSUPP.
_ERRNO_NAMES = {errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(err):
    """Symbolic name of err as the header documents it, e.g. 'EEXIST'."""
    return _ERRNO_NAMES.get(err) or errno.errorcode.get(err, str(err))


class RelinkError(OSError):
    """A refused or failed relink.  .errno is the kernel's errno, .hint says what to do."""

    def __init__(self, err, hint=None):
        super(RelinkError, self).__init__(err, os.strerror(err))
        self.hint = hint or HINTS.get(err, "relink failed: %s" % os.strerror(err))

    def __str__(self):
        return "%s (errno %s %s): %s" % (self.strerror, self.errno, errno_name(self.errno), self.hint)


def module_loaded():
    """True when the frelink module is loaded (its sysfs directory exists)."""
    return os.path.isdir(SYSFS_MODULE_PATH)


def encode_name(name):
    """Return name as the fixed-size, NUL-terminated field, or raise RelinkError."""
    raw = os.fsencode(name) if not isinstance(name, bytes) else name
    if b"\0" in raw:
        raise RelinkError(errno.EILSEQ)
    if len(raw) >= NAME_SIZE:
        raise RelinkError(errno.ENAMETOOLONG)
    return raw


def pack_request(flags, src_fd=-1, dir_fd=-1, dev=0, ino=0, name=b"", reserved0=0, generation=0,
                 reserved=(0, 0, 0)):
    """Build the raw struct frelink_relink bytes (also used by tests for malformed requests)."""
    return RELINK_STRUCT.pack(flags, src_fd, dir_fd, reserved0, dev, ino, generation, *(tuple(reserved) + (name,)))


def _ioctl(flags, request):
    try:
        dev_fd = os.open(DEVICE_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise RelinkError(errno.ENODEV)
        raise RelinkError(exc.errno)
    try:
        fcntl.ioctl(dev_fd, IOC_RELINK, request)
    except OSError as exc:
        raise RelinkError(exc.errno, hint_for(flags, exc.errno))
    finally:
        os.close(dev_fd)


def relink_by_fd(src_fd, dir_fd, name):
    """Give the deleted file open as src_fd the name `name` in directory dir_fd.

    On overlayfs the upper layer's inode is relinked, into a directory on the
    upper layer's filesystem; open src_fd O_PATH or read-only.
    """
    _ioctl(BY_FD, pack_request(BY_FD, src_fd=src_fd, dir_fd=dir_fd, name=encode_name(name)))


def relink_by_inode(st_dev, st_ino, dir_fd, name, generation=None):
    """Give the deleted in-memory inode (st_dev, st_ino) the name `name` in directory dir_fd.

    With generation (what inode_generation() reported for it), the kernel refuses with
    ESTALE an inode of that number with another generation: a file that got the number
    after the one identified was freed.
    """
    flags = BY_INODE if generation is None else BY_INODE | GENERATION
    _ioctl(BY_INODE, pack_request(flags, dir_fd=dir_fd, dev=st_dev, ino=st_ino, generation=generation or 0,
                                  name=encode_name(name)))


def inode_generation(st_dev, st_ino, dir_fd):
    """The generation (i_generation) of the deleted in-memory inode (st_dev, st_ino), for a
    file no descriptor reaches (a loop device's backing file, a swap file); dir_fd is a
    directory on its filesystem.  Raises OSError: ENOENT (no such deleted file in memory),
    ENOTTY (a module without FRELINK_IOC_IDENTIFY), EXDEV, EOPNOTSUPP, EPERM, ENOENT
    without the module (the device node is missing)."""
    dev_fd = os.open(DEVICE_PATH, os.O_RDONLY | os.O_CLOEXEC)
    try:
        request = bytearray(IDENTIFY_STRUCT.pack(dir_fd, 0, st_dev, st_ino, 0, 0, 0, 0, 0))
        fcntl.ioctl(dev_fd, IOC_IDENTIFY, request, True)
    finally:
        os.close(dev_fd)
    return IDENTIFY_STRUCT.unpack(bytes(request))[4]


class HeldRecord(collections.namedtuple("HeldRecord", HELD_RECORD_FIELDS)):
    """The fixed fields of one listing record.  Its st_* fields are what fstat(2) of the
    handle reports, named as os.stat_result names them: a record serves as its stat."""

    __slots__ = ()

    @property
    def st_mtime(self):
        return self.mtime_sec + self.mtime_nsec / 1e9


def pack_held(buf, buf_size, kinds, next_pid=0, reserved=(0, 0), flags=0, next_kind=0, next_at=0):
    """Build the raw struct frelink_held bytes (also used by tests for malformed requests)."""
    return HELD_STRUCT.pack(buf, buf_size, kinds, next_pid, 0, 0, 0, flags, next_kind, next_at, *reserved)


def iter_held_records(data):
    """(HeldRecord, path bytes) of each record in DATA."""
    unpack_from = HELD_RECORD_STRUCT.unpack_from
    find = data.find
    new = tuple.__new__
    used = len(data)
    offset = 0
    while offset < used:
        fields = unpack_from(data, offset)
        rec_len = fields[0]
        end = find(b"\0", offset + HELD_RECORD_SIZE, offset + rec_len)
        if rec_len < HELD_RECORD_SIZE or offset + rec_len > used or end < 0:
            raise ValueError("malformed record at offset %d (rec_len %d of %d bytes)" % (offset, rec_len, used))
        yield new(HeldRecord, fields), data[offset + HELD_RECORD_SIZE:end]
        offset += rec_len


def parse_held_records(data, used):
    """[(kind name, pid, fd, (start, end), flags, HeldRecord as the stat, path, (open_flags, pos))]
    of the first USED bytes."""
    return [(HELD_KIND_NAMES.get(r.kind, r.kind), r.pid, r.fd, (r.start, r.end), r.flags, r, os.fsdecode(raw),
             (r.open_flags, r.pos)) for r, raw in iter_held_records(data[:used])]


def list_held_raw(kinds=HELD_ALL, buf_size=HELD_BUF_START, buf_max=HELD_BUF_MAX):
    """Every handle on a deleted (or NFS silly-renamed) file, listed by the kernel.

    Returns (chunks, processes, fds): the record bytes of each call (iter_held_records()
    reads them) and the counts of processes and descriptors looked at.  A process's records
    may span calls (FRELINK_HELD_SPLIT: the call resumes inside it), so the buffer only
    grows when one record does not fit; a module without FRELINK_HELD_SPLIT (EINVAL for
    it) gets whole processes as before.  Raises OSError: ENOENT without the module, ENOTTY
    from a module without this ioctl, EPERM without CAP_SYS_ADMIN and CAP_SYS_PTRACE.
    """
    dev_fd = os.open(DEVICE_PATH, os.O_RDONLY | os.O_CLOEXEC)
    chunks = []
    processes = fds = 0
    next_pid = next_kind = next_at = 0
    flags = HELD_SPLIT
    try:
        buf = ctypes.create_string_buffer(buf_size)
        while True:
            request = bytearray(pack_held(ctypes.addressof(buf), buf_size, kinds, next_pid, flags=flags,
                                          next_kind=next_kind, next_at=next_at))
            try:
                fcntl.ioctl(dev_fd, IOC_HELD, request, True)
            except OSError as exc:
                if exc.errno == errno.EINVAL and flags and not chunks:
                    flags = 0  # an older module: whole processes only
                    continue
                if exc.errno != errno.EOVERFLOW or buf_size >= buf_max:
                    raise
                buf_size = min(buf_size * 4, buf_max)  # one record (or process) needs more room
                buf = ctypes.create_string_buffer(buf_size)
                continue
            fields = HELD_STRUCT.unpack(bytes(request))
            next_pid, used, seen, seen_fds = fields[3:7]
            next_kind, next_at = fields[8:10]
            chunks.append(ctypes.string_at(ctypes.addressof(buf), used))
            processes += seen
            fds += seen_fds
            if next_pid == 0:
                return chunks, processes, fds
    finally:
        os.close(dev_fd)


def list_held(kinds=HELD_ALL, buf_size=HELD_BUF_START, buf_max=HELD_BUF_MAX):
    """list_held_raw() with the records parsed (parse_held_records()), processes, fds."""
    chunks, processes, fds = list_held_raw(kinds, buf_size, buf_max)
    return [record for chunk in chunks for record in parse_held_records(chunk, len(chunk))], processes, fds
