# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""archive_dir: a verified gzip copy of a file before it is truncated, on another filesystem with room."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import gzip
import hashlib
import os
import stat
import zlib

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string

CHUNK = 1 << 20
# gzip of incompressible data is larger than the data: deflate's stored blocks cost 5 bytes in 16 KiB
_OVERHEAD_NUM, _OVERHEAD_DEN, _HEADER = 1, 3000, 4096


def room_needed(size):
    """Bytes archive_dir must have free for a file of SIZE bytes (its gzip may be no smaller)."""
    return size + size * _OVERHEAD_NUM // _OVERHEAD_DEN + _HEADER


class ArchiveDir(object):
    """archive_dir, checked once: a directory, not on the freed filesystems, with room for all archives."""

    def __init__(self, path):
        self.path = path
        try:
            st = os.stat(path)
        except OSError as exc:
            raise RestoreError("archive_dir %s cannot be used: %s; create it (on another filesystem than the one "
                               "to free) or leave archive_dir out; nothing was changed" % (path, exc.strerror))
        if not stat.S_ISDIR(st.st_mode):
            raise RestoreError("archive_dir %s is not a directory; nothing was changed" % path)
        self.dev = st.st_dev
        vfs = os.statvfs(path)
        self.free = vfs.f_bavail * vfs.f_frsize

    def check(self, files):
        """FILES: [(path, dev, size)]: refuse (RestoreError) when archive_dir is on one of their filesystems or
        lacks room for them all."""
        same = [(p, dev) for p, dev, _size in files if dev == self.dev]
        if same:
            raise RestoreError(
                "archive_dir %s is on the filesystem being freed (device %s, which holds %s): the copy would take "
                "the space the truncation gives back; choose a directory on another filesystem; nothing was changed"
                % (self.path, device_string(self.dev), ", ".join(p for p, _dev in same)))
        need = sum(room_needed(size) for _p, _dev, size in files)
        if need > self.free:
            raise RestoreError(
                "archive_dir %s has %d bytes free, and archiving %d files of %d bytes in all needs up to %d bytes "
                "(gzip of incompressible data is no smaller); free space there or choose another directory; "
                "nothing was changed" % (self.path, self.free, len(files), sum(s for _p, _d, s in files), need))

    def name_for(self, path, dev, ino):
        """A new name in archive_dir: the file's name, its device and inode (never overwrites)."""
        base = path.rstrip("/").rsplit("/", 1)[-1] or "file"
        return "%s.%s.%d.gz" % (base, device_string(dev).replace(":", "-"), ino)

    def write(self, src_fd, path, dev, ino):
        """Copy the whole file of SRC_FD (read from offset 0 with pread) into a new gzip file in archive_dir,
        read it back and compare.  Returns {archive, size, sha256, compressed}; raises RestoreError and
        leaves nothing behind when it fails."""
        name = self.name_for(path, dev, ino)
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        tmp = ".%s.frelink-tmp" % name
        try:
            final = name
            n = 0
            while _exists(final, dir_fd):
                n += 1
                final = "%s.%d" % (name, n)
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                digest, size = _compress(src_fd, out_fd)
                os.fsync(out_fd)
                compressed = os.fstat(out_fd).st_size
            except BaseException:
                os.close(out_fd)
                os.unlink(tmp, dir_fd=dir_fd)
                raise
            os.close(out_fd)
            check = _gunzip_sha256(tmp, dir_fd)
            if check != (digest, size):
                os.unlink(tmp, dir_fd=dir_fd)
                raise RestoreError("the gzip copy of %s in %s does not read back as written (%s bytes, sha256 %s; "
                                   "read %s bytes, sha256 %s); nothing was truncated" % (
                                       path, self.path, size, digest, check[1], check[0]))
            os.link(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.unlink(tmp, dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            if _exists(tmp, dir_fd):
                os.unlink(tmp, dir_fd=dir_fd)
            raise RestoreError("archiving %s into %s failed: %s; nothing was truncated"
                               % (path, self.path, exc.strerror))
        finally:
            os.close(dir_fd)
        record = {"size": size, "sha256": digest, "compressed": compressed}
        # a name that is not UTF-8 as text plus archive_b64 (names.put; names.raw gives it back)
        names.put(record, "archive", os.path.join(self.path, final))
        return record


def _exists(name, dir_fd):
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _compress(src_fd, out_fd):
    """gzip everything SRC_FD has into OUT_FD; (sha256, size) of the bytes read."""
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(os.dup(out_fd), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        while True:
            chunk = os.pread(src_fd, CHUNK, size)
            if not chunk:
                break
            digest.update(chunk)
            gz.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _gunzip_sha256(name, dir_fd):
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            while True:
                chunk = gz.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return ("unreadable: %s" % exc, size)
    return digest.hexdigest(), size
