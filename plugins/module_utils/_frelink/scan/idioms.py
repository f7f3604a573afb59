# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Deleted-but-held files that nobody lost: idioms where a program unlinks a
file it keeps using, on purpose.

The facts keep these orphans and mark them (`deliberate`); the audit and the
metrics count them apart, so that their headline is what users lost.  Only
well-known, narrow patterns are here: a name alone never hides a file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# glibc's sem_open() names its file /dev/shm/sem.NAME; Python's multiprocessing
# (and so ansible-playbook itself) creates its locks so and, with the fork start
# method (the default before Python 3.14), unlinks them at once.
_SEMAPHORE = "/dev/shm/sem."
# shm_open() + mmap + shm_unlink(): shared memory only the mappings keep alive.
_SHM_PREFIXES = ("/dev/shm/.org.chromium.", "/dev/shm/.com.google.Chrome.", "/dev/shm/pulse-shm-",
                 "/dev/shm/org.mozilla.ipc.")
# InnoDB's temporary files (tmpdir/ibXXXXXX), created and unlinked at once.
_INNODB_TMP = re.compile(r"/ib[0-9A-Za-z]{6}$")
_INNODB_SERVERS = frozenset(("mysqld", "mariadbd"))

IDIOMS = {
    "posix_semaphore": "a POSIX semaphore (sem_open): its creator unlinked it at once and keeps using it, by design "
                       "(Python's multiprocessing does this); nothing was lost",
    "posix_shm": "POSIX shared memory (shm_open) its creator unlinked after mapping it, by design; nothing was lost",
    "innodb_tmpfile": "an InnoDB temporary file: the database server unlinks it at creation, by design; nothing was "
                      "lost",
}


def classify(path, holder_names):
    """The idiom name of a deliberate orphan at PATH, or None.  HOLDER_NAMES is called
    (only when needed) for the command names of the processes holding it."""
    if path.startswith(_SEMAPHORE):
        return "posix_semaphore"
    if path.startswith(_SHM_PREFIXES):
        return "posix_shm"
    if "/ib" in path and _INNODB_TMP.search(path) and _INNODB_SERVERS.intersection(holder_names()):
        return "innodb_tmpfile"
    return None
