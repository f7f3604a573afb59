# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The plan: which method restores a file, and why not the others."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import KMOD_ROLE, RestoreError
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import REFLINK_FSTYPES, device_string

METHODS = ("auto", "link", "reflink", "copy")
FALLBACKS = ("reflink", "copy")


# Kernel answers to a relink that mean "refused, nothing changed", after which a
# copy can still work: method auto goes on to the fallback.  EOPNOTSUPP: not on
# the module's allowlist; EXDEV: another filesystem (or an overlay's other
# layer); EPERM: an immutable or append-only file; EACCES: a security module
# (SELinux, Smack); EROFS by fd: the file was opened through a read-only mount;
# ENOLINK: an O_TMPFILE | O_EXCL file, which its creator asked never to be linked.
LINK_REFUSALS = frozenset((errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS,
                           errno.ENOLINK))
# FICLONE answers meaning "this filesystem or pair cannot share extents"
REFLINK_REFUSALS = frozenset((errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS))


class Options(object):
    def __init__(self, method="auto", fallback=(), create_parents=False, copy_retries=2):
        if method not in METHODS:
            raise RestoreError("method must be one of %s" % ", ".join(METHODS))
        bad = [f for f in fallback or () if f not in FALLBACKS]
        if bad:
            raise RestoreError("fallback may only list %s, not %s" % (", ".join(FALLBACKS), ", ".join(bad)))
        if copy_retries < 0:
            raise RestoreError("copy_retries must be 0 (one attempt, no retry) or more, got %d" % copy_retries)
        self.method = method
        self.fallback = list(fallback or ())
        self.create_parents = create_parents
        self.copy_retries = copy_retries


def _link_obstacle(target, dest_dir):
    """Why a relink cannot be done, or None.  The same table answers check
    mode and the real run (the kernel may still refuse, see LINK_REFUSALS)."""
    orphan = target.orphan or {}
    upper = target.overlay
    if upper and not target.open_path:
        return ("the file is held through an overlay but not open by any process (only %s): the module relinks an "
                "overlay file through an open descriptor only; use method: copy"
                % ", ".join(h.get("kind", "?") for h in orphan.get("holders") or []))
    link_dev = target.name_identity()[0]
    if dest_dir.st.st_dev != link_dev:
        if upper:
            return ("dest %s is not on the filesystem of the overlay's upper layer (%s, device %s), where the file "
                    "really is; the default dest is %s"
                    % (dest_dir.dest, upper.get("upper_mount_point") or "?", upper["upper_device"], upper.get("dest")))
        return ("dest %s is on another filesystem (device %s) than the file (device %s, %s); a name can only be "
                "given on the file's own filesystem: choose a dest there, or use method: copy"
                % (dest_dir.dest, device_string(dest_dir.st.st_dev), device_string(target.dev),
                   orphan.get("mount_point") or "?"))
    if target.silly_renamed:
        return None  # it still has a name: link(2) gives it another, no module needed
    fstype = orphan.get("fstype")
    if fstype is not None and not kmod_abi.relink_supported(fstype, (upper or {}).get("upper_fstype")):
        return ("the frelink module relinks only on %s (and overlayfs through its upper layer); this file is on %s "
                "(%s): copy it instead (method: copy, or method: auto with fallback: [copy])"
                % (", ".join(sorted(kmod_abi.RELINK_FSTYPES)), fstype, orphan.get("mount_point") or "?"))
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


def _predicted_reflink(target):
    orphan = target.orphan or {}
    predicted = (orphan.get("restore") or {}).get("reflink")
    if predicted is None:
        predicted = orphan.get("fstype") in REFLINK_FSTYPES
    return predicted


def plan_methods(target, dest_dir, opts, check_mode):
    """(methods, reasons): the methods to try in order, and why each one
    left out is impossible.  Explicit methods give one; method auto gives
    link when possible, then every possible fallback, so that a refusal that
    changed nothing (LINK_REFUSALS, REFLINK_REFUSALS) goes on to the next.
    Raises RestoreError explaining every obstacle when none is possible."""
    checks = {"link": _link_obstacle, "reflink": _reflink_obstacle, "copy": _copy_obstacle}
    if opts.method != "auto":
        obstacle = checks[opts.method](target, dest_dir)
        if obstacle:
            raise RestoreError(obstacle)
        return [opts.method], []
    plan, reasons = [], []
    for method in ["link"] + opts.fallback:
        obstacle = checks[method](target, dest_dir)
        if not obstacle and method == "reflink" and check_mode and not _predicted_reflink(target):
            obstacle = "the %s filesystem is not expected to support reflinks" % (target.orphan or {}).get("fstype")
        if obstacle:
            reasons.append("%s: %s" % (method, obstacle))
        else:
            plan.append(method)
    if plan:
        return plan, reasons if plan[0] != "link" else []
    if not opts.fallback:
        reasons.append("no fallback allowed: a reflink or copy is a new file (new inode; the holder keeps "
                       "writing to the deleted one), so it is opt-in with fallback: [reflink, copy]")
    raise RestoreError("cannot restore %s to %s. %s" % (target.path, dest_dir.dest, " | ".join(reasons)))


def refusal_changed_nothing(method, err):
    """Whether errno err from method is a refusal after which the next method may be tried."""
    return err in (LINK_REFUSALS if method == "link" else REFLINK_REFUSALS if method == "reflink" else ())
