# -*- coding: utf-8 -*-
"""frelink_facts through Ansible itself: ad hoc (FQCN and short name), ansible-playbook in
normal and check mode (the ansible-test targets: tests/host/test_ansible_test.py).  Real orphans, root needed."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orphans import collection_path, deleted_open_file, mapped_only_file, require_root

BIN = Path(sys.executable).parent  # the venv with ansible-core
COLLECTIONS = collection_path()
REPO = Path(__file__).resolve().parents[2]
MODULES_DIR = COLLECTIONS / "ansible_collections" / "frelink" / "frelink" / "plugins" / "modules"


@pytest.fixture(autouse=True)
def _root():
    require_root()


def ansible_env(**extra):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0")
    env.pop("ANSIBLE_LIBRARY", None)
    env.update(extra)
    return env


def adhoc(module, args, *options, env=None, cwd=None):
    """Run `ansible localhost -m module -a args` and return the module's result dict."""
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-m", module, "-a", json.dumps(args)] + list(options),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ansible_env(),
                          cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    head, _sep, body = proc.stdout.partition("=>")
    assert "SUCCESS" in head, proc.stdout[-3000:]
    return json.loads(body)


def assert_found(result, held):
    assert result["changed"] is False
    facts = result["ansible_facts"]["frelink"]
    assert facts["summary"]["count"] == 1
    (orphan,) = facts["orphans"]
    assert (orphan["dev"], orphan["ino"], orphan["path"], orphan["size"]) == (held.dev, held.ino, held.path, held.size)
    assert [(h["kind"], h["pid"], h["fd"]) for h in orphan["holders"]] == [("fd", held.pid, held.fd)]


@pytest.mark.parametrize("check", [False, True], ids=["normal", "check"])
def test_adhoc_fqcn(tmp_path, check):
    with deleted_open_file(tmp_path, size=2222) as held:
        result = adhoc("frelink.frelink.frelink_facts", {"include": [str(tmp_path) + "/*"]},
                       *(["--check"] if check else []))
        assert_found(result, held)


def test_adhoc_short_name_with_ansible_library(tmp_path):
    """README: ANSIBLE_LIBRARY=<collection>/plugins/modules makes `-m frelink_facts` work."""
    with deleted_open_file(tmp_path, size=3333) as held:
        result = adhoc("frelink_facts", {"include": [str(tmp_path) + "/*"]},
                       env=ansible_env(ANSIBLE_LIBRARY=str(MODULES_DIR)))
        assert_found(result, held)


def test_adhoc_short_name_with_ansible_cfg(tmp_path):
    """README: `library = <collection>/plugins/modules` in ansible.cfg does the same."""
    project = tmp_path / "project"
    project.mkdir(mode=0o755)
    (project / "ansible.cfg").write_text("[defaults]\nlibrary = %s\ncollections_path = %s\n"
                                         % (MODULES_DIR, COLLECTIONS))
    with deleted_open_file(tmp_path, size=4444) as held:
        env = ansible_env()
        env.pop("ANSIBLE_COLLECTIONS_PATH")
        result = adhoc("frelink_facts", {"include": [str(tmp_path) + "/*"]}, env=env, cwd=project)
        assert_found(result, held)


def test_short_name_unknown_without_setup(tmp_path):
    """The negative control: without the library setting the short name is not found."""
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-m", "frelink_facts"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=ansible_env(), cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "frelink_facts" in proc.stdout


PLAYBOOK = textwrap.dedent("""\
    - name: Scan a host with frelink_facts
      hosts: localhost
      gather_facts: false
      collections:
        - frelink.frelink
      tasks:
        - name: Scan with the short name (collections keyword)
          frelink_facts:
            include: ["{{ workdir }}/*"]
          register: scan

        - name: Check what was found
          vars:
            facts: "{{ ansible_facts.frelink }}"
            by_ino: "{{ facts.orphans | items2dict(key_name='ino', value_name='path') }}"
          ansible.builtin.assert:
            that:
              - scan is not changed
              - facts.summary.count == 2
              - facts.summary.mapped_only == 1
              - facts.orphans | map(attribute='ino') | sort == expected_inos | sort
              - facts.orphans[0].size >= facts.orphans[1].size
              - (facts.orphans | selectattr('holders', 'ne', []) | list | length) == 2

        - name: Scan with the FQCN and limit
          frelink.frelink.frelink_facts:
            include: ["{{ workdir }}/*"]
            limit: 1
          register: limited

        - name: The summary counts everything, the list is capped
          ansible.builtin.assert:
            that:
              - limited.ansible_facts.frelink.summary.count == 2
              - limited.ansible_facts.frelink.summary.truncated
              - limited.ansible_facts.frelink.orphans | length == 1
    """)


@pytest.mark.parametrize("check", [False, True], ids=["normal", "check"])
def test_playbook(tmp_path, check):
    (tmp_path / "scan.yml").write_text(PLAYBOOK)
    data = tmp_path / "data"
    data.mkdir()
    with deleted_open_file(data, size=20000) as fd_held, mapped_only_file(data, size=8192) as mapped:
        extra = json.dumps({"workdir": str(data), "expected_inos": [fd_held.ino, mapped.ino]})
        proc = subprocess.run([str(BIN / "ansible-playbook"), str(tmp_path / "scan.yml"), "-e", extra]
                              + (["--check"] if check else []),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ansible_env(),
                              check=False)
        assert proc.returncode == 0, proc.stdout[-5000:]
        assert "ok=4" in proc.stdout and "failed=0" in proc.stdout and "changed=0" in proc.stdout, proc.stdout


def test_min_size_with_units_as_find_takes_them(tmp_path):
    with deleted_open_file(tmp_path, size=3000) as held:
        args = {"include": [str(tmp_path) + "/*"]}
        assert_found(adhoc("frelink.frelink.frelink_facts", dict(args, min_size="2k")), held)
        assert adhoc("frelink.frelink.frelink_facts", dict(args, min_size="3k"))["ansible_facts"]["frelink"]["orphans"] == []
        assert_found(adhoc("frelink.frelink.frelink_facts", dict(args, min_size=3000)), held)
        proc = subprocess.run([str(BIN / "ansible"), "localhost", "-m", "frelink.frelink.frelink_facts", "-a",
                               json.dumps(dict(args, min_size="lots"))], capture_output=True, text=True,
                              env=ansible_env(), check=False)
        assert proc.returncode != 0 and "min_size must be a size of 0 or more" in proc.stdout, proc.stdout


def test_partial_scan_is_a_warning(tmp_path):
    """Become nobody (su, the way a play becomes an unprivileged user): the facts say
    complete: false, and Ansible prints a [WARNING] saying why."""
    env = ansible_env(ANSIBLE_PIPELINING="1")
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-c", "local", "-b", "--become-method", "su",
                           "--become-user", "nobody", "-e", "ansible_become_flags='-s /bin/sh'",
                           "-e", "ansible_python_interpreter=/usr/bin/python3", "-m", "frelink.frelink.frelink_facts"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = json.loads(proc.stdout.partition("=>")[2])["ansible_facts"]["frelink"]
    assert (facts["scan"]["euid"], facts["scan"]["complete"]) == (65534, False)
    assert "[WARNING]: the scan is partial" in proc.stderr and "become: true" in proc.stderr, proc.stderr
