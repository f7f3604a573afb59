#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: frelink_facts
short_description: Find files that were deleted while something still holds them
version_added: "0.1.0"
description:
  - Finds every inode on the managed host that has no name left (its link count,
    read with C(stat) through a C(/proc) handle, is 0) but is still held open by a
    process file descriptor, a memory mapping only, a process's current directory,
    root directory or executable, a loop device, an active swap file, or a mount whose
    root it is (a file bind-mounted into a container, then replaced by a rename at its source).
  - The C( (deleted)) text the kernel appends to C(/proc) links (and the C(//deleted) it appends
    to a mount's root in C(/proc/PID/mountinfo)) only selects candidates; a live file whose name
    ends in C( (deleted)) is not reported.
  - Files that never had a name are not reported; memfd, C(O_TMPFILE) files,
    SysV shared memory, shared anonymous mappings, sockets and pipes.
    Deleted files on tmpfs (for example C(/dev/shm)) that once had a name are reported.
  - A deleted file whose original path has since been taken by a new file is
    reported with C(path_free=false).
  - Only candidates are statted, so a dead NFS mount does not block the scan unless
    a deleted-and-held candidate lives on it.
  - With the frelink kernel module loaded, the module lists the handles on deleted files itself
    (see O(backend)), which is several times faster than reading C(/proc) on a busy host.
  - Without root the scan is partial; C(complete) in RV(ansible_facts.frelink.scan) is
    V(false) and its C(warnings) say what could not be seen.
  - Needs only the Python standard library on the managed node and runs no subprocess.
author:
  - frelink contributors (@frelink)
options:
  include:
    description:
      - Only report orphans whose original path matches one of these shell globs
        (Python C(fnmatch); C(*) also matches C(/)).
      - The alias O(paths) is the name M(frelink.frelink.frelink_restore) gives the same patterns.
    type: list
    elements: str
    aliases: [paths]
  exclude:
    description:
      - Do not report orphans whose original path matches one of these shell globs.
    type: list
    elements: str
  min_size:
    description:
      - Only report orphans of at least this size (apparent size), in bytes or with a unit as
        M(ansible.builtin.find) takes it (C(100m), C(10k), C(1.5G); powers of 1024).
    type: str
    default: "0"
  kinds:
    description:
      - Which holders to look for. Orphans held only by other kinds are not reported,
        and the scan skips the work for kinds not listed (for example C(mmap) reads
        every process's C(/proc/PID/maps)).
    type: list
    elements: str
    choices: [fd, mmap, cwd, root, exe, loop, swap, mount]
    default: [fd, mmap, cwd, root, exe, loop, swap, mount]
  limit:
    description:
      - At most this many orphans are listed, the largest (allocated bytes) first.
        The summary still counts every orphan that matched the other options.
      - V(0) lists all of them. The default keeps the facts near 50 KB on a busy host (host facts
        over about 100 KB slow every later task of a play); C(playbooks/audit.yml) and
        C(playbooks/recover.yml) ask for all.
    type: int
    default: 100
  backend:
    description:
      - How processes are inspected; loop devices, swaps and mounts are read from C(/sys), C(/proc/swaps) and
        C(/proc/PID/mountinfo) either way.
      - V(auto) asks the frelink kernel module when it is loaded and can list (one request returns every handle
        on a deleted file, so no C(/proc/PID/fd) entry is read one by one), and reads C(/proc) otherwise.
      - V(kernel) only asks the module, and fails when it cannot list (not loaded, older than this collection,
        or no root).
      - V(proc) always reads C(/proc).
      - Both give the same facts; RV(ansible_facts.frelink.scan) says in C(backend) which one ran.
    type: str
    choices: [auto, kernel, proc]
    default: auto
attributes:
  check_mode:
    support: full
    description: The module only reads; check mode runs the same scan.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  facts:
    support: full
    description: Returns C(ansible_facts.frelink).
requirements:
  - Python 3.8 or newer on the managed node (standard library only).
  - Linux with C(/proc).
notes:
  - Run it with privilege escalation (C(become)) for a complete scan; mappings
    (C(/proc/PID/map_files)) and loop device identities need root.
  - Threads that unshared their file table (C(clone) without C(CLONE_FILES)) are
    not inspected separately; only thread group leaders are.
  - Loop-device and swap-only orphans have no handle to C(stat); for them the kernel's
    deleted marker on the backing path is all there is, and C(confirmed) is V(false).
    Loop backing inodes are identified by C(LOOP_GET_STATUS64) (device and inode number).
    Swap-only orphans have no inode number. Current kernels refuse to unlink an
    active swap file and to swapon a deleted one, so swap orphans are not expected.
  - Mount-held orphans are looked for in every mount namespace (one C(/proc/PID/ns/mnt) link read per
    process, one C(/proc/PID/mountinfo) per namespace); their mount points are statted through
    C(/proc/PID/root), which needs root for other users' processes.
  - The short name C(frelink_facts) works once the collection is in the play's
    C(collections:) keyword, or for ad-hoc use when C(ANSIBLE_LIBRARY) (or
    C(library) in C(ansible.cfg)) points at the collection's C(plugins/modules)
    directory; see the collection README.
seealso:
  - name: lsof(8)
    description: C(lsof +L1) lists files with a link count below 1, but misses mapped-only and loop-held files.
    link: https://man7.org/linux/man-pages/man8/lsof.8.html
  - name: proc(5)
    description: The /proc files this module reads.
    link: https://man7.org/linux/man-pages/man5/proc.5.html
"""

EXAMPLES = r"""
- name: Find deleted files still held on the host
  frelink.frelink.frelink_facts:
  become: true

- name: Show what pins the most space
  ansible.builtin.debug:
    msg: "{{ ansible_facts.frelink.summary.bytes_pinned | human_readable }} pinned by
      {{ ansible_facts.frelink.summary.count }} deleted files"

- name: Only big deleted logs, at most 20 of them
  frelink.frelink.frelink_facts:
    include: ["/var/log/*"]
    min_size: 100m
    limit: 20
  become: true

- name: Only loop devices and swap files
  frelink.frelink.frelink_facts:
    kinds: [loop, swap]
  become: true

# Ad hoc, on every host:
#   ansible all -b -m frelink.frelink.frelink_facts -a 'min_size=1000000'
"""

RETURN = r"""
ansible_facts:
  description: Facts under one key, C(frelink).
  returned: always
  type: complex
  contains:
    frelink:
      description: What the scan found.
      returned: always
      type: complex
      contains:
        summary:
          description:
            - Totals over every orphan that matched O(include), O(exclude), O(min_size)
              and O(kinds), also those beyond O(limit).
            - V(count), V(listed), V(truncated) (more matched than listed),
              V(bytes_pinned) (allocated bytes held), V(bytes_apparent) (sum of sizes),
              V(by_kind) (orphans with at least one holder of each kind), V(bytes_by_kind) (their
              allocated bytes), V(deliberate) (V(count), V(bytes_pinned) and V(by_idiom) of the orphans
              that a program unlinked on purpose and keeps using, such as POSIX semaphores; they are in
              every other count too), V(by_class) (V(count) and V(bytes_pinned) of each class, see
              RV(ansible_facts.frelink.orphans)), V(mapped_only)
              (orphans held by mappings only), V(by_filesystem) (list of V(device),
              V(mount_point), V(fstype), V(count), V(bytes_pinned), V(free_bytes) available
              on that filesystem, for copies).
          returned: always
          type: dict
          sample:
            count: 1
            listed: 1
            truncated: false
            bytes_pinned: 1052672
            bytes_apparent: 1048576
            by_kind: {fd: 1, mmap: 0, cwd: 0, root: 0, exe: 0, loop: 0, swap: 0, mount: 0}
            bytes_by_kind: {fd: 1052672, mmap: 0, cwd: 0, root: 0, exe: 0, loop: 0, swap: 0, mount: 0}
            deliberate: {count: 0, bytes_pinned: 0, by_idiom: {}}
            by_class:
              lost: {count: 1, bytes_pinned: 1052672}
              replaced: {count: 0, bytes_pinned: 0}
              deliberate: {count: 0, bytes_pinned: 0}
              kernel: {count: 0, bytes_pinned: 0}
            mapped_only: 0
            by_filesystem:
              - {device: "254:0", mount_point: /, fstype: ext4, count: 1, bytes_pinned: 1052672,
                 free_bytes: 80495566848}
        orphans:
          description:
            - One entry per deleted inode, largest allocated first, at most O(limit).
            - V(dev) (st_dev), V(device) (C(maj:min)), V(ino), V(generation) (only for a file held by a
              loop device and only with the frelink kernel module loaded; the inode generation the module
              reports, which M(frelink.frelink.frelink_restore) passes back so that a file that took the inode
              number after this one was freed is refused), V(path) (original path, in the
              holder's mount namespace), V(type) (V(file), V(directory), ...), V(size),
              V(allocated) (st_blocks * 512), V(mode) (octal string), V(uid), V(owner),
              V(gid), V(group), V(mtime), V(fstype), V(mount_point),
              V(path_free) (nothing exists at V(path) now; V(false) when it was re-created),
              V(open_path) (a C(/proc) path that opens the inode now, for a mount-only orphan the
              mount point's V(host_path); V(null) for loop/swap-only orphans), V(holders) (at most 16),
              V(restore) (V(relink) possible with the frelink kernel module, V(reflink) possible;
              a copy needs V(size) bytes, the free space is per filesystem, in V(by_filesystem)
              of RV(ansible_facts.frelink.summary)).
            - A file removed on an NFS client while a process holds it is renamed by the client to
              C(.nfsXXXX) instead (silly rename) and keeps a link count of 1; it is listed with
              V(nfs_silly_rename=true), V(path) its current C(.nfs) name, V(original_path) V(null) (the
              client records the original name nowhere) and a V(note) saying so; V(restore.relink) is
              V(true) because a plain C(link(2)) gives it its name back, no module needed.
            - V(restore.relink) is V(true) only on the filesystems the frelink module relinks on
              (ext2/3/4, xfs, btrfs, tmpfs) when it is loaded; V(false) on any other (FUSE, vfat, NFS, ...).
            - V(deliberate) (V(idiom) and V(why)) marks an orphan that its program unlinked on purpose
              and keeps using, so nothing was lost. They are V(posix_semaphore) (C(/dev/shm/sem.*), as Python's
              multiprocessing makes them), V(posix_shm) (well-known C(shm_open) names of Chromium,
              PulseAudio, Firefox), V(innodb_tmpfile) (C(ibXXXXXX) held by C(mysqld) or C(mariadbd)).
              The audit and the metrics count them apart.
            - V(class) says what the file means (docs/facts.md). V(lost), the default, its data dies with its holders;
              V(kernel), held only by a loop device, swap or mount, as unique; V(replaced), code or package
              content whose path now holds a newer file (a deleted executable or mapped ELF object whose path
              holds a file again, or a path dpkg or rpm owns replaced by an upgrade, then V(package) names the package);
              nothing to restore, restarting its holders frees it; V(deliberate), see above. A data file deleted
              while open and re-created at the same path stays V(lost).
            - A name that is not valid UTF-8 is shown with each stray byte as C(\xNN), and its exact bytes are
              added in base64 under the same key plus C(_b64) (V(path_b64), V(open_path_b64), a holder's
              V(host_path_b64)); M(frelink.frelink.frelink_restore) takes the text form or the identity and
              restores the original bytes.
            - To keep the result lean, two values appear only when they differ from their default,
              V(confirmed) (V(false) for loop/swap-only orphans, whose link count 0 cannot be read
              by stat) and V(holder_count) (the total, when more than 16 holders are listed).
            - Each holder has V(kind) (V(fd), V(mmap), V(cwd), V(root), V(exe), V(loop), V(swap), V(mount)).
              Process holders have V(pid), V(name), V(user); V(fd) holders add V(fd), V(mode)
              (V(r), V(w), V(rw), +V(a) for append) and V(pos); process holders in a systemd unit have V(unit)
              (the unit from C(/proc/PID/cgroup), a service, a session or other scope, C(init.scope)) and, under a
              user's manager (C(user@UID.service)), V(user_unit). An orphan with more than 16 holders also has
              V(restart_targets), the V(kind) and V(name) of what to restart for every holder (pod, container,
              unit, process, loop, swap). V(mmap) holders add V(range)
              (first mapping, for C(/proc/PID/map_files)) and V(mappings) (how many).
              A holder in another mount namespace or chroot adds V(mntns) and V(host_path)
              (the path through C(/proc/PID/root)).
              V(loop) holders have V(device), V(offset), V(sizelimit), V(read_only),
              V(autoclear) and V(mounts) (mount points of the loop device).
              V(swap) holders have V(size), V(used) and V(priority).
              V(mount) holders (a mount whose root is the deleted file or directory, as a bind mount of a file
              replaced by a rename at its source leaves it) have V(mount_point) (in its mount namespace),
              V(mntns) (that namespace, V(null) for Ansible's own), V(host_path) (the mount point as reached from
              here, through C(/proc/PID/root) for another namespace; opening it opens the deleted inode) and
              V(container) when that namespace's process is in a recognised container; they have no V(pid).
              The orphan's V(path) is then the mount's source as Ansible's namespace sees it; when no mount here
              shows that filesystem, V(path) is the path within that filesystem and the holder has
              V(source_visible=false).
          returned: always
          type: list
          elements: dict
          sample:
            - dev: 65024
              device: "254:0"
              ino: 2146326
              path: /var/log/app.log
              type: file
              size: 1048576
              allocated: 1052672
              mode: "0644"
              uid: 0
              owner: root
              gid: 0
              group: root
              mtime: 1795479594.21
              fstype: ext4
              mount_point: /
              path_free: true
              open_path: /proc/9681/fd/3
              class: lost
              holders:
                - {kind: fd, pid: 9681, name: app, user: root, unit: app.service, fd: 3, mode: w, pos: 1048576}
              restore: {relink: true, reflink: false}
        scan:
          description:
            - V(complete) (V(false) when something could not be inspected, e.g. without root),
              V(warnings) (what and how to fix it), V(processes) and V(fds) inspected,
              V(kinds) looked for, V(euid) of the scan, V(backend) (V(kernel) or V(proc), see O(backend);
              V(null) when no process kind was asked for).
          returned: always
          type: dict
          sample:
            complete: true
            warnings: []
            processes: 153
            fds: 2120
            kinds: [fd, mmap, cwd, root, exe, loop, swap, mount]
            euid: 0
            backend: kernel
"""

import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.formatters import human_to_bytes

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import BACKENDS, DEFAULT_LIMIT, KINDS, KernelListingError, scan


def main():
    module = AnsibleModule(
        argument_spec=dict(
            include=dict(type="list", elements="str", aliases=["paths"]),
            exclude=dict(type="list", elements="str"),
            min_size=dict(type="str", default="0"),
            kinds=dict(type="list", elements="str", choices=list(KINDS), default=list(KINDS)),
            limit=dict(type="int", default=DEFAULT_LIMIT),
            backend=dict(type="str", choices=list(BACKENDS), default="auto"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        min_size = human_to_bytes(params["min_size"].strip())
    except (ValueError, TypeError):
        min_size = -1
    if min_size < 0:
        module.fail_json(msg="min_size must be a size of 0 or more: bytes (104857600) or with a unit "
                             "(100m, 10k, 1.5G), got %r" % params["min_size"])
    if params["limit"] < 0:
        module.fail_json(msg="limit must be 0 (list all) or a positive number of orphans, got %d" % params["limit"])
    try:
        facts = scan(
            include=params["include"],
            exclude=params["exclude"],
            min_size=min_size,
            kinds=params["kinds"],
            limit=params["limit"],
            backend=params["backend"],
        )
    except KernelListingError as exc:
        module.fail_json(msg="backend=kernel: %s" % exc.strerror, errno=exc.errno)
    except OSError as exc:
        module.fail_json(msg="scanning /proc failed: %s; is /proc mounted (Linux only)?" % exc)
    except Exception as exc:  # pylint: disable=broad-except  # a message, never a bare traceback
        module.fail_json(msg="frelink_facts stopped on an unforeseen %s: %s. This is a bug: please report it with the "
                             "task's arguments (the traceback is shown with -vvv)" % (type(exc).__name__, exc),
                         exception=traceback.format_exc())
    if not facts["scan"]["complete"]:
        # shown as [WARNING], not only inside the facts
        module.warn("the scan is partial, so deleted files may be missing from the facts: %s"
                    % ("; ".join(facts["scan"]["warnings"]) or "run it with become"))
    module.exit_json(changed=False, ansible_facts={"frelink": facts})


if __name__ == "__main__":
    main()
