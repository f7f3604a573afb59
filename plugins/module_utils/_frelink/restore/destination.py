# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The destination: its parent directory opened without following any link,
and new names made without ever replacing one."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import ctypes.util
import errno
import os
import re
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError

RENAME_NOREPLACE = 1
_HOLDER_ROOT = re.compile(r"^/proc/(\d+)/root(?:/|$)")


def split_dest(dest):
    """(anchor, parent components, name). A destination under
    /proc/PID/root/ is resolved inside that process's mount namespace: the
    magic link /proc/PID/root is the one link followed on purpose."""
    if not dest or not dest.startswith("/"):
        raise RestoreError("dest %r must be an absolute path" % (dest,))
    anchor = "/"
    rest = dest
    m = _HOLDER_ROOT.match(dest)
    if m:
        anchor = "/proc/%s/root" % m.group(1)
        rest = dest[len(anchor):]
    comps = [c for c in rest.split("/") if c]
    if any(c in (".", "..") for c in comps):
        raise RestoreError("dest %s contains '.' or '..'; give the plain absolute path" % dest)
    if not comps:
        raise RestoreError("dest %s names a directory, not a file; give the full path of the new name" % dest)
    if len(comps[-1].encode("utf-8", "surrogateescape")) > 255:
        raise RestoreError("the last component of dest %s is longer than 255 bytes" % dest)
    return anchor, comps[:-1], comps[-1]


class DestDir(object):
    """The destination's parent directory, opened without following links.

    `fd` is None only in check mode when parents are missing; `missing`
    lists the directories that would be created."""

    def __init__(self, dest, create_parents, check_mode):
        self.dest = dest
        self.anchor, parents, self.name = split_dest(dest)
        self.fd = None
        self.missing = []
        self.created = []
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            fd = os.open(self.anchor, flags)
        except OSError as exc:
            raise RestoreError("cannot open %s: %s (has that process exited?)" % (self.anchor, exc.strerror))
        walked = self.anchor.rstrip("/")
        try:
            for i, comp in enumerate(parents):
                here = walked + "/" + comp
                try:
                    nfd = os.open(comp, flags | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        if not create_parents:
                            raise RestoreError(
                                "the directory %s does not exist: create it, set create_parents: true, "
                                "or choose another dest" % here)
                        if check_mode:
                            self.vfs = os.fstatvfs(fd)
                            base = self.anchor.rstrip("/")
                            self.missing = [base + "/" + "/".join(parents[:j + 1]) for j in range(i, len(parents))]
                            self.st = os.fstat(fd)
                            os.close(fd)
                            fd = None
                            return
                        try:
                            os.mkdir(comp, 0o755, dir_fd=fd)
                            self.created.append(here)
                        except FileExistsError:
                            pass
                        except OSError as mkdir_exc:
                            raise RestoreError("cannot create the directory %s: %s; create it yourself, run as "
                                               "root (become: true), or choose another dest"
                                               % (here, mkdir_exc.strerror))
                        try:
                            nfd = os.open(comp, flags | os.O_NOFOLLOW, dir_fd=fd)
                        except OSError as reopen_exc:  # replaced by a link or removed meanwhile
                            raise RestoreError("the directory %s changed while it was being created (%s); "
                                               "nothing was restored, check it and retry"
                                               % (here, reopen_exc.strerror))
                    elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise RestoreError(self._not_a_dir(fd, comp, here))
                    else:
                        raise RestoreError("cannot open directory %s: %s" % (here, exc.strerror))
                os.close(fd)
                fd = nfd
                walked = here
            self.fd = fd
            self.st = os.fstat(fd)
            self.vfs = os.fstatvfs(fd)
            self.path = walked or "/"
            fd = None
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _not_a_dir(fd, comp, here):
        try:
            st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            try:
                where = os.readlink(comp, dir_fd=fd)
            except OSError:
                where = "?"
            return ("%s is a symbolic link (to %s): frelink never follows symlinks in dest; give the real "
                    "directory path instead" % (here, where))
        return "%s is not a directory; choose another dest" % here

    def lstat_name(self):
        if self.fd is None:
            return None
        try:
            return os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RestoreError("cannot look at %s: %s; run as root (become: true) or choose another dest"
                               % (self.dest, exc.strerror))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_LIBC = []


def _renameat2():
    if not _LIBC:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _LIBC.append(getattr(libc, "renameat2", None))
        except OSError:
            _LIBC.append(None)
    return _LIBC[0]


def commit_noreplace(dir_fd, tmp_name, name):
    """Gives the temporary file its final name; never replaces one."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        res = renameat2(dir_fd, os.fsencode(tmp_name), dir_fd, os.fsencode(name), RENAME_NOREPLACE)
        if res == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), name)
    # no RENAME_NOREPLACE here: link() also fails with EEXIST instead of replacing
    os.link(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(tmp_name, dir_fd=dir_fd)
