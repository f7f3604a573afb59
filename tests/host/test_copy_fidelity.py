"""Copies are faithful: every extended attribute (user.*, security.capability,
POSIX ACLs), owner, mode and times survive a copy through Ansible, compared with
the system's own getfattr/getfacl/getcap; a copy of a file that grew since reruns
changed=false with status copy_outdated; copy_retries 0 means one attempt.
"""
import os
import subprocess
import sys

import pytest

from test_restore import _restore, ansible_module
from test_restore import holders, work  # noqa: F401  # pylint: disable=unused-import  # fixtures

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
OPENER = "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nprint(fd, flush=True)\nsys.stdin.read()\n"


def _out(argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _attributes(path):
    """What the system's tools say about path's metadata, with the file name taken out."""
    name = str(path)
    xattrs = _out(["getfattr", "--absolute-names", "-d", "-m", "-", "-e", "hex", name]).replace(name, "F")
    acl = _out(["getfacl", "--absolute-names", "-p", name]).replace(name, "F")
    caps = _out(["getcap", name]).replace(name, "F")
    st = os.stat(name)
    return {"xattrs": xattrs, "acl": acl, "caps": caps, "owner": (st.st_uid, st.st_gid),
            "mode": st.st_mode, "mtime_ns": st.st_mtime_ns}


@pytest.fixture
def decorated_orphan(work):
    """A deleted file held open by another process, with user.* xattrs, an ACL, file
    capabilities, another owner and an unusual mode; yields (src, attributes before)."""
    path = work / "tool.bin"
    path.write_bytes(os.urandom(1 << 20))
    os.truncate(path, 5 << 20)  # a 4 MiB hole at the end
    os.chown(path, 1234, 2345)
    os.chmod(path, 0o750)
    os.setxattr(path, "user.origin", b"frelink-test")
    os.setxattr(path, "user.empty", b"")
    subprocess.run(["setfacl", "-m", "u:4321:r--,g:5432:rw-", str(path)], check=True)
    subprocess.run(["setcap", "cap_net_bind_service,cap_net_raw=ep", str(path)], check=True)
    os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    before = _attributes(path)
    assert "security.capability" in before["xattrs"] and "user.origin" in before["xattrs"]
    assert "user:4321:r--" in before["acl"] and "cap_net_bind_service" in before["caps"]
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", OPENER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        fd = int(proc.stdout.readline())
        os.unlink(path)
        yield "/proc/%d/fd/%d" % (proc.pid, fd), path, before
    finally:
        proc.kill()
        proc.wait()


def test_copy_keeps_xattrs_acl_capabilities_owner_mode_and_times(decorated_orphan):
    src, path, before = decorated_orphan
    result = ansible_module("frelink_restore", {"src": src, "method": "copy"})
    assert result["failed"] is False and result["status"] == "restored", result
    assert "Traceback" not in result["_stdout"]
    assert _attributes(path) == before
    ver = result["verification"]
    assert set(ver["xattrs"]) >= {"user.origin", "user.empty", "security.capability", "system.posix_acl_access"}
    assert "xattrs_not_kept" not in ver
    # the copy keeps the hole: its 4 MiB take no blocks
    assert os.stat(path).st_blocks * 512 < (3 << 20)


def test_a_copy_of_a_file_that_grew_reruns_unchanged_and_says_how_to_refresh(work, holders):
    held = holders(work / "grows.log", size=8192)
    first, failures = _restore({"src": held.src, "method": "copy"})
    assert failures == [] and first["status"] == "restored"
    held.command("write 20000 MORE-DATA")  # the holder keeps writing past the copy's end
    rerun = ansible_module("frelink_restore", {"src": held.src, "dest": str(work / "grows.log"), "method": "copy"})
    assert rerun["failed"] is False and rerun["changed"] is False, rerun
    assert rerun["status"] == "copy_outdated"
    assert "8192" in rerun["msg"] and "20009" in rerun["msg"] and "move" in rerun["msg"]
    assert (work / "grows.log").stat().st_size == 8192  # nothing touched


def test_copy_retries_zero_is_one_attempt(work, holders):
    held = holders(work / "busy.log", size=1 << 20, mode="append")
    result, failures = _restore({"src": held.src, "method": "copy", "copy_retries": 0,
                                 "dest": str(work / "busy.copy")})
    if failures:  # the appender moved during the only attempt
        assert result["attempts"] == 1 and "each of 1 attempts" in failures[0]
    else:
        assert result["verification"]["attempts"] == 1
    assert not [n for n in os.listdir(work) if n.endswith(".tmp")]
