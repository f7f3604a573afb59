# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which held deleted files a frelink_reclaim task means: the selectors of frelink_restore (path, src,
device+inode, paths), resolved by its selection code (restore/targets.py) on the same scan as the facts."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import device_string
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.targets import (
    candidate_list,
    describe,
    orphans_by_globs,
    orphans_by_path,
    parse_device,
    resolve_inode,
    resolve_src,
)


def _gone(selector, why):
    return {"status": "nothing_to_reclaim", "changed": False,
            "msg": "%s: %s; nothing to reclaim" % (selector, why)}


def _ambiguity(path, group):
    return RestoreError(
        "%d deleted files had the original path %s; frelink does not guess: select one with device+inode (or "
        "src) from the candidates: %s" % (len(group), path, "; ".join(describe(o) for o in group)),
        candidates=candidate_list(group))


def _of_target(selector, target):
    if target.orphan is not None and target.nlink == 0:
        return target.orphan
    return _gone(selector, "no deleted file that is still held is there (it has a name, or its holders let it go)")


def check_params(params):
    for key in ("path", "src", "archive_dir"):
        if params.get(key) is not None and not params[key].strip():
            raise RestoreError("%s is empty; give an absolute path or leave it out" % key)
    if params.get("path") is not None and not params["path"].startswith("/"):
        raise RestoreError("path %r must be absolute: the original path as ansible_facts.frelink.orphans[].path "
                           "shows it" % params["path"])
    if params.get("archive_dir") is not None and not params["archive_dir"].startswith("/"):
        raise RestoreError("archive_dir %r must be an absolute path" % params["archive_dir"])
    if params.get("paths") is not None and not params["paths"]:
        raise RestoreError("paths is empty; give at least one pattern (e.g. ['/var/log/*']), or use path, src or "
                           "device+inode")
    if params.get("inode") is not None and int(params["inode"]) <= 0:
        raise RestoreError("inode %s is not an inode number (1 or more); take it from "
                           "ansible_facts.frelink.orphans[].ino" % params["inode"])


def select(params):
    """([(selector, facts entry | result dict for nothing to do | RestoreError)], scan info)."""
    check_params(params)
    items = []
    scan_info = {}
    if params.get("paths"):
        orphans, scan_info = orphans_by_globs(params["paths"])
        for orphan in sorted(orphans, key=lambda o: (o.get("path") or "", o.get("dev") or 0, o.get("ino") or 0)):
            items.append((orphan.get("path"), orphan))
    elif params.get("path") is not None:
        path = params["path"]
        group, scan_info = orphans_by_path(path)
        if len(group) > 1:
            items.append((path, _ambiguity(path, group)))
        elif group:
            items.append((path, group[0]))
        else:
            items.append((path, _gone(path, "no deleted file that is still held has this original path (reclaimed "
                                            "or released before?)")))
    elif params.get("src") is not None:
        src = params["src"]
        try:
            items.append((src, _of_target(src, resolve_src(src))))
        except RestoreError as exc:
            items.append((src, exc))
    else:
        dev = parse_device(params.get("device"))
        selector = "%s/%s" % (device_string(dev), params.get("inode"))
        items.append((selector, _of_target(selector, resolve_inode(dev, int(params["inode"])))))
    return items, scan_info
