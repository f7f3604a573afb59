# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: kmod_source_archive
short_description: Pack a directory into a reproducible, base64-encoded tar.gz
version_added: "0.1.0"
description:
  - Packs each directory given into one C(tar.gz) and returns it base64-encoded, ready to be
    sent on a task's standard input (the role C(frelink.frelink.frelink_kmod) ships the
    module sources this way and keeps the archive's digest to see whether they changed).
  - The archive depends only on the names, contents, symbolic link targets and executable
    bits of the files. Entries are sorted by name, every mtime is 0, owner and group are
    C(0) with empty names, directories have mode C(0755), files C(0755) when the owner may
    execute them and C(0644) otherwise, and the gzip header carries no name and no time.
    Packing the same tree twice, on any controller, gives the same bytes.
  - Needs only Python's standard library on the controller (no GNU tar, no C(base64 -w0)).
  - Only regular files, directories and symbolic links are packed; other file types are
    skipped.
author:
  - frelink contributors (@frelink)
options:
  _terms:
    description:
      - Directories to pack. A relative path is looked up like a file of the play or role.
    type: list
    elements: path
    required: true
  excludes:
    description:
      - Shell patterns (C(fnmatch)) matched against the name of every file and directory
        below the packed directory; a match is left out, a directory with its whole content.
    type: list
    elements: str
    default: []
notes:
  - The packed directory itself becomes the archive's root; member names are relative to
    it, without a leading C(./).
seealso:
  - module: ansible.builtin.unarchive
"""

EXAMPLES = r"""
- name: Pack the module sources without build products
  ansible.builtin.set_fact:
    kmod_archive: "{{ lookup('frelink.frelink.kmod_source_archive', playbook_dir ~ '/kmod', excludes=['*.o', '*.ko']) }}"

- name: Unpack them on the host
  ansible.builtin.shell:
    cmd: base64 -d | tar -xz --no-same-owner -C /usr/src/frelink-0.1.0
    stdin: "{{ kmod_archive }}"
  changed_when: true
"""

RETURN = r"""
_raw:
  description:
    - One base64 string (no line breaks) per directory given, the C(tar.gz) of that directory.
  type: list
  elements: str
"""

import base64
import fnmatch
import gzip
import io
import os
import stat
import tarfile

from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.plugins.lookup import LookupBase


def _excluded(name, excludes):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in excludes)


def _members(root, excludes):
    """(archive name, absolute path) of everything to pack below ROOT, sorted by name."""
    found = []
    for current, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _excluded(d, excludes)]
        rel = os.path.relpath(current, root)
        for name in dirs + [f for f in files if not _excluded(f, excludes)]:
            arcname = name if rel == "." else rel.replace(os.sep, "/") + "/" + name
            found.append((arcname, os.path.join(current, name)))
    return sorted(found)


def build_archive(root, excludes=()):
    """The reproducible tar.gz (bytes) of directory ROOT without what EXCLUDES matches."""
    excludes = list(excludes)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for arcname, path in _members(root, excludes):
            st = os.lstat(path)
            info = tarfile.TarInfo(arcname)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                info.mode = 0o777
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                with open(path, "rb") as handle:
                    data = handle.read()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        excludes = self.get_option("excludes") or []
        results = []
        for term in terms:
            path = os.path.expanduser(to_native(term))
            if not os.path.isabs(path):
                path = self._loader.path_dwim(path)
            if not os.path.isdir(path):
                raise AnsibleLookupError(
                    "kmod_source_archive: %s is not a directory on the controller; point it (for the "
                    "frelink_kmod role: frelink_kmod_source_dir) at the directory with the module "
                    "sources and dkms.conf" % to_text(path))
            try:
                archive = build_archive(path, excludes)
            except (OSError, tarfile.TarError) as error:
                raise AnsibleLookupError("kmod_source_archive: cannot pack %s: %s"
                                         % (to_text(path), to_text(error)))
            results.append(to_text(base64.b64encode(archive)))
        return results
