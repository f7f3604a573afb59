# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one exception every restore step raises: a refusal or failure with a message that says what to do."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

KMOD_ROLE = "frelink.frelink.frelink_kmod"


class RestoreError(Exception):
    """A refusal or failure; `msg` says what failed and how to go on."""

    def __init__(self, msg, **details):
        super(RestoreError, self).__init__(msg)
        self.msg = msg
        self.details = details
