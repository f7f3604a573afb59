# -*- coding: utf-8 -*-
"""frelink_facts and swap files, in a real Debian guest (swapon on the host is off limits).

Finding of this test: on current kernels a swap file cannot become an orphan.
The kernel refuses to unlink an active swap file (EPERM), and refuses to
swapon a file that is already deleted (ENOENT, also through /proc/PID/fd/N).
So frelink_facts' swap detection (/proc/swaps entries ending in ' (deleted)',
parser unit-tested on captured text) can only fire on a kernel that allows one
of the two (bookworm's 6.1, tested here, allows neither); this test checks that
the refusals hold, that an active live swap file is not reported, and that the
scan works with swap active.  Cleans up after itself (shared guest).
"""

import json
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

REPO = Path(__file__).resolve().parents[2]
SCAN = ("import json, sys; sys.path.insert(0, '/root/frelink-facts'); "
        "from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan.facts import scan; "
        "print(json.dumps(scan(limit=0)))")
DELETED_SWAPON = r"""
import os, subprocess
fd = os.open("/frelink-swap-deleted", os.O_RDONLY)
os.unlink("/frelink-swap-deleted")
proc = subprocess.run(["swapon", "/proc/%d/fd/%d" % (os.getpid(), fd)], pass_fds=(fd,),
                      stderr=subprocess.PIPE, text=True)
print(proc.returncode, proc.stderr.strip())
"""


def test_swap_files_cannot_become_orphans(tmp_path, shared_guest):
    tarball = tmp_path / "module_utils.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(REPO / "plugins" / "module_utils", arcname="ansible_collections/frelink/frelink/plugins/module_utils")
    guest = shared_guest("bookworm")
    guest.put(str(tarball), "/root/frelink-facts.tar")
    guest.run("rm -rf /root/frelink-facts && mkdir /root/frelink-facts && "
              "tar -C /root/frelink-facts -xf /root/frelink-facts.tar")
    try:
        guest.run("for f in '/frelink swap live' /frelink-swap-deleted; do "
                  "fallocate -l 16M \"$f\" && chmod 600 \"$f\" && mkswap \"$f\" >/dev/null; done && "
                  "swapon '/frelink swap live'")
        swaps = guest.run("cat /proc/swaps").stdout
        assert "/frelink\\040swap\\040live " in swaps, swaps

        refused = guest.run("rm '/frelink swap live'", check=False)
        assert refused.returncode != 0 and "Operation not permitted" in refused.stderr, refused

        result = guest.run("python3 -c '%s'" % DELETED_SWAPON.replace("'", "'\\''")).stdout.split(None, 1)
        assert int(result[0]) != 0 and "No such file or directory" in result[1], result

        facts = json.loads(guest.run("python3 -c \"%s\"" % SCAN).stdout)
        assert facts["summary"]["by_kind"]["swap"] == 0
        assert not [o for o in facts["orphans"] if "frelink" in o["path"] and "swap" in o["path"]], facts["orphans"]
        assert facts["scan"]["complete"] is True, facts["scan"]["warnings"]
    finally:
        guest.run("swapoff '/frelink swap live'; rm -f '/frelink swap live' /frelink-swap-deleted; "
                  "rm -rf /root/frelink-facts /root/frelink-facts.tar", check=False)
