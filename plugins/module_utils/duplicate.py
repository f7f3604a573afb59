# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Copy and reflink: a new inode with the deleted file's bytes, committed
only when it is verified against the source."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import os
import stat

from ansible_collections.frelink.frelink.plugins.module_utils.destination import commit_noreplace
from ansible_collections.frelink.frelink.plugins.module_utils.errors import KMOD_ROLE, RestoreError

# linux/fs.h: _IOW(0x94, 9, int)
FICLONE = 0x40049409
# Filesystems where FICLONE can share extents (xfs only when made with reflink=1);
# a prediction for the facts and check mode, the real run asks the kernel.
REFLINK_FSTYPES = frozenset(("btrfs", "xfs", "ocfs2", "bcachefs"))
CHUNK = 1 << 20
_ZERO_CHUNK = bytes(CHUNK)


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


def _copy_data(src_fd, dst_fd, length):
    """Copies the first `length` bytes (the size seen before the copy: a file
    that keeps growing cannot make it run forever), keeping holes (all-zero
    chunks are skipped); returns sha256 and length of the bytes copied."""
    digest = hashlib.sha256()
    offset = 0
    while offset < length:
        chunk = os.pread(src_fd, min(CHUNK, length - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        if chunk != _ZERO_CHUNK[:len(chunk)]:
            view = memoryview(chunk)
            done = 0
            while done < len(chunk):
                done += os.pwrite(dst_fd, view[done:], offset + done)
        offset += len(chunk)
    os.ftruncate(dst_fd, offset)
    return digest.hexdigest(), offset


def _stat_key(st):
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def duplicate(method, src_fd, dest_dir, target, retries):
    """Reflink (FICLONE) or copy src_fd into a new file dest_dir.name.

    The result is only committed when the source stayed the same during the
    whole operation: its size/mtime/ctime did not move, and reading it again
    after the copy gives the same sha256 as the bytes in the copy (which makes
    the copy equal to the source as it was at the end of the copy). Otherwise
    the temporary file is removed and the attempt repeated."""
    dir_fd, name = dest_dir.fd, dest_dir.name
    reasons = []
    for attempt in range(1, retries + 1):
        before = os.fstat(src_fd)
        tmp_name = ".%s.frelink-%d-%d.tmp" % (name[:200], os.getpid(), attempt)
        tmp_fd = os.open(tmp_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
        committed = False
        try:
            if method == "reflink":
                try:
                    fcntl.ioctl(tmp_fd, FICLONE, src_fd)
                except OSError as exc:
                    raise RestoreError(_reflink_refusal(exc, target, dest_dir), errno=exc.errno)
                copy_sum, copy_len = _hash_fd(tmp_fd)
            else:
                copy_sum, copy_len = _copy_data(src_fd, tmp_fd, before.st_size)
            os.fsync(tmp_fd)
            src_sum, src_len = _hash_fd(src_fd, before.st_size)
            after = os.fstat(src_fd)
            if _stat_key(before) != _stat_key(after):
                reasons.append("attempt %d: the source changed (size %d -> %d, mtime/ctime moved)"
                               % (attempt, before.st_size, after.st_size))
                continue
            if (src_sum, src_len) != (copy_sum, copy_len):
                reasons.append("attempt %d: the source read again differs from the copy" % attempt)
                continue
            _copy_metadata(tmp_fd, after)
            os.fsync(tmp_fd)
            try:
                commit_noreplace(dir_fd, tmp_name, name)
            except FileExistsError:
                raise RestoreError("%s appeared while frelink was copying; nothing was overwritten, the "
                                   "copy was removed; choose another dest" % dest_dir.dest)
            committed = True
            os.fsync(dir_fd)
            return {
                "sha256": copy_sum, "source_sha256": src_sum, "size": copy_len, "attempts": attempt,
                "source_unchanged": True,
            }
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
        % (method, target.path, retries, "; ".join(reasons), KMOD_ROLE), attempts=retries)


def _copy_metadata(fd, st):
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # not root: the copy belongs to the caller
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


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


def content_equal(src_fd, dest_dir, dest_st):
    """Whether the existing regular file dest has exactly the source's bytes
    (idempotence of copy/reflink: the copy is another inode)."""
    if not stat.S_ISREG(dest_st.st_mode) or os.fstat(src_fd).st_size != dest_st.st_size:
        return None
    fd = os.open(dest_dir.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dest_dir.fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dest_st.st_dev, dest_st.st_ino):
            return None
        dest_sum = _hash_fd(fd)
    finally:
        os.close(fd)
    return dest_sum if _hash_fd(src_fd) == dest_sum else None
