# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Names that are not UTF-8 (names.py): shown as text with \\xNN, with the exact bytes in
<key>_b64, and read back to the same bytes."""

import base64
import os

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import names


def test_names_round_trip():
    raw = os.fsdecode(b"/srv/\xff\xfe.log")
    record = {}
    names.put(record, "path", raw)
    assert record["path"] == "/srv/\\xff\\xfe.log"
    assert base64.b64decode(record["path_b64"]) == b"/srv/\xff\xfe.log"
    assert names.raw(record, "path") == raw
    assert names.matches("/srv/\\xff\\xfe.log", raw) and names.matches(raw, raw)
    plain = {}
    names.put(plain, "path", "/srv/caf\u00e9\n.log")
    assert plain == {"path": "/srv/caf\u00e9\n.log"}
    assert not names.matches("/srv/\\xff\\xfe.log", "/srv/other")
    safe = names.json_safe({"msg": "cannot open " + raw, "dest": raw, "nested": [{"host_path": raw}]})
    assert safe["msg"] == "cannot open /srv/\\xff\\xfe.log" and "msg_b64" not in safe
    assert names.raw(safe, "dest") == raw and names.raw(safe["nested"][0], "host_path") == raw
