# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The class of a held deleted file: what it means for its owner, one definition for
the facts, the audit and the metrics.

- lost: its data dies with its holders and is nowhere else (the default, and the
  accident frelink_restore exists for).  A data file deleted while open and re-created
  at the same path stays lost: its old content is unique.
- replaced: code or package content whose path now holds a newer file: a deleted
  executable or mapped ELF object (library) whose path holds a file again, or a path
  that dpkg's or rpm's database owns and that holds a file again (an upgrade replaced it).
  Nothing to restore; restarting its holders frees it.
- deliberate: its program unlinked it on purpose and keeps using it (idioms.py).
- kernel: held only by the kernel (a loop device, a swap area, a mount), no process.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.packages import PackageIndex, in_package_tree

CLASSES = ("lost", "replaced", "deliberate", "kernel")
AT_RISK = ("lost", "kernel")  # their data is nowhere else
KERNEL_KINDS = frozenset(("loop", "swap", "mount"))
CODE_KINDS = frozenset(("exe", "mmap"))
_ELF_MAGIC = b"\x7fELF"


def _is_elf(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.read(fd, 4) == _ELF_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


class Classifier:
    """classify(orphan, idiom, prefix, open_path) -> (class, package or None); the package
    lists are read at most once per scan, and only for paths that hold a file again."""

    def __init__(self, packages=None):
        self.packages = packages if packages is not None else PackageIndex()

    @staticmethod
    def _refilled(prefix, orphan):
        """Whether the orphan's path holds another regular file now (seen from its holder's namespace)."""
        try:
            st = os.lstat(prefix + orphan.path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) != (orphan.dev, orphan.ino)

    def classify(self, orphan, idiom, prefix, open_path):
        """PREFIX() gives '/proc/PID/root' when the path is seen from another mount namespace, else '';
        OPEN_PATH() a /proc path that opens the held inode (None for the kernel's holders).  Both are
        called only when needed."""
        if idiom is not None:
            return "deliberate", None
        kinds = orphan.kinds
        if kinds <= KERNEL_KINDS:
            return "kernel", None
        if orphan.silly_renamed:
            return "lost", None
        code = "exe" in kinds
        if not code and "mmap" in kinds:
            code = None  # decided by the content, only when the path holds a file again
        if code is False and not in_package_tree(orphan.path):
            return "lost", None
        if not self._refilled(prefix(), orphan):
            return "lost", None
        package = self.packages.owner(orphan.path) if in_package_tree(orphan.path) else None
        if code is None:
            where = open_path()
            code = where is not None and _is_elf(where)
        if code or package:
            return "replaced", package
        return "lost", None
