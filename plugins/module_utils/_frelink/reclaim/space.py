# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What each filesystem had free before and after a reclaim, as os.fstatvfs saw it through the very
descriptor that truncates (so a file mounted only in another namespace is measured right)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string


def _free(fd):
    vfs = os.fstatvfs(fd)
    return vfs.f_bavail * vfs.f_frsize, vfs.f_bfree * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize


class Filesystems(object):
    """One record per st_dev of the planned files."""

    def __init__(self):
        self.by_dev = {}

    def before(self, plan):
        dev = plan.st.st_dev
        if dev not in self.by_dev:
            avail, free, size = _free(plan.fd)
            self.by_dev[dev] = {"device": device_string(dev), "dev": dev,
                                "mount_point": plan.entry.get("mount_point"), "fstype": plan.entry.get("fstype"),
                                "size": size, "files": 0, "bytes_to_free": 0,
                                "avail_before": avail, "free_before": free}

    def predict(self, plan, allocated):
        fs = self.by_dev[plan.st.st_dev]
        fs["files"] += 1
        fs["bytes_to_free"] += allocated
        fs["free_after_predicted"] = fs["free_before"] + fs["bytes_to_free"]

    def after(self, planned):
        for plan in planned:
            fs = self.by_dev[plan.st.st_dev]
            if "free_after" not in fs:
                fs["avail_after"], fs["free_after"], _size = _free(plan.fd)
                fs["freed"] = fs["free_after"] - fs["free_before"]

    def report(self):
        out = []
        for fs in sorted(self.by_dev.values(), key=lambda f: -f["bytes_to_free"]):
            if fs["files"]:
                out.append(dict(fs))
        return out
