# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan: which method restores a file, and why not the others."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.frelink.frelink.plugins.module_utils import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils.duplicate import REFLINK_FSTYPES
from ansible_collections.frelink.frelink.plugins.module_utils.errors import KMOD_ROLE, RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils.mounts import device_string

METHODS = ("auto", "link", "reflink", "copy")
FALLBACKS = ("reflink", "copy")


class Options(object):
    def __init__(self, method="auto", fallback=(), create_parents=False, copy_retries=3):
        if method not in METHODS:
            raise RestoreError("method must be one of %s" % ", ".join(METHODS))
        bad = [f for f in fallback or () if f not in FALLBACKS]
        if bad:
            raise RestoreError("fallback may only list %s, not %s" % (", ".join(FALLBACKS), ", ".join(bad)))
        if copy_retries < 1:
            raise RestoreError("copy_retries must be at least 1")
        self.method = method
        self.fallback = list(fallback or ())
        self.create_parents = create_parents
        self.copy_retries = copy_retries


def _link_obstacle(target, dest_dir):
    """Why a relink cannot be done, or None."""
    if dest_dir.st.st_dev != target.dev:
        return ("dest %s is on another filesystem (device %s) than the file (device %s, %s); a name can only be "
                "given on the file's own filesystem: choose a dest there, or use method: copy"
                % (dest_dir.dest, device_string(dest_dir.st.st_dev), device_string(target.dev),
                   (target.orphan or {}).get("mount_point") or "?"))
    if not kmod_abi.module_loaded():
        return ("the frelink kernel module is not loaded (%s is missing): load it with the role %s, or accept "
                "a copy with a new identity (method: copy, or method: auto with fallback: [reflink, copy])"
                % (kmod_abi.DEVICE_PATH, KMOD_ROLE))
    return None


def _source_obstacle(method, target):
    if not target.open_path:
        return ("%s of %s is impossible: no process has it open or mapped (held only by %s), so its data can only "
                "be reached through the kernel module: use method: link (role %s)"
                % (method, target.path, ", ".join(h.get("kind", "?") for h in (target.orphan or {}).get("holders") or [])
                   or "the kernel", KMOD_ROLE))
    return None


def _reflink_obstacle(target, dest_dir):
    obstacle = _source_obstacle("reflink", target)
    if obstacle:
        return obstacle
    if dest_dir.st.st_dev != target.dev:
        return "reflink needs dest on the file's own filesystem (%s); dest %s is elsewhere: use method: copy" % (
            (target.orphan or {}).get("mount_point") or device_string(target.dev), dest_dir.dest)
    return None


def _copy_obstacle(target, dest_dir):
    obstacle = _source_obstacle("copy", target)
    if obstacle:
        return obstacle
    orphan = target.orphan or {}
    needed = orphan.get("allocated")
    if needed is None:
        needed = target.size or 0
    free = dest_dir.vfs.f_bavail * dest_dir.vfs.f_frsize
    if needed > free:
        return ("copy of %s needs %d bytes but only %d are free on the filesystem of %s: free space, choose a dest "
                "on a larger filesystem, or relink it in place with method: link" % (
                    target.path, needed, free, dest_dir.dest))
    return None


def plan_methods(target, dest_dir, opts, check_mode):
    """The methods to try, in order (more than one only for method auto,
    where a reflink the filesystem turns down falls through to the next
    fallback), or a RestoreError explaining every obstacle."""
    checks = {"link": _link_obstacle, "reflink": _reflink_obstacle, "copy": _copy_obstacle}
    if opts.method != "auto":
        obstacle = checks[opts.method](target, dest_dir)
        if obstacle:
            raise RestoreError(obstacle)
        return [opts.method]
    obstacle = _link_obstacle(target, dest_dir)
    if not obstacle:
        return ["link"]
    obstacles = ["link: " + obstacle]
    plan = []
    for fallback in opts.fallback:
        obstacle = checks[fallback](target, dest_dir)
        if not obstacle and fallback == "reflink" and check_mode:
            fstype = (target.orphan or {}).get("fstype")
            predicted = ((target.orphan or {}).get("restore") or {}).get("reflink")
            if predicted is None:
                predicted = fstype in REFLINK_FSTYPES
            if not predicted:
                obstacle = "the %s filesystem is not expected to support reflinks" % fstype
        if obstacle:
            obstacles.append("%s: %s" % (fallback, obstacle))
        else:
            plan.append(fallback)
    if plan:
        target.fallback_reasons = obstacles
        return plan
    if not opts.fallback:
        obstacles.append("no fallback allowed: a reflink or copy is a new file (new inode; the holder keeps "
                         "writing to the deleted one), so it is opt-in with fallback: [reflink, copy]")
    raise RestoreError("cannot restore %s to %s. %s" % (target.path, dest_dir.dest, " | ".join(obstacles)))
