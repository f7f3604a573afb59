#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: audit_files
short_description: Write the fleet audit's report files on the controller
version_added: "0.2.0"
description:
  - Builds the audit's data model (the P(frelink.frelink.audit_report#filter) filter) from every audited host's
    registered M(frelink.frelink.frelink_facts) result and writes, in O(dest) on the controller, C(index.html)
    and C(audit.md) (from the playbook's C(templates/audit.html.j2) and C(audit.md.j2)), C(audit.csv)
    (P(frelink.frelink.audit_csv#filter)) and C(audit.json) (the data model, compact).
  - Does in one step on the controller what C(set_fact) of the data model, C(template) and C(copy) would do
    through Ansible's variables, so a fleet's report never passes through them; the result holds only
    C(totals). A thousand hosts with a hundred deleted files each take seconds (C(bench/audit/run.py)).
  - Reads each host's result as registered, without templating it (a module's result holds no templates).
  - Runs on the controller only; no host is contacted.
author:
  - frelink contributors (@frelink)
options:
  dest:
    description:
      - The report directory on the controller; created when missing. A relative path is taken from the
        directory ansible-playbook runs in.
    type: path
    required: true
  hosts:
    description: The audited hosts. Defaults to C(ansible_play_hosts_all).
    type: list
    elements: str
  result_var:
    description: The variable each host registered the M(frelink.frelink.frelink_facts) result as.
    type: str
    default: frelink_audit_scan
  top_holders:
    description: How many holders the report's C(top_holders) lists, the ones pinning the most first.
    type: int
    default: 10
  generated:
    description: The time of the report, as text.
    type: str
    default: ""
attributes:
  check_mode:
    support: none
    description: The report is always written; it changes nothing on the hosts. Use C(check_mode=false) on the task.
  diff_mode:
    support: none
    description: Report files are not diffed (they are large and rewritten whole).
  platform:
    support: full
    platforms: all
    description: Runs on the controller; no host is contacted.
notes:
  - The templates are looked up as M(ansible.builtin.template) looks them up (C(templates/) next to the
    playbook or in the role), else the collection's own (C(playbooks/templates/)), and rendered with Jinja2's
    standard filters only, with the data model as C(frelink_audit).
seealso:
  - plugin: frelink.frelink.audit_report
    plugin_type: filter
  - plugin: frelink.frelink.audit_csv
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Write the report
  frelink.frelink.audit_files:
    dest: "{{ playbook_dir }}/frelink-audit"
    generated: "{{ now(utc=true, fmt='%Y-%m-%d %H:%M:%S UTC') }}"
  delegate_to: localhost
  run_once: true
  check_mode: false
  register: frelink_audit_written
"""

RETURN = r"""
dest:
  description: The report directory.
  returned: always
  type: str
  sample: /home/ops/frelink-audit
files:
  description: The files written, by name, with their size in bytes.
  returned: always
  type: dict
  sample: {index.html: 182345, audit.md: 40212, audit.csv: 51200, audit.json: 301122}
totals:
  description: The data model's C(totals) (see P(frelink.frelink.audit_report#filter)).
  returned: always
  type: dict
  sample: {hosts: 3, orphans: 2, allocated: 1048576, allocated_human: 1.00 MB, hosts_failed: 0}
"""
