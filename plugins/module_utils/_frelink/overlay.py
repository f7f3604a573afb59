# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Overlayfs: where a file deleted inside an overlay (a container's root) really
lives, and where it may get a name.

A file created in a container is an inode of the overlay's upper layer; the
frelink module relinks that upper inode into a directory on the upper
layer's filesystem.  Changing the layer directories of a mounted overlay is
undefined (Documentation/filesystems/overlayfs.rst), so a name is never given
inside upperdir, workdir or a lowerdir: the default destination is a rescue
directory at the root of the upper layer's filesystem.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import stat

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import (
    NETWORK_FSTYPES,
    MountTable,
    device_string,
    parse_mountinfo,
    read_text,
    unescape,
)

OVERLAY_FSTYPE = "overlay"
RESCUE_DIR = "frelink-rescue"


def layers(super_options):
    """{"upperdir", "workdir", "lowerdir": [...]} from an overlay mount's super options."""
    found = {"upperdir": None, "workdir": None, "lowerdir": []}
    for option in super_options.split(","):
        key, _sep, value = option.partition("=")
        if key in ("upperdir", "workdir"):
            found[key] = unescape(value)
        elif key in ("lowerdir", "lowerdir+", "datadir+"):
            # "::" separates data-only lower layers (6.5+); ':' inside a path is escaped
            found["lowerdir"].extend(unescape(part) for part in value.replace("::", ":").split(":") if part)
    return found


def upper_layer(mount, holder_prefix, host_mounts):
    """The upper layer of overlay MOUNT: its directories and its filesystem as this host sees it.

    The layer paths were resolved in the mounting namespace: the host's (container
    runtimes) or the holder's (an overlay mounted inside a private namespace),
    tried in that order.  Returns None for a read-only overlay (no upperdir)."""
    found = layers(mount.get("super_options", ""))
    upper = found["upperdir"]
    if not upper:
        return None
    for prefix in ("", holder_prefix) if holder_prefix else ("",):
        try:
            st = os.stat(prefix + upper)
        except OSError:
            continue
        fs = host_mounts.lookup(st.st_dev, upper) if not prefix else None
        info = {
            "upperdir": prefix + upper,
            "workdir": prefix + found["workdir"] if found["workdir"] else None,
            "lowerdir": [prefix + d for d in found["lowerdir"]],
            "upper_dev": st.st_dev,
            "upper_device": device_string(st.st_dev),
            "upper_fstype": fs["fstype"] if fs else None,
            "upper_mount_point": (fs["mount_point"] if fs else None),
        }
        if not prefix and fs is not None:
            info["rescue_dir"] = fs["mount_point"].rstrip("/") + "/" + RESCUE_DIR
        elif prefix:
            info["upper_fstype"], info["upper_mount_point"] = _fs_of(prefix, upper, st.st_dev)
            if info["upper_mount_point"] is not None:
                info["rescue_dir"] = prefix + info["upper_mount_point"].rstrip("/") + "/" + RESCUE_DIR
                info["upper_mount_point"] = prefix + info["upper_mount_point"]
        return info
    return None


def _fs_of(prefix, path, st_dev):
    """(fstype, mount point) of path inside the namespace reached through prefix (/proc/PID/root)."""
    try:
        table = MountTable(parse_mountinfo(read_text(prefix.rsplit("/", 1)[0] + "/mountinfo")), prefix)
    except OSError:
        return None, None
    fs = table.lookup(st_dev, path)
    return (fs["fstype"], fs["mount_point"]) if fs else (None, None)


def rescue_dest(upper, container, path):
    """Default destination of a file at PATH inside an overlay: RESCUE_DIR/<container or overlay>/PATH."""
    if not upper or not upper.get("rescue_dir"):
        return None
    owner = container["short_id"] if container else "overlay-" + upper["upper_device"].replace(":", "-")
    return "%s/%s/%s" % (upper["rescue_dir"], owner, path.lstrip("/"))


def layer_containing(upper, dest):
    """The layer directory of the overlay that dest is in (or is), or None."""
    if not upper:
        return None
    real = os.path.realpath(dest)
    for layer in [upper.get("upperdir"), upper.get("workdir")] + list(upper.get("lowerdir") or []):
        if not layer:
            continue
        layer_real = os.path.realpath(layer)
        if real == layer_real or real.startswith(layer_real.rstrip("/") + "/"):
            return layer
    return None


def rescued_paths(path, mounts):
    """Regular files at <mount point>/RESCUE_DIR/<owner>/PATH on the mounted filesystems
    (network ones skipped: they may hang): where rescue_dest() put an overlay file that a
    task restored without a dest, for its rerun to find."""
    found, seen = [], set()
    for mount in mounts:
        top = mount["mount_point"].rstrip("/") + "/" + RESCUE_DIR
        if top in seen or mount["fstype"] in NETWORK_FSTYPES:
            continue
        seen.add(top)
        try:
            owners = sorted(os.listdir(top))
        except OSError:
            continue
        for owner in owners:
            candidate = "%s/%s/%s" % (top, owner, path.lstrip("/"))
            try:
                if stat.S_ISREG(os.lstat(candidate).st_mode):
                    found.append(candidate)
            except (OSError, ValueError):
                continue
    return found
