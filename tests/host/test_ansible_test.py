# -*- coding: utf-8 -*-
"""The collection's own tests the way a collection's CI runs them: `ansible-test units` over
tests/unit/plugins and `ansible-test integration --local` over every target in
tests/integration/targets (real deleted-but-open files on this host; no kernel module)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from checkout import copy_checkout
from orphans import require_root

BIN = Path(sys.executable).parent  # the test venv: ansible-core with ansible-test, pytest, xdist
SANITY_BIN = BIN.parent.parent / BIN.parent.name.replace("venv-", "sanity-venv-") / "bin"
REPO = Path(__file__).resolve().parents[2]
PYTHON = "%d.%d" % sys.version_info[:2]


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """A copy of the checkout at ansible_collections/frelink/frelink, as ansible-test wants it."""
    top = tmp_path_factory.mktemp("ansible-test")
    copy_checkout(top / "ansible_collections" / "frelink" / "frelink")
    return top


def _ansible_test(collections, tool_bin, *args):
    root = collections / "ansible_collections" / "frelink" / "frelink"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1",
               PATH="%s:%s" % (tool_bin, os.environ["PATH"]))
    return subprocess.run([str(tool_bin / "ansible-test")] + list(args) + ["--color", "no"], cwd=root,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False)


def test_ansible_test_units(collections):
    proc = _ansible_test(collections, BIN, "units", "--local", "--python", PYTHON)
    assert proc.returncode == 0, proc.stdout[-8000:]
    # both groups ran: the module_utils (managed node) and the controller plugins (filters, lookup)
    assert "Unit test module_utils with Python" in proc.stdout and "Unit test controller with Python" in proc.stdout
    ran = sum(int(n) for n in re.findall(r"=+ (\d+) passed", proc.stdout))
    collected = subprocess.run([str(BIN / "python"), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "tests/unit"], capture_output=True, text=True, cwd=REPO, check=False).stdout
    assert ran == int(re.search(r"(\d+) tests? collected", collected).group(1)), proc.stdout[-8000:]  # every one


def test_ansible_test_integration_targets(collections):
    require_root()
    targets = sorted(p.name for p in (REPO / "tests" / "integration" / "targets").iterdir())
    assert targets == ["frelink_facts", "frelink_filters", "frelink_reclaim", "frelink_restore"]
    tool_bin = SANITY_BIN if (SANITY_BIN / "ansible-test").exists() else BIN
    proc = _ansible_test(collections, tool_bin, "integration", "--local", "--python", PYTHON, "--allow-root",
                         "--allow-destructive")
    assert proc.returncode == 0, proc.stdout[-8000:]
    for target in targets:
        assert "Running %s integration test role" % target in proc.stdout, proc.stdout[-8000:]
    assert proc.stdout.count("failed=0") == len(targets), proc.stdout[-8000:]
