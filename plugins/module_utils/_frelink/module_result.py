# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The end of a frelink module that acts on files (frelink_restore, frelink_reclaim): its
run turned into the task's result, a refusal or an unforeseen error into a message,
never a bare traceback, and names that are not UTF-8 into text plus <key>_b64."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.errors import RestoreError


def exit_with_run(module, name, run, untouched, refusal=None):
    """run(params, check_mode) -> (result, failures) as module's exit_json or fail_json.
    name: the module's, for the message of an unforeseen error; untouched: what such an
    error left alone ("Nothing was overwritten."); refusal(text): the message of a
    RestoreError, its shown text by default."""
    try:
        result, failures = run(module.params, check_mode=module.check_mode)
    except RestoreError as exc:
        shown = names.shown(exc.msg)
        module.fail_json(msg=refusal(shown) if refusal else shown, **names.json_safe(exc.details))
    except Exception as exc:  # pylint: disable=broad-except  # a message, never a bare traceback
        module.fail_json(msg="%s stopped on an unforeseen %s: %s. %s This is a bug: please report it with the "
                             "task's arguments (the traceback is shown with -vvv)"
                             % (name, type(exc).__name__, names.shown(str(exc)), untouched),
                         exception=names.shown(traceback.format_exc()))
    if not module._diff:
        result.pop("diff", None)
    # names that are not UTF-8 as text plus <key>_b64: Ansible refuses anything else
    result = names.json_safe(result)
    if failures:
        result.pop("msg", None)
        module.fail_json(msg=names.shown("; ".join(failures)), **result)
    module.exit_json(**result)
