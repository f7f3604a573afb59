# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin of frelink.frelink.audit_files (documented in plugins/modules/audit_files.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile

import jinja2

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.plugins.action import ActionBase

from ansible_collections.frelink.frelink.plugins.filter.audit_csv import audit_csv
from ansible_collections.frelink.frelink.plugins.filter.audit_report import audit_report

TEMPLATES = (("audit.html.j2", "index.html"), ("audit.md.j2", "audit.md"))
# the collection's own, used when the play has none of that name (playbooks/audit.yml's are these)
COLLECTION_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "playbooks", "templates")
ARGUMENT_SPEC = dict(
    dest=dict(type="path", required=True),
    hosts=dict(type="list", elements="str"),
    result_var=dict(type="str", default="frelink_audit_scan"),
    top_holders=dict(type="int", default=10),
    generated=dict(type="str", default=""),
)


class _RegisteredResults(object):
    """hostvars as audit_report() reads it, each host's variables as registered: the
    results come from modules and hold no templates, so nothing is templated again."""

    def __init__(self, hostvars):
        self._hostvars = hostvars

    def __getitem__(self, name):
        variables = self._hostvars.raw_get(name)
        if not hasattr(variables, "get"):  # a host the inventory does not know
            raise KeyError(name)
        return variables


def _write(path, text):
    """(bytes, changed): path replaced by text in one rename, so a reader never sees half
    a report; left alone when it already holds text."""
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            if handle.read(len(data) + 1) == data:
                return len(data), False
    except OSError:
        pass
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".frelink-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(data), True


class ActionModule(ActionBase):
    """Build the audit's data model and write its four files; runs on the controller only."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def _template(self, source):
        """templates/SOURCE as the template module finds it (next to the playbook, in the
        role), else the collection's own."""
        try:
            return self._find_needle("templates", source)
        except AnsibleError:
            return os.path.normpath(os.path.join(COLLECTION_TEMPLATES, source))

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        _valid, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        task_vars = task_vars or {}
        hosts = args["hosts"] if args["hosts"] is not None else task_vars.get("ansible_play_hosts_all") or []
        try:
            report = audit_report(list(hosts), _RegisteredResults(task_vars["hostvars"]),
                                  result_var=args["result_var"], top_holders=args["top_holders"],
                                  generated=args["generated"])
            environment = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined,
                                             keep_trailing_newline=False)
            pages = []
            for source, name in TEMPLATES:
                with open(self._template(source), encoding="utf-8") as handle:
                    pages.append((name, environment.from_string(handle.read()).render(frelink_audit=report)))
        except (AnsibleError, jinja2.TemplateError, OSError) as exc:
            raise AnsibleActionFail("frelink.frelink.audit_files could not build the report: %s" % exc)
        dest = os.path.abspath(args["dest"])  # relative: to the directory ansible-playbook runs in
        try:
            os.makedirs(dest, exist_ok=True)
            pages.append(("audit.csv", audit_csv(report)))
            pages.append(("audit.json", json.dumps(report, sort_keys=True, ensure_ascii=False) + "\n"))
            written = {name: _write(os.path.join(dest, name), text) for name, text in pages}
        except OSError as exc:
            raise AnsibleActionFail("frelink.frelink.audit_files could not write the report in %s: %s; give a "
                                    "directory the controller's user can write (frelink_audit_dir)" % (dest, exc))
        result.update(changed=any(changed for _size, changed in written.values()), dest=dest,
                      files={name: size for name, (size, _changed) in written.items()}, totals=report["totals"])
        return result
