# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Discovery of deleted files and directories that are the root of a mount (kind "mount").

A file bind-mounted somewhere (docker -v /srv/app.conf:/etc/app.conf) and then removed or
replaced by a rename at its source keeps no name, but the mount holds its inode as a
loop device holds a backing file.  mountinfo shows such a mount's root (field 4, the
path within its filesystem, dentry_path()) with '//deleted' appended.

Part of discovery.py's pass (Scanner.collect() calls scan_mounts); it adds to the
scanner's orphans.  One readlink of /proc/PID/ns/mnt per process finds the mount
namespaces; one process's mountinfo is read per namespace and root directory (ours is the
scanner's).
Standard library only.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.containers import container_of
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.mounts import ANON_DEV_FSTYPES, parse_mountinfo, read_text

# dentry_path() appends it to an unlinked dentry; no name can contain '/', and mountinfo
# escapes a backslash, so a live file cannot produce it (the stat decides anyway).
MOUNT_DELETED = "//deleted"
_MOUNT_DELETED_LEN = len(MOUNT_DELETED)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def scan_mounts(scanner):
    """Mounts, in every mount namespace, whose root is a deleted file or directory."""
    for mount in _held_roots(scanner.mounts.mounts):
        _add_mount(scanner, mount, None, None, "")
    proc_fd = os.open(scanner.proc, _DIR_FLAGS)
    try:
        namespaces, denied = _foreign_namespaces(proc_fd, scanner.self_mntns)
        for mntns, pids in namespaces.items():
            _scan_namespace(scanner, proc_fd, mntns, pids)
    finally:
        os.close(proc_fd)
    seen = set(scanner.denied_pids)
    denied = [pid for pid in denied if pid not in seen]  # the process scan told about these already
    if denied:
        shown = ", ".join(denied[:10]) + (", ..." if len(denied) > 10 else "")
        if scanner.euid == 0:
            hint = "they are protected even from root (LSM policy, or another user namespace)"
        else:
            hint = "run as root (become: true) for a complete scan"
        scanner.partial("the mount namespaces of %d processes could not be read (permission denied; pids %s), so "
                        "mounts only they see are not inspected: %s" % (len(denied), shown, hint))


def _foreign_namespaces(proc_fd, self_mntns):
    """({mntns link text: [pids in it]} for the namespaces other than ours, [pids denied])."""
    readlink = os.readlink
    namespaces = {}
    denied = []
    for pid in os.listdir(proc_fd):
        if not pid.isdigit():
            continue
        try:
            mntns = readlink(pid + "/ns/mnt", dir_fd=proc_fd)
        except PermissionError:
            denied.append(pid)
            continue
        except OSError:
            continue  # exited, or a zombie
        if mntns != self_mntns:
            pids = namespaces.get(mntns)
            if pids is None:
                namespaces[mntns] = [pid]
            else:
                pids.append(pid)
    return namespaces, denied


def _scan_namespace(scanner, proc_fd, mntns, pids):
    """Read the mountinfo of one process per root directory in the namespace: a chrooted
    process's mountinfo leaves out the mounts outside its root, so the first process of a
    namespace alone may not show them.  The least chrooted view (most mounts) goes first; a
    mount seen again through another root is one holder, not two."""
    refused = None
    roots = {}
    for pid in pids:
        try:
            st = os.stat(pid + "/root", dir_fd=proc_fd)
        except PermissionError:
            refused = pid
            continue
        except OSError:
            continue  # exited, or a zombie
        roots.setdefault((st.st_dev, st.st_ino), []).append(pid)
    views = []
    for candidates in roots.values():
        for pid in candidates:
            try:
                text = read_text(pid + "/mountinfo", dir_fd=proc_fd)
            except PermissionError:
                refused = pid
                continue
            except OSError:
                continue  # exited meanwhile: another process with this root will do
            views.append((text.count("\n"), pid, text))
            break
    if not views and refused is not None:
        scanner.partial("the mounts of mount namespace %s (pid %s) could not be read (permission denied): run as "
                        "root (become: true)" % (mntns, refused))
    seen = set()
    for _count, pid, text in sorted(views, key=lambda view: -view[0]):
        if MOUNT_DELETED not in text:
            continue
        container = None
        for mount in _held_roots(parse_mountinfo(text)):
            if mount["id"] in seen:
                continue
            seen.add(mount["id"])
            if container is None:
                try:
                    container = container_of(read_text(pid + "/cgroup", dir_fd=proc_fd)) or False
                except OSError:
                    container = False
            _add_mount(scanner, mount, pid, mntns, "%s/%s/root" % (scanner.proc, pid), container, proc_fd)


def _held_roots(mounts):
    """The mounts whose root is deleted, and that are on top at their mount point (reachable)."""
    candidates = [mount for mount in mounts if mount["root"].endswith(MOUNT_DELETED)]
    if not candidates:
        return []
    top = {}
    for mount in mounts:  # mountinfo lists a namespace's mounts in mount order: the last one is on top
        top[mount["mount_point"]] = mount["id"]
    return [mount for mount in candidates if top[mount["mount_point"]] == mount["id"]]


def _add_mount(scanner, mount, pid, mntns, prefix, container=None, proc_fd=None):
    """The orphan held by MOUNT (of process PID's namespace, or ours when PID is None)."""
    mount_point = mount["mount_point"]
    try:
        if pid is None:
            st = os.stat(mount_point)
        else:
            st = os.stat(pid + "/root" + mount_point, dir_fd=proc_fd)
    except PermissionError:
        scanner.partial("%s%s: cannot look at a mount whose root was deleted (permission denied): run as root "
                        "(become: true)" % (prefix, mount_point))
        return
    except OSError:
        return  # unmounted, or the process exited, meanwhile
    if st.st_nlink != 0:
        return  # it has a name again (another hard link, or a relink)
    if mount["fstype"] not in ANON_DEV_FSTYPES and st.st_dev != mount["dev"]:
        return  # something else is reached at that path (a mount over a parent directory)
    root = mount["root"][:-_MOUNT_DELETED_LEN] or "/"
    path = source_path(scanner.mounts, mount["dev"], root)
    if scanner.is_nameless(path or root, st):
        return
    key = (st.st_dev, st.st_ino)
    orphan = scanner.orphans.get(key)
    if orphan is None:
        orphan = scanner.new_orphan(key, st.st_dev, st.st_ino, st, path or root)
    elif orphan.st is None:
        orphan.st = st
    detail = {"mount_point": mount_point, "mntns": mntns, "host_path": prefix + mount_point}
    if path is None:  # no mount of ours shows its filesystem: its path is the one within that filesystem
        detail["source_visible"] = False
    if container:
        detail["container"] = container
    orphan.holders.append(("mount", None, detail))


def source_path(table, dev, root):
    """ROOT, a path within the filesystem of mountinfo device DEV, as our namespace reaches it
    through a mount of that filesystem (MountTable TABLE), or None when none shows it.

    Among the mounts that show it, the one with the shortest root wins (the filesystem's
    own mount before a bind mount of a subdirectory), then the first one mounted."""
    best = None
    for mount in table.mounts:
        if mount["dev"] != dev:
            continue
        mount_root = mount["root"]
        if mount_root == "/":
            rest = root
        elif root == mount_root or root.startswith(mount_root + "/"):
            rest = root[len(mount_root):]
        else:
            continue
        if best is None or len(mount_root) < len(best[0]):
            best = (mount_root, mount["mount_point"].rstrip("/") + rest)
    if best is None:
        return None
    return best[1] or "/"
