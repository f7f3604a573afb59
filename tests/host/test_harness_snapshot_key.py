"""A saved booted state belongs to one base disk.

The state is a copy-on-write overlay on the suite's image/disk.qcow2 plus the guest's
memory.  An image rebuilt with the same version key (a newer kernel in the archive, a
rebuild by hand) is another disk: the old state restored on it booted with a read-only
root ("mkdir: cannot create directory '/root/frelink-kmod': Read-only file system").
"""

import os
import shutil
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness import guest as guest_mod  # noqa: E402  pylint: disable=wrong-import-position


def _guest(tmp_path):
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb one image")
    env = types.SimpleNamespace(key="same-version-key", disk=disk, vmlinuz=tmp_path / "vmlinuz",
                                initrd=tmp_path / "initrd.img")
    return types.SimpleNamespace(env=env, vmlinuz=env.vmlinuz, initrd=env.initrd, cmdline="console=ttyS0",
                                 mem_mb=2048)


def test_a_rebuilt_image_with_the_same_key_is_another_snapshot(tmp_path):
    guest = _guest(tmp_path)
    before = guest_mod._snapshot_key(guest)
    assert guest_mod._snapshot_key(guest) == before  # nothing changed: the state is reused
    rebuilt = tmp_path / "disk.new"
    shutil.copyfile(guest.env.disk, rebuilt)  # the same bytes, as a rebuild with no change may give
    os.replace(rebuilt, guest.env.disk)       # image.new/ replaces image/ as the harness does
    assert guest_mod._snapshot_key(guest) != before
