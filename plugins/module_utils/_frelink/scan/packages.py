# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which installed package owns a path, from the package manager's own database, without
running it: dpkg's /var/lib/dpkg/info/*.list (what `dpkg -S` reads), and rpm's SQLite
database (rpm 4.16 and later: RHEL 9, Fedora, SUSE; what `rpm -qf` reads) through
Python's sqlite3, read only.  Older rpm databases (Berkeley DB) are not read.

Read once per scan, and only when a question is asked: a scan whose orphans are all
outside the package trees reads nothing.  Merged /usr is minded: dpkg may list
/lib/x86_64-linux-gnu/libz.so.1.2.13 while a process maps /usr/lib/x86_64-linux-gnu/...
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os
import struct

try:
    import sqlite3
except ImportError:  # a Python built without it: rpm's database is not asked
    sqlite3 = None

DPKG_INFO = "/var/lib/dpkg/info"
# rpm's database; Fedora 36+ keeps it in /usr/lib/sysimage/rpm (/var/lib/rpm links there)
RPM_DBS = ("/var/lib/rpm/rpmdb.sqlite", "/usr/lib/sysimage/rpm/rpmdb.sqlite")
_RPMTAG_DIRINDEXES, _RPMTAG_DIRNAMES = 1116, 1118
_RPM_INT32, _RPM_STRING_ARRAY = 4, 8
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


def _rpm_header_tag(blob, wanted, kind):
    """One tag of an rpm header blob (il and dl, il index entries of tag, type, offset,
    count, then the data; all big-endian), or None."""
    count, _data_len = struct.unpack_from(">ii", blob)
    data = 8 + 16 * count
    for n in range(count):
        tag, tag_type, offset, items = struct.unpack_from(">iiii", blob, 8 + 16 * n)
        if tag != wanted or tag_type != kind:
            continue
        if kind == _RPM_INT32:
            return struct.unpack_from(">%di" % items, blob, data + offset)
        return blob[data + offset:].split(b"\0", items)[:items]
    return None


class RpmDatabase:
    """owner(path) in rpm's SQLite database: the Basenames index, then the package header's
    directory of that file (DIRINDEXES, DIRNAMES), then the Name index."""

    def __init__(self, path):
        self.path = path

    def owner(self, path):
        """Each question opens and closes its own connection: an open one maps the database's
        -shm file, which rpm replaces, and would leave this process holding a deleted file."""
        try:
            with contextlib.closing(sqlite3.connect("file:%s?mode=ro" % self.path, uri=True)) as db:
                return self._owner(db, path)
        except sqlite3.Error:
            return None  # locked, missing, another schema: not known

    @staticmethod
    def _owner(db, path):
        directory, _sep, base = path.rpartition("/")
        try:
            wanted_dir = os.fsencode(directory + "/")
            for hnum, index in db.execute("SELECT hnum, idx FROM Basenames WHERE key = ?", (base,)).fetchall():
                (blob,) = db.execute("SELECT blob FROM Packages WHERE hnum = ?", (hnum,)).fetchone()
                dir_indexes = _rpm_header_tag(blob, _RPMTAG_DIRINDEXES, _RPM_INT32)
                dir_names = _rpm_header_tag(blob, _RPMTAG_DIRNAMES, _RPM_STRING_ARRAY)
                if dir_indexes and dir_names and dir_names[dir_indexes[index]] == wanted_dir:
                    name = db.execute("SELECT key FROM Name WHERE hnum = ?", (hnum,)).fetchone()
                    return name[0] if name else None
        except (sqlite3.Error, struct.error, IndexError, TypeError, UnicodeError):
            return None  # locked, another schema, a name sqlite cannot take: not known
        return None


class PackageIndex:
    """owner(path) -> package name (without :arch) or None; dpkg's lists are read at the
    first question, rpm's database is asked per question."""

    def __init__(self, info_dir=DPKG_INFO, rpm_dbs=RPM_DBS):
        self.info_dir = info_dir
        self._lists = None
        found = next((db for db in rpm_dbs if os.path.isfile(db)), None) if sqlite3 is not None else None
        self.rpm = RpmDatabase(found) if found else None

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
        aliases = _aliases(path)
        if self._lists:
            needles = [b"\n" + os.fsencode(alias) + b"\n" for alias in aliases]
            for package, data in self._lists:
                for needle in needles:
                    if needle in data:
                        return package
        if self.rpm is not None:
            for alias in aliases:
                package = self.rpm.owner(alias)
                if package is not None:
                    return package
        return None
