# -*- coding: utf-8 -*-
"""Any name the kernel allows survives the facts and the restore, through Ansible: a held
deleted file whose name is not UTF-8 (bytes 0xff 0xfe), one with a line feed, one with a
backslash that looks like an escape, and an ordinary one.  Root needed."""

import base64
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orphans import collection_path, deleted_open_file, require_root

BIN = Path(sys.executable).parent
COLLECTIONS = collection_path()

NOT_UTF8 = os.fsdecode(b"\xff\xfe.log")  # what Python's os functions make of those bytes
LINE_FEED = "two\nlines.log"
BACKSLASH = "\\xff\\xfe.log"  # a valid UTF-8 name that reads like the escaped form of NOT_UTF8
ORDINARY = "plain.log"


@pytest.fixture(autouse=True)
def _root():
    require_root()


def ansible(module, args, *options):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-m", module, "-a", json.dumps(args)] + list(options),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, check=False)
    head, _sep, body = proc.stdout.partition("=>")
    assert body.strip().startswith("{"), proc.stdout[-3000:] + proc.stderr[-3000:]
    return head, json.loads(body)


def held_files(directory, stack):
    held = {}
    for name in (NOT_UTF8, LINE_FEED, BACKSLASH, ORDINARY):
        held[name] = stack.enter_context(deleted_open_file(directory, size=5000 + len(held), name=name))
    return held


def test_facts_list_every_name(tmp_path):
    with contextlib.ExitStack() as stack:
        held = held_files(tmp_path, stack)
        head, result = ansible("frelink.frelink.frelink_facts", {"include": [str(tmp_path) + "/*"]})
        assert "SUCCESS" in head, result
        facts = result["ansible_facts"]["frelink"]
        assert facts["summary"]["count"] == 4
        by_ino = {o["ino"]: o for o in facts["orphans"]}
        assert sorted(by_ino) == sorted(h.ino for h in held.values())

        odd = by_ino[held[NOT_UTF8].ino]
        assert odd["path"] == str(tmp_path) + "/\\xff\\xfe.log"
        assert base64.b64decode(odd["path_b64"]) == os.fsencode(held[NOT_UTF8].path)
        # the name that merely looks escaped is valid UTF-8: shown as it is, no path_b64
        lookalike = by_ino[held[BACKSLASH].ino]
        assert lookalike["path"] == held[BACKSLASH].path and "path_b64" not in lookalike
        assert lookalike["path"] == odd["path"]  # the same text: path_b64 tells them apart
        assert by_ino[held[LINE_FEED].ino]["path"] == held[LINE_FEED].path
        assert by_ino[held[ORDINARY].ino]["path"] == held[ORDINARY].path
        assert all("path_b64" not in by_ino[held[n].ino] for n in (LINE_FEED, ORDINARY))


def test_restore_gives_back_the_original_bytes(tmp_path):
    """By device+inode (the text form is shared with the look-alike), with a copy (no kernel module on
    the host): the original bytes are the name on disk, the result is readable and says changed; the
    rerun is unchanged."""
    with contextlib.ExitStack() as stack:
        held = held_files(tmp_path, stack)
        odd = held[NOT_UTF8]
        args = {"device": "%d:%d" % (os.major(odd.dev), os.minor(odd.dev)), "inode": odd.ino, "method": "copy"}
        head, check = ansible("frelink.frelink.frelink_restore", args, "--check")
        assert "CHANGED" in head and check["status"] == "would_restore", check
        assert not os.path.lexists(odd.path)
        head, result = ansible("frelink.frelink.frelink_restore", args)
        assert "CHANGED" in head and result["status"] == "restored", result
        assert result.get("failed") is not True
        assert result["dest"] == str(tmp_path) + "/\\xff\\xfe.log"
        assert base64.b64decode(result["dest_b64"]) == os.fsencode(odd.path)
        assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"\xff\xfe.log"]
        with open(odd.path, "rb") as restored, open(odd.proc_path, "rb") as original:
            assert restored.read() == original.read()
        head, again = ansible("frelink.frelink.frelink_restore", args)
        assert "SUCCESS" in head and again["changed"] is False, again


def test_restore_by_the_shown_path(tmp_path):
    """path= takes the text form the facts show; here two deleted files share it (the look-alike
    name), so the restore refuses to guess and lists both, readable."""
    with contextlib.ExitStack() as stack:
        held = held_files(tmp_path, stack)
        head, result = ansible("frelink.frelink.frelink_restore",
                               {"path": str(tmp_path) + "/\\xff\\xfe.log", "method": "copy"})
        assert "FAILED" in head and "2 deleted files had the original path" in result["msg"], result
        assert sorted(c["ino"] for c in result["candidates"]) == sorted((held[NOT_UTF8].ino, held[BACKSLASH].ino))
        assert os.listdir(os.fsencode(tmp_path)) == []

    alone = tmp_path / "alone"
    alone.mkdir()
    with deleted_open_file(alone, size=777, name=NOT_UTF8) as odd:
        head, result = ansible("frelink.frelink.frelink_restore", {"path": str(alone) + "/\\xff\\xfe.log",
                                                                   "method": "copy"})
        assert "CHANGED" in head and result["status"] == "restored", result
        assert os.listdir(os.fsencode(alone)) == [b"\xff\xfe.log"]
        assert os.path.getsize(odd.path) == 777
        # the rerun, by the same text, while the holder still holds it: the copy is recognised
        head, again = ansible("frelink.frelink.frelink_restore", {"path": str(alone) + "/\\xff\\xfe.log",
                                                                  "method": "copy"})
        assert "SUCCESS" in head and again["changed"] is False and again["status"] == "already_copied", again
        assert base64.b64decode(again["dest_b64"]) == os.fsencode(odd.path)
    # and once its holder has exited: nothing is held, and the text still names the restored file
    head, gone = ansible("frelink.frelink.frelink_restore", {"path": str(alone) + "/\\xff\\xfe.log", "method": "copy"})
    assert "SUCCESS" in head and gone["changed"] is False and gone["status"] == "nothing_to_restore", gone
    assert base64.b64decode(gone["dest_b64"]) == os.fsencode(str(alone)) + b"/\xff\xfe.log"
