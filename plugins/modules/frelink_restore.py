#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: frelink_restore
short_description: Give deleted files that are still held open their name back
version_added: "0.1.0"
description:
  - Restores a file that was deleted while a process, a memory mapping, a loop device or a mount (a bind-mounted
    file replaced by a rename at its source) still holds it (an I(orphan) as M(frelink.frelink.frelink_facts)
    reports it).
  - With O(method=link) (the default choice of O(method=auto)) the live inode itself gets a name again through
    the frelink kernel module (C(/dev/frelink), deployed by the role C(frelink.frelink.frelink_kmod)). This takes
    constant time whatever the size, and every later write of the holder is in the restored file; it is the
    file itself.
  - O(method=reflink) (FICLONE, same CoW filesystem) and O(method=copy) make a B(new) file with the same content.
    They do not preserve identity (new inode); a process that still holds the deleted file keeps writing to the
    deleted one, and those writes are not in the copy. That is why they are only used when asked for, either
    explicitly or as O(fallback) of O(method=auto). A copy or clone is committed only when the source did not
    change while it was read (size, mtime and ctime unchanged, and the source read again after the copy has the
    sha256 of the copy); otherwise it is retried O(copy_retries) times and then fails. A torn copy is never kept.
    A copy keeps the owner, mode, times and every extended attribute the destination accepts (C(user.*),
    C(security.*) such as the SELinux label and file capabilities, POSIX ACLs); the data moves with
    C(copy_file_range), holes stay holes.
  - With O(method=auto) a relink that is impossible (the module is not loaded, the filesystem is not one it
    relinks on) or that the kernel refuses without changing anything (C(EOPNOTSUPP), C(EXDEV), C(EPERM) for an
    append-only or immutable file, C(EACCES) from a security module, C(EROFS)) goes on to the first possible
    method of O(fallback); RV(fallback_reasons) says why.
    Check mode predicts the same path from the same table.
  - A file removed on an NFS client while open is renamed by the client to C(.nfsXXXX) and still has that name
    (M(frelink.frelink.frelink_facts) reports it with C(nfs_silly_rename)). It gets its new name O(dest) with a
    plain C(link(2)) of the same inode, no kernel module needed; its original name is not recorded anywhere, so
    O(dest) is required.
  - Never overwrites anything. If O(dest) already names the same inode the task is C(changed=false); for a copy,
    if O(dest) already holds identical bytes it is C(changed=false) too. Any other existing O(dest) is a failure
    that names both files.
  - Never follows a symbolic link in O(dest); each parent directory is opened from C(/) with C(O_NOFOLLOW), and
    the new name is made relative to the last one. A O(dest) under C(/proc/PID/root/) is resolved inside that
    process's mount namespace (for holders in another mount namespace); only that C(/proc/PID/root) link is
    followed.
  - Select one file by its original path (O(path)), by what holds it (O(src)) or by its identity (O(device) and
    O(inode), straight from the facts); or many at once with O(paths) and O(dest_dir). Two deleted files with
    the same original path are never guessed between; the task fails and lists the candidates.
author:
  - frelink contributors (@frelink)
options:
  path:
    description:
      - The original path of the deleted file, as C(ansible_facts.frelink.orphans[].path) and
        C(/proc/PID/fd) show it (without the C( (deleted)) suffix).
      - For a file held by a mount, also its mount point (C(/proc/PID/root/MOUNT/POINT) for a mount in another
        mount namespace, as the holder's C(host_path) shows it).
      - If no deleted file has this path and the destination exists, the task is C(changed=false)
        (restored before); if the destination does not exist either, it fails.
    type: str
  src:
    description:
      - What holds the file now, as the C(frelink) tool of old took it, C(/proc/PID/fd/N),
        C(/proc/PID/map_files/START-END), C(/proc/PID/exe), or a loop device C(/dev/loopN) whose backing file was
        deleted.
      - A file held only by a loop device can only be relinked (O(method=link)); no process has it open, so there is
        nothing to copy from.
    type: str
  device:
    description:
      - The device of the deleted file, as C(ansible_facts.frelink.orphans[].device) (C(major:minor)) or C(.dev)
        (the number C(st_dev)). Requires O(inode).
    type: raw
  inode:
    description:
      - The inode number of the deleted file (C(ansible_facts.frelink.orphans[].ino)). Requires O(device).
      - The alias O(ino) is the facts' own name for it.
    type: int
    aliases: [ino]
  generation:
    description:
      - With O(device) and O(inode), the inode generation the facts gave for the file
        (C(ansible_facts.frelink.orphans[].generation), reported for a file that only a loop device holds, when the
        kernel module is loaded).
      - An inode number is reused once its file is freed (a loop device detached), so device and inode from older
        facts may name another deleted file now. With O(generation) such a file is refused and nothing is changed,
        and the kernel module checks the generation again under the locks of the link.
    type: int
    version_added: "0.2.0"
  paths:
    description:
      - Bulk form. Shell-style patterns (C(fnmatch); C(*) also matches C(/)) matched against the original path of
        every deleted file on the host; every match is restored, with one entry per file in RV(results).
      - Without O(dest_dir) each one goes back to its original path.
      - The alias O(include) is the name M(frelink.frelink.frelink_facts) gives the same patterns.
    type: list
    elements: str
    aliases: [include]
  dest:
    description:
      - The new path of the file. Defaults to its original path (seen from the holder's mount namespace when that
        differs from Ansible's; for a file held only by mounts, the mount's source as Ansible's namespace sees it,
        and no default when no mount here shows that filesystem).
      - With O(method=link) and O(method=reflink) it must be on the file's own filesystem (and mount).
      - Mutually exclusive with O(dest_dir) and O(paths).
    type: str
  dest_dir:
    description:
      - A directory to restore into instead of the original location, arranged by O(layout).
      - An absolute path; a relative one is refused before anything is looked at.
    type: str
  layout:
    description:
      - How names are made under O(dest_dir). V(tree) keeps the whole original path below O(dest_dir)
        (C(/srv/db/x) becomes C(DEST_DIR/srv/db/x); needs O(create_parents=true) unless those directories exist),
        V(flat) keeps only the file name (two files with the same name then collide, and the second one fails).
    type: str
    choices: [tree, flat]
    default: tree
  method:
    description:
      - V(link) relinks the live inode through the kernel module (identity preserved, constant time). Fails if the
        module is not loaded or O(dest) is on another filesystem.
      - V(reflink) clones it with FICLONE into a new inode on the same filesystem (btrfs, xfs with reflink, ...).
      - V(copy) copies it into a new inode anywhere, verified by sha256.
      - V(auto) uses V(link) when possible; otherwise the first method of O(fallback) that is possible; otherwise
        it fails and says why each one is impossible.
    type: str
    choices: [auto, link, reflink, copy]
    default: auto
  fallback:
    description:
      - With O(method=auto), the methods allowed, in order, when a relink is impossible. Empty by default because
        a reflink or copy is a new file that the holder does not write to.
    type: list
    elements: str
    choices: [reflink, copy]
    default: []
  create_parents:
    description:
      - Create missing parent directories of the destination (mode 0755, owned by the remote user). Existing
        components must be real directories, not symlinks.
    type: bool
    default: false
  copy_retries:
    description:
      - How many more times a copy or reflink is attempted after the first one when the source changes while it
        is read, before failing. V(0) means one attempt and no retry.
    type: int
    default: 2
notes:
  - Needs root on the managed node (C(become=true)) to open other users' files through C(/proc) and to use
    C(/dev/frelink).
  - The selection comes from the same scan as M(frelink.frelink.frelink_facts).
  - Only regular files can be restored. A deleted directory (a process's cwd) or device node cannot.
  - A relinked file gets its name in the directory given, even while the holder keeps writing; C(/proc/PID/fd/N)
    of the holder may keep showing C( (deleted)) because it names the old directory entry.
seealso:
  - module: frelink.frelink.frelink_facts
attributes:
  check_mode:
    support: full
    description: Reports what would be restored, where, and with which method; changes nothing.
  diff_mode:
    support: full
    description: Shows the destination path before (absent) and after (device, inode, size, method).
  platform:
    support: full
    platforms: posix
    description: Linux only (C(/proc), FICLONE, the frelink kernel module).
requirements:
  - Python 3.8 or newer on the managed node (standard library only).
  - Linux; the frelink kernel module for O(method=link) (not for NFS silly-renamed files).
"""

EXAMPLES = r"""
- name: Relink the file a process still has open as fd 4 (the old `frelink /proc/574/fd/4`)
  frelink.frelink.frelink_restore:
    src: /proc/574/fd/4
  become: true

- name: Relink the deleted backing file of /dev/loop1 (the old `frelink /dev/loop1`) under a new name
  frelink.frelink.frelink_restore:
    src: /dev/loop1
    dest: /var/lib/images/vm1.img
  become: true

- name: Give /var/lib/mysql/ibdata1 its name back, copying it if the module is not available
  frelink.frelink.frelink_restore:
    path: /var/lib/mysql/ibdata1
    method: auto
    fallback: [reflink, copy]
  become: true

- name: Restore every deleted file found by frelink_facts under /srv, selected by identity
  frelink.frelink.frelink_restore:
    device: "{{ item.device }}"
    inode: "{{ item.ino }}"
    dest: "{{ item.path }}"
  loop: "{{ ansible_facts.frelink.orphans | selectattr('path', 'match', '/srv/') | list }}"
  loop_control:
    label: "{{ item.path }}"
  become: true

- name: Copy everything deleted under /home into /recovered, keeping the directory layout
  frelink.frelink.frelink_restore:
    paths: ["/home/*"]
    dest_dir: /recovered
    create_parents: true
    method: copy
  become: true
  register: recovered
"""

RETURN = r"""
msg:
  description: What was done, or why not.
  returned: always
  type: str
  sample: relinked /srv/db/data.ibd to /srv/db/data.ibd
status:
  description:
    - V(restored), V(would_restore) (check mode), V(already_restored) (dest names the same inode),
      V(already_copied) (dest holds identical bytes), V(copy_outdated) (dest holds exactly the first bytes of a
      still-held file that has grown since; nothing is changed, the message says how to refresh it) or
      V(nothing_to_restore) (no such deleted file, dest exists).
  returned: single selector (path, src, device+inode) and success
  type: str
  sample: restored
method:
  description: The method used (or that would be used in check mode). V(link) for V(already_restored).
  returned: single selector and success
  type: str
  sample: link
link_mechanism:
  description: For O(method=link), V(frelink_kmod) (the kernel module's relink ioctl) or V(linkat) (a plain
    C(link(2)) of an NFS silly-renamed file, which still has a name).
  returned: method is link
  type: str
  sample: frelink_kmod
identity_preserved:
  description: True for a relink (dest is the very inode the holders write to); false for reflink and copy.
  returned: single selector and success
  type: bool
  sample: true
path:
  description: Original path of the file.
  returned: single selector
  type: str
  sample: /srv/db/data.ibd
dest:
  description: The path the file has (or would have) now.
  returned: single selector
  type: str
  sample: /srv/db/data.ibd
dev:
  description: C(st_dev) of the deleted file.
  returned: single selector
  type: int
  sample: 2049
device:
  description: C(major:minor) of the deleted file.
  returned: single selector
  type: str
  sample: "8:1"
ino:
  description: Inode number of the deleted file.
  returned: single selector
  type: int
  sample: 131075
dest_ino:
  description: Inode number of the new file made by a reflink or copy.
  returned: reflink or copy done
  type: int
  sample: 131099
size:
  description: Size of the file in bytes.
  returned: single selector
  type: int
  sample: 1048576
fallback_reasons:
  description: With O(method=auto), why each method before the one used was impossible, or refused by the kernel
    without changing anything.
  returned: a fallback was used
  type: list
  elements: str
  sample: ["link: the frelink kernel module is not loaded ...", "reflink: the ext4 filesystem does not support reflinks ..."]
created_dirs:
  description: Parent directories created (or that would be created) because of O(create_parents).
  returned: when restoring
  type: list
  elements: str
  sample: [/recovered/srv]
verification:
  description:
    - For a relink, C(lstat) of dest after the relink (C(same_inode), C(dest_dev), C(dest_ino), C(nlink), C(size)).
    - For a copy or reflink, C(sha256) of the copy, C(source_sha256) of the source read again after it,
      C(size), C(attempts), C(source_unchanged), C(xattrs) (the extended attributes copied) and
      C(xattrs_not_kept) (those the destination refused, with the reason; only when there are some).
  returned: restored or already restored
  type: dict
  sample: {same_inode: true, dest_dev: 2049, dest_ino: 131075, nlink: 1, size: 1048576}
candidates:
  description: The deleted files that share the selected original path (when the selection is ambiguous).
  returned: on ambiguity
  type: list
  elements: dict
  sample: [{path: /srv/x, device: "8:1", dev: 2049, ino: 12, size: 4, open_path: /proc/77/fd/3, holders: []}]
results:
  description: One entry per selected file, with the keys above plus C(selector), C(changed) and C(failed).
  returned: always
  type: list
  elements: dict
  sample: [{selector: /srv/x, status: restored, method: link, dest: /srv/x, changed: true}]
scan:
  description: The C(scan) part of the facts (completeness, warnings) when a scan was needed to select.
  returned: always
  type: dict
  sample: {complete: true, warnings: []}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.module_result import exit_with_run
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.restore.run import (
    FALLBACKS,
    METHODS,
    run,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="str"),
            src=dict(type="str"),
            device=dict(type="raw"),
            inode=dict(type="int", aliases=["ino"]),
            generation=dict(type="int"),
            paths=dict(type="list", elements="str", aliases=["include"]),
            dest=dict(type="str"),
            dest_dir=dict(type="str"),
            layout=dict(type="str", choices=["tree", "flat"], default="tree"),
            method=dict(type="str", choices=list(METHODS), default="auto"),
            fallback=dict(type="list", elements="str", choices=list(FALLBACKS), default=[]),
            create_parents=dict(type="bool", default=False),
            copy_retries=dict(type="int", default=2),
        ),
        mutually_exclusive=[
            ("path", "src", "device", "paths"),
            ("path", "src", "inode", "paths"),
            ("dest", "dest_dir"),
            ("dest", "paths"),
        ],
        required_together=[("device", "inode")],
        required_by={"generation": ("device", "inode")},
        required_one_of=[("path", "src", "device", "paths")],
        supports_check_mode=True,
    )
    exit_with_run(module, "frelink_restore", run, "Nothing was overwritten.")


if __name__ == "__main__":
    main()
