#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: warn
short_description: Emit an Ansible warning
version_added: "0.1.0"
description:
  - Shows O(msg) as an Ansible warning, prefixed with C([WARNING]), and returns it in the result's C(warnings),
    so it reaches every callback and log that collects warnings, and the play goes on.
  - For a condition that needs the operator's attention but is not a failure, for example the role
    C(frelink.frelink.frelink_kmod) leaving an outdated kernel module loaded because a process still
    uses it.
  - Runs on the controller only; nothing is sent to the host.
author:
  - frelink contributors (@frelink)
options:
  msg:
    description:
      - The warning. Runs of whitespace, line breaks included, are collapsed to one space.
    type: str
    required: true
attributes:
  check_mode:
    support: full
    description: Nothing changes; in check mode the warning is shown all the same.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  platform:
    support: full
    platforms: all
    description: Runs on the controller; the host is not contacted.
notes:
  - Unlike M(ansible.builtin.debug), the message counts as a warning; unlike M(ansible.builtin.fail),
    the host stays in the play.
seealso:
  - module: ansible.builtin.debug
  - module: ansible.builtin.fail
"""

EXAMPLES = r"""
- name: Warn that the new module is not loaded yet
  frelink.frelink.warn:
    msg: The old frelink module stays loaded while /dev/frelink is open; stop the holder and rerun.
  when: frelink_in_use | bool
"""

RETURN = r"""
msg:
  description: The warning, whitespace collapsed.
  returned: always
  type: str
  sample: The old frelink module stays loaded while /dev/frelink is open; stop the holder and rerun.
"""
