# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""File names are bytes; Ansible's results are UTF-8 text.

Inside the modules a name is a str that os functions map back to its bytes exactly
(Python's file system encoding with surrogateescape: byte 0xff is U+DCFF).  Such a
str cannot leave the node: Ansible refuses a result that is not valid UTF-8.  So a
name is shown as text in which every byte that is not part of valid UTF-8 is written
\\xNN, and, only for such names, the exact bytes ride beside it in base64
(`<key>_b64`).  A name that is valid UTF-8, even one that contains a backslash,
is shown as it is: the text form of two names can be the same, the bytes never.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os
import re

B64_SUFFIX = "_b64"
# The keys whose values are names: json_safe() doubles them with '<key>_b64' when needed.
NAME_KEYS = frozenset(("path", "dest", "host_path", "original_path", "open_path", "mount_point", "path_in_container"))


def is_text(name):
    """True when NAME (a str from os functions) is valid UTF-8 as it is."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name):
    """The text form of NAME: itself when valid UTF-8, else each stray byte as \\xNN."""
    if name is None or is_text(name):
        return name
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def b64(name):
    """NAME's exact bytes in base64."""
    return base64.b64encode(os.fsencode(name)).decode("ascii")


def put(record, key, name):
    """record[key] = shown(name), and record[key + '_b64'] when the text form is not the name."""
    if name is None or is_text(name):
        record[key] = name
        return
    record[key] = shown(name)
    record[key + B64_SUFFIX] = b64(name)


def raw(record, key):
    """The name put() stored under KEY, as os functions take it (exact bytes)."""
    encoded = record.get(key + B64_SUFFIX)
    if encoded is not None:
        return os.fsdecode(base64.b64decode(encoded))
    return record.get(key)


_ESCAPED_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def spellings(text):
    """The names a user's TEXT can mean: itself, then, when it holds \\xNN escapes that shown()
    writes, the name with those bytes (a path given back as the facts show it)."""
    if "\\x" not in text:
        return (text,)
    name = _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), text)
    return (text, name) if name != text and shown(name) == text else (text,)


def matches(selector, name):
    """Whether a user's SELECTOR names NAME: its exact form, or the text form the facts show."""
    return selector == name or (not is_text(name) and selector == shown(name))


def json_safe(value):
    """VALUE with every str that is not valid UTF-8 replaced by its text form, and such names
    under NAME_KEYS doubled by '<key>_b64' (for small results: the restore's, a holder's detail)."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(item, str) and key in NAME_KEYS:
                put(out, key, item)
            else:
                out[key] = json_safe(item)
        return out
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
