# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Copy and reflink: a new inode with the deleted file's bytes, committed
only when it is verified against the source."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import os
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.destination import commit_noreplace
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import KMOD_ROLE, RestoreError

# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409
CHUNK = 1 << 20


def open_source(target):
    """An fd on the orphan itself, checked to be the very inode selected
    (the pid may have been reused since the scan)."""
    path = target.open_path
    if not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise RestoreError("cannot open %s for %s: %s (the holder may have closed it; rerun to find its "
                           "current holders)" % (path, target.path, exc.strerror))
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (target.dev, target.ino):
        os.close(fd)
        raise RestoreError("%s no longer refers to %s (inode %s): the holder changed since the scan; rerun"
                           % (path, target.path, target.ino))
    return fd


def _hash_fd(fd, length=None):
    """sha256 and length of the first `length` bytes of fd (all of it when
    None), read from offset 0."""
    digest = hashlib.sha256()
    offset = 0
    while length is None or offset < length:
        want = CHUNK if length is None else min(CHUNK, length - offset)
        chunk = os.pread(fd, want, offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest(), offset


def _copy_range(src_fd, dst_fd, offset, count):
    """Copy count bytes at offset with copy_file_range (in-kernel, and server-side on
    NFS 4.2 and CIFS); read and write where the kernel refuses it for this pair."""
    end = offset + count
    while offset < end:
        try:
            done = os.copy_file_range(src_fd, dst_fd, end - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
            done = -1
        if done <= 0:
            break
        offset += done
    while offset < end:
        chunk = os.pread(src_fd, min(CHUNK, end - offset), offset)
        if not chunk:
            break
        view = memoryview(chunk)
        written = 0
        while written < len(chunk):
            written += os.pwrite(dst_fd, view[written:], offset + written)
        offset += len(chunk)
    return offset


def _data_segments(fd, length):
    """(offset, count) of the data in the first length bytes; holes are skipped, so a sparse
    file stays sparse.  One segment when the filesystem cannot tell (SEEK_DATA refused)."""
    segments = []
    offset = 0
    try:
        while offset < length:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            if start >= length:
                break
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), length)
            segments.append((start, stop - start))
            offset = stop
    except OSError:
        return [(0, length)]
    return segments


def _copy_data(src_fd, dst_fd, length):
    """Copy the first length bytes (the size seen before the copy: a file that keeps growing
    cannot make it run forever); returns the number of bytes the copy has."""
    for offset, count in _data_segments(src_fd, length):
        _copy_range(src_fd, dst_fd, offset, count)
    os.ftruncate(dst_fd, length)
    return length


def _xattr_names(fd):
    try:
        return sorted(os.listxattr(fd))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise


def _copy_metadata(src_fd, dst_fd, st):
    """Ownership, mode, extended attributes (user.*, trusted.*, security.* such as the SELinux
    label and file capabilities, POSIX ACLs as system.posix_acl_*) and times of the source.
    Returns (kept, not_kept): xattr names set, and 'name: why' for those the destination refused."""
    try:
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the copy belongs to the caller
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    kept, not_kept = [], []
    # chown clears security.capability, so it is set after the chown, and last
    names = sorted(_xattr_names(src_fd), key=lambda n: n == "security.capability")
    for name in names:
        try:
            value = os.getxattr(src_fd, name)
            os.setxattr(dst_fd, name, value)
            kept.append(name)
        except OSError as exc:
            not_kept.append("%s: %s" % (name, exc.strerror))
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    return kept, not_kept


def _temp_name(name):
    """A new hidden name beside name: at most 255 bytes even for multibyte names."""
    stem = os.fsencode(name)[:150].decode("utf-8", "ignore")  # a cut multibyte character is dropped
    return ".%s.frelink-%s.tmp" % (stem, os.urandom(6).hex())


def _create_temp(dir_fd, name):
    for _attempt in range(8):
        tmp_name = _temp_name(name)
        try:
            return tmp_name, os.open(tmp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as exc:
            raise RestoreError("cannot create a file beside %s: %s; choose a writable dest (or run as root with "
                               "become: true)" % (name, exc.strerror), errno=exc.errno)
    raise RestoreError("could not create a temporary file beside %s (8 names taken); remove the leftover "
                       ".*.frelink-*.tmp files there and retry" % name)


def _stat_key(st):
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def duplicate(method, src_fd, dest_dir, target, retries):
    """Reflink (FICLONE) or copy src_fd into a new file dest_dir.name.

    The result is only committed when the source stayed the same during the
    whole operation: its size/mtime/ctime did not move, and one read of the
    copy gives the same sha256 as the source read back after it.  Otherwise
    the temporary file is removed and the attempt repeated, retries times."""
    dir_fd, name = dest_dir.fd, dest_dir.name
    reasons = []
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        before = os.fstat(src_fd)
        tmp_name, tmp_fd = _create_temp(dir_fd, name)
        committed = False
        try:
            if method == "reflink":
                try:
                    fcntl.ioctl(tmp_fd, FICLONE, src_fd)
                except OSError as exc:
                    raise RestoreError(_reflink_refusal(exc, target, dest_dir), errno=exc.errno)
            else:
                try:
                    _copy_data(src_fd, tmp_fd, before.st_size)
                    os.fsync(tmp_fd)
                except OSError as exc:
                    raise RestoreError("copy of %s to %s failed: %s; the partial copy was removed, nothing else "
                                       "changed (free space on the destination, or choose another dest)"
                                       % (target.path, dest_dir.dest, exc.strerror), errno=exc.errno)
            os.fsync(tmp_fd)
            copy_sum, copy_len = _hash_fd(tmp_fd)
            src_sum, src_len = _hash_fd(src_fd, before.st_size)
            after = os.fstat(src_fd)
            if _stat_key(before) != _stat_key(after):
                reasons.append("attempt %d: the source changed (size %d -> %d, mtime/ctime moved)"
                               % (attempt, before.st_size, after.st_size))
                continue
            if (src_sum, src_len) != (copy_sum, copy_len):
                reasons.append("attempt %d: the source read again differs from the copy" % attempt)
                continue
            kept, not_kept = _copy_metadata(src_fd, tmp_fd, after)
            os.fsync(tmp_fd)
            try:
                commit_noreplace(dir_fd, tmp_name, name)
            except FileExistsError:
                raise RestoreError("%s appeared while frelink was copying; nothing was overwritten, the "
                                   "copy was removed; choose another dest" % dest_dir.dest)
            committed = True
            os.fsync(dir_fd)
            result = {
                "sha256": copy_sum, "source_sha256": src_sum, "size": copy_len, "attempts": attempt,
                "source_unchanged": True, "xattrs": kept,
            }
            if not_kept:
                result["xattrs_not_kept"] = not_kept
            return result
        finally:
            os.close(tmp_fd)
            if not committed:
                try:
                    os.unlink(tmp_name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
    raise RestoreError(
        "%s of %s was not committed: the file kept changing while it was read, in each of %d attempts (%s). "
        "A torn copy is never kept. Pause or stop the writer and retry, raise copy_retries, or restore it "
        "in place with method: link (kernel module, role %s)"
        % (method, target.path, attempts, "; ".join(reasons), KMOD_ROLE), attempts=attempts)


def _reflink_refusal(exc, target, dest_dir):
    if exc.errno == errno.EXDEV:
        why = "dest %s is on another filesystem than the file" % dest_dir.dest
    elif exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
        why = "the %s filesystem does not support reflinks (FICLONE: %s)" % (
            (target.orphan or {}).get("fstype") or "destination", exc.strerror)
    else:
        why = "FICLONE failed: %s" % exc.strerror
    return "reflink of %s to %s refused: %s; use method: copy (new inode, verified) instead" % (
        target.path, dest_dir.dest, why)


def compare_copy(src_fd, dest_dir, dest_st):
    """How the existing regular file dest compares with the source (idempotence of
    copy/reflink: the copy is another inode): ("equal", sha256, size) when it has
    exactly the source's bytes, ("older", sha256, size) when it has exactly the first
    bytes of a source that has grown since, None otherwise."""
    src_size = os.fstat(src_fd).st_size
    if not stat.S_ISREG(dest_st.st_mode) or dest_st.st_size > src_size:
        return None
    fd = os.open(dest_dir.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dest_dir.fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dest_st.st_dev, dest_st.st_ino):
            return None
        dest_sum = _hash_fd(fd)
    finally:
        os.close(fd)
    if _hash_fd(src_fd, dest_sum[1]) != dest_sum:
        return None
    return ("equal" if dest_sum[1] == src_size else "older",) + dest_sum
