# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
name: audit_csv
short_description: The fleet audit as CSV, one row per held deleted file
version_added: "0.2.0"
description:
  - Writes the data model of P(frelink.frelink.audit_report#filter) as CSV (RFC 4180 quoting by Python's
    C(csv) module, so any file name, line feeds and quotes included, stays in its cell).
  - One row per held deleted file; those at risk first, then the replaced ones, then the deliberate ones.
  - "Columns: C(host), C(class), C(path), C(type), C(size_bytes), C(allocated_bytes), C(fstype), C(mount_point),
    C(device), C(inode), C(owner), C(holder_kinds), C(holders), C(restart) (the restart targets, C(kind:name)),
    C(package), C(restore), C(deliberate), C(reclaimable_bytes) (the allocated bytes M(frelink.frelink.frelink_reclaim)
    gives back by default; 0 when its rule refuses the file)."
options:
  _input:
    description: The data model from P(frelink.frelink.audit_report#filter).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Write the CSV
  ansible.builtin.copy:
    content: "{{ frelink_audit | frelink.frelink.audit_csv }}"
    dest: frelink-audit/audit.csv
    mode: "0644"
  delegate_to: localhost
"""

RETURN = r"""
_value:
  description: The CSV text, a header line first, lines ending in CRLF as RFC 4180 has them.
  type: string
"""

import csv
import io

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

COLUMNS = ("host", "class", "path", "type", "size_bytes", "allocated_bytes", "fstype", "mount_point", "device",
           "inode", "owner", "holder_kinds", "holders", "restart", "package", "restore", "deliberate", "reclaimable_bytes")


def _cells(row):
    size = row.get("size")
    return [row.get("host", ""), row.get("class", ""), row.get("path", ""), row.get("type", ""),
            "" if size is None else size, row.get("allocated", 0), row.get("fstype", ""),
            row.get("mount_point", ""), row.get("device", ""), row.get("ino", ""), row.get("owner", ""),
            " ".join(row.get("kinds") or []), "; ".join(row.get("holders") or []),
            " ".join("%s:%s" % (t.get("kind"), t.get("name")) for t in row.get("restart") or []),
            row.get("package", ""), row.get("restore", ""), row.get("deliberate", ""), row.get("reclaimable_allocated", 0)]


def audit_csv(report):
    """CSV text of the audit_report data model."""
    if not isinstance(report, Mapping) or "orphans" not in report:
        raise AnsibleFilterError("audit_csv: the input must be the data model from frelink.frelink.audit_report")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for section in ("orphans", "replaced", "deliberate"):
        for row in report.get(section) or []:
            writer.writerow(_cells(row))
    return out.getvalue()


class FilterModule(object):
    """frelink's audit CSV filter."""

    def filters(self):
        return {"audit_csv": audit_csv}
