# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The rule once more, on a fresh scan, just before the first change: a process that mapped a selected
file, ran it, or opened it read-write since the first scan (while the files were opened, checked and
archive_dir measured) is seen, and nothing is changed.  The window left is one scan long."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim import rules
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.discovery import Scanner, collector_paused
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.enrich import Report


def refused_now(planned, allow_read_write):
    """[(plan, [(rule, why)])] of the PLANNED files (reclaim.run._Planned) that the rule refuses now.

    This process's own descriptors on them (opened to truncate) are not holders.  A file that nothing
    else holds any more is left out: it is freed at our close anyway, so truncating it loses nothing."""
    me = str(os.getpid())
    with collector_paused():
        scanner = Scanner().collect()
    report = Report(scanner)
    found = []
    for plan in planned:
        orphan = scanner.orphans.get((plan.st.st_dev, plan.st.st_ino))
        if orphan is None:
            continue
        orphan.holders = [h for h in orphan.holders if str(h[1]) != me]
        if not orphan.holders:
            continue
        why = rules.refusals(report.entry(orphan, False), allow_read_write)
        if why:
            found.append((plan, why))
    return found
