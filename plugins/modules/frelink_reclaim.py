#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: frelink_reclaim
short_description: Free the space of deleted files that are still held open, without restarting their holders
version_added: "0.2.0"
description:
  - Frees the disk space of files that were deleted while a process still holds them open (the full disk whose
    C(df) and C(du) disagree because a service still writes a deleted log), by truncating each file to 0 bytes
    through a holder's descriptor (C(/proc/PID/fd/N)). The holders are not restarted and keep their descriptors.
  - The safe form of emptying C(/proc/PID/fd/N) by hand with a shell redirection. Each file is opened through C(/proc/PID/fd/N) for writing
    and checked with C(fstat) before it is truncated. It must have the same identity (device and inode) as the
    scan found, be a regular file, and still be deleted (C(st_nlink) 0). The C( (deleted)) text of the link
    is never trusted.
  - The data of a truncated file is gone, unless O(archive_dir) is set. Then a gzip copy of each file is
    written there first and read back and compared (sha256) before the file is truncated.
  - A writer that holds the file in append mode (C(O_APPEND), as loggers do) goes on writing at the new end, from
    byte 0. A writer that holds it without C(O_APPEND) goes on writing at its own offset. The file then has a
    hole from 0 to that offset, which takes no space (a sparse file; its size shows the offset).
  - By default only files that are safe to truncate are, by the rule the audit and the metrics count as
    reclaimable. The file must be of class C(lost) (not C(replaced), C(deliberate) or C(kernel)). No process may
    map it or run it, and no loop device, swap area or mount may hold it. At least one process must hold it
    through a descriptor, and every descriptor that can write it must be write-only or in append mode.
  - A file that a process holds read-write (it may be a database), or that no process writes, is truncated only
    with O(allow_read_write=true). A mapped file is never truncated, not even then; truncating it would kill the
    processes that map it with C(SIGBUS).
  - All or nothing. Every selected file is judged, opened and verified before the first one is truncated. If any
    is refused, the task fails and nothing is changed, unless O(skip_refused=true). Each refusal says why and what
    to restart instead (systemd unit, container, pod or process, from the facts).
    Once a file has been truncated the task no longer fails. A file that cannot be done then is reported with
    C(status) V(not_reclaimed) in RV(results) and a warning.
  - Idempotent. A file that is already empty, or that nothing holds any more, is not a change.
  - Select the files as with M(frelink.frelink.frelink_restore), by the original path (O(path)), by what holds
    it (O(src)), by identity (O(device) and O(inode)), or many at once with O(paths).
author:
  - frelink contributors (@frelink)
options:
  path:
    description:
      - The original path of the deleted file, as C(ansible_facts.frelink.orphans[].path) shows it (without the
        C( (deleted)) suffix).
      - If no deleted file that is still held has this path, the task is C(changed=false).
    type: str
  src:
    description:
      - What holds the file now, C(/proc/PID/fd/N) (or C(/proc/PID/map_files/START-END), C(/proc/PID/exe), a loop
        device C(/dev/loopN); those are refused by the safety rules).
    type: str
  device:
    description:
      - The device of the deleted file, as C(ansible_facts.frelink.orphans[].device) (C(major:minor)) or C(.dev)
        (the number C(st_dev)). Requires O(inode).
    type: raw
  inode:
    description:
      - The inode number of the deleted file (C(ansible_facts.frelink.orphans[].ino)). Requires O(device).
    type: int
  paths:
    description:
      - Bulk form. Shell-style patterns (C(fnmatch); C(*) also matches C(/)) matched against the original path of
        every deleted file on the host; every match is judged and, when every one passes, truncated, with one
        entry per file in RV(results).
    type: list
    elements: str
  allow_read_write:
    description:
      - Also truncate files that a process holds read-write without append mode, or that no process writes.
        Their content may be data somebody still needs (a database); set this only for a selection you know.
      - A mapped file, an executable and the other refusals stay refused.
    type: bool
    default: false
  skip_refused:
    description:
      - Truncate the files that pass and report the refused ones (C(status) V(skipped) in RV(results), with why),
        instead of failing and changing nothing.
    type: bool
    default: false
  archive_dir:
    description:
      - A directory for a gzip copy of each file, written and verified before it is truncated. It must be on
        another filesystem than every file to free, and have room for all the copies (the size of the files,
        since compression may gain nothing); otherwise the task fails before any change and gives the figures.
      - The copy is named C(NAME.MAJOR-MINOR.INODE.gz) (C(.1), C(.2) ... appended when that exists).
    type: path
notes:
  - Needs root on the managed node (C(become=true)) to open other users' files through C(/proc).
  - The selection and the facts that the rule reads come from the same scan as M(frelink.frelink.frelink_facts).
  - Just before the first truncation the rule is applied again on a fresh scan, so a file that a process
    mapped or opened read-write meanwhile is refused with nothing changed. A process that does so during that
    last scan or the truncations after it (milliseconds) is not seen.
  - With O(archive_dir), the file is truncated right after its copy is verified and its size is checked
    unchanged; it is copied again (up to three times) while it grows. Bytes written between that last check and
    the truncation, microseconds later, are not in the copy.
seealso:
  - module: frelink.frelink.frelink_facts
  - module: frelink.frelink.frelink_restore
attributes:
  check_mode:
    support: full
    description: Runs every check, opens and verifies every file, and reports the bytes each filesystem would get
      back; changes nothing.
  diff_mode:
    support: full
    description: Shows each file's size and allocated bytes before and after (and the archive).
  platform:
    support: full
    platforms: posix
    description: Linux only (C(/proc)).
requirements:
  - Python 3.8 or newer on the managed node (standard library only).
  - Linux.
"""

EXAMPLES = r"""
- name: See what truncating the deleted logs still held under /var/log would give back
  frelink.frelink.frelink_reclaim:
    paths: ["/var/log/*"]
  check_mode: true
  become: true

- name: Free them, keeping a gzip copy on another filesystem
  frelink.frelink.frelink_reclaim:
    paths: ["/var/log/*"]
    archive_dir: /srv/archive
  become: true

- name: Truncate the file a process holds as fd 4 (the safe `> /proc/574/fd/4`)
  frelink.frelink.frelink_reclaim:
    src: /proc/574/fd/4
  become: true

- name: A deleted file held read-write that you know can go
  frelink.frelink.frelink_reclaim:
    path: /srv/app/cache.bin
    allow_read_write: true
  become: true

- name: Free what passes, list the rest with what to restart
  frelink.frelink.frelink_reclaim:
    paths: ["*"]
    skip_refused: true
  become: true
  register: reclaimed
"""

RETURN = r"""
msg:
  description: What was done, or why not.
  returned: always
  type: str
  sample: 2 of 2 selected deleted files truncated (5251072 bytes).
bytes_to_free:
  description: Check mode, the allocated bytes that truncating the selected files would give back.
  returned: check mode
  type: int
  sample: 5251072
bytes_freed:
  description: The allocated bytes the truncations gave back (the files' C(st_blocks) before and after).
  returned: not check mode
  type: int
  sample: 5251072
filesystems:
  description:
    - One entry per filesystem of the truncated (check mode, to be truncated) files. C(device), C(dev),
      C(mount_point), C(fstype), C(size), C(files), C(bytes_to_free) (the files' allocated bytes),
      C(free_before) and C(avail_before) (C(os.fstatvfs) before, free and available to users), and
      C(free_after_predicted).
    - Not in check mode also C(free_after), C(avail_after) and C(freed) (C(free_after - free_before)), measured.
  returned: always
  type: list
  elements: dict
  sample: [{device: "7:0", mount_point: /var, fstype: ext4, files: 2, bytes_to_free: 5251072,
            free_before: 1048576, free_after: 6299648, freed: 5251072}]
results:
  description:
    - One entry per selected file. C(selector), C(path) (and C(path_b64) for a name that is not UTF-8),
      C(dev), C(device), C(ino), C(size), C(allocated), C(mount_point), C(restart) (what to restart to free it
      instead), C(status), C(msg), C(changed).
    - "C(status): V(reclaimed), V(would_reclaim) (check mode), V(already_empty), V(nothing_to_reclaim) (no
      longer held, or it has a name), V(refused) (with C(refusals), each C(rule) and C(why), and C(failed)),
      V(skipped) (refused, with O(skip_refused)), V(not_reclaimed) (not done because another file was refused,
      or failed after an earlier file changed)."
    - For a truncated file C(through) (the descriptor), C(bytes_freed), C(size_after) and, with O(archive_dir),
      C(archive) (C(archive), with C(archive_b64) for a name that is not UTF-8, C(size), C(sha256) of the bytes copied, C(compressed)); in check mode
      C(bytes_to_free).
  returned: always
  type: list
  elements: dict
  sample: [{selector: /var/log/app.log, path: /var/log/app.log, status: reclaimed, bytes_freed: 4202496,
            through: /proc/812/fd/3, changed: true}]
status:
  description: The C(status) in RV(results) of the only file, when one file was selected with O(path), O(src) or
    O(device) and O(inode) (the other keys of that entry are returned beside it too).
  returned: single selector
  type: str
  sample: reclaimed
scan:
  description: The C(scan) part of the facts (completeness, warnings).
  returned: always
  type: dict
  sample: {complete: true, warnings: []}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.frelink.frelink.plugins.module_utils._frelink.module_result import exit_with_run
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.reclaim.run import run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="str"),
            src=dict(type="str"),
            device=dict(type="raw"),
            inode=dict(type="int"),
            paths=dict(type="list", elements="str"),
            allow_read_write=dict(type="bool", default=False),
            skip_refused=dict(type="bool", default=False),
            archive_dir=dict(type="path"),
        ),
        mutually_exclusive=[
            ("path", "src", "device", "paths"),
            ("path", "src", "inode", "paths"),
        ],
        required_together=[("device", "inode")],
        required_one_of=[("path", "src", "device", "paths")],
        supports_check_mode=True,
    )
    exit_with_run(module, "frelink_reclaim", run, "Nothing was truncated.", refusal=_nothing_changed)


def _nothing_changed(msg):
    """A refusal comes before any change: say so, once."""
    msg = msg.rstrip(".")
    return msg + ("" if "nothing was changed" in msg else ". Nothing was changed.")


if __name__ == "__main__":
    main()
