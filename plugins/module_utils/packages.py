# -*- coding: utf-8 -*-
# Copyright: (c) frelink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which installed package owns a path, from dpkg's own database (/var/lib/dpkg/info/*.list,
what `dpkg -S` reads), without running dpkg.

Read once per scan, and only when a question is asked: a scan whose orphans are all
outside the package trees reads nothing.  Merged /usr is minded: dpkg may list
/lib/x86_64-linux-gnu/libz.so.1.2.13 while a process maps /usr/lib/x86_64-linux-gnu/...
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

DPKG_INFO = "/var/lib/dpkg/info"
# Where packages put files; a path elsewhere (/tmp, /home, /srv, /var/log...) is not asked about.
PACKAGE_TREES = ("/usr/", "/etc/", "/bin/", "/sbin/", "/lib", "/opt/", "/boot/", "/var/lib/")
_MERGED = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


def in_package_tree(path):
    return path.startswith(PACKAGE_TREES)


def _aliases(path):
    """PATH and its other name under merged /usr (/lib/x <-> /usr/lib/x)."""
    if path.startswith("/usr/") and path[4:].startswith(_MERGED):
        return (path, path[4:])
    if path.startswith(_MERGED):
        return (path, "/usr" + path)
    return (path,)


class PackageIndex:
    """owner(path) -> package name (without :arch) or None; the lists are read at the first question."""

    def __init__(self, info_dir=DPKG_INFO):
        self.info_dir = info_dir
        self._lists = None

    def _load(self):
        self._lists = []
        try:
            names = sorted(name for name in os.listdir(self.info_dir) if name.endswith(".list"))
        except OSError:
            return  # not a dpkg system
        for name in names:
            try:
                with open(os.path.join(self.info_dir, name), "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            self._lists.append((name[:-len(".list")].split(":", 1)[0], b"\n" + data))

    def owner(self, path):
        if self._lists is None:
            self._load()
        if not self._lists:
            return None
        needles = [b"\n" + os.fsencode(alias) + b"\n" for alias in _aliases(path)]
        for package, data in self._lists:
            for needle in needles:
                if needle in data:
                    return package
        return None
