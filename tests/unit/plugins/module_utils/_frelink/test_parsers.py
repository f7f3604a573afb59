# -*- coding: utf-8 -*-
"""Parsers of frelink_facts on captured /proc and ioctl text (no host state involved)."""

import os
import struct

import pytest

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import containers, loop, mounts, overlay, procfs
from ansible_collections.frelink.frelink.plugins.module_utils._frelink.scan import enrich

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
41 27 254:0 /srv/data /mnt/with\040space rw,relatime shared:1 master:2 - ext4 /dev/vda rw
50 27 0:45 / /mnt/btrfs rw,relatime shared:7 - btrfs /dev/sdb rw,space_cache=v2,subvolid=5,subvol=/
51 27 0:46 / /mnt/nfs rw,relatime - nfs4 server:/export rw,vers=4.2
"""

# /proc/swaps of a kernel with a deleted swap file whose name has a space; seq_file_path()
# escapes ' ', '\t', '\n' and '\\', including the space of ' (deleted)'.
SWAPS = (
    "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    "/dev/vdb                                partition\t1048572\t\t0\t\t-2\n"
    "/var/swap\\040file\\040(deleted)          file\t\t524284\t\t1024\t\t-3\n"
    "/swapfile                               file\t\t2097148\t\t12345678\t-4\n"
)

MAPS = (
    b"55d0c0a00000-55d0c0a02000 r--p 00000000 fe:00 1317990                    /usr/bin/sleep\n"
    b"7f0000000000-7f0000003000 r--s 00000000 fe:00 2146326                    /tmp/gone.so (deleted)\n"
    b"7f0000003000-7f0000004000 r-xs 00003000 fe:00 2146326                    /tmp/gone.so (deleted)\n"
    b"7f0000010000-7f0000020000 rw-s 00000000 00:01 6                          /SYSV00000000 (deleted)\n"
    b"7f0000020000-7f0000030000 rw-s 00000000 00:01 1033                       /dev/zero (deleted)\n"
    b"7f0000030000-7f0000031000 rw-s 00000000 00:01 2048                       /memfd:buf (deleted)\n"
    b"7f0000040000-7f0000041000 r--p 00000000 fe:00 99                         /tmp/x (deleted) (deleted)\n"
    b"7f0000050000-7f0000051000 r--p 00000000 fe:00 98                         /tmp/new\\012line (deleted)\n"
    b"7f0000060000-7f0000061000 rw-p 00000000 00:00 0                          [heap]\n"
    b"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n"
)


def test_parse_mountinfo_fields_and_escapes():
    table = mounts.parse_mountinfo(MOUNTINFO)
    assert len(table) == 7
    spaced = table[4]
    assert spaced == {"id": 41, "parent": 27, "dev": os.makedev(254, 0), "root": "/srv/data",
                      "mount_point": "/mnt/with space", "options": "rw,relatime", "fstype": "ext4",
                      "source": "/dev/vda", "super_options": "rw"}
    assert table[5]["fstype"] == "btrfs" and table[5]["dev"] == os.makedev(0, 45)


def test_mount_table_lookup_prefers_longest_prefix_and_top_mount():
    table = mounts.MountTable(mounts.parse_mountinfo(MOUNTINFO))
    vda = os.makedev(254, 0)
    assert table.lookup(vda, "/mnt/with space/f")["mount_point"] == "/mnt/with space"
    assert table.lookup(vda, "/etc/passwd")["mount_point"] == "/"
    assert table.lookup(os.makedev(0, 27), "/dev/shm/x")["fstype"] == "tmpfs"
    # a device mountinfo does not list, under a btrfs mount: the btrfs mount (nested subvolume)
    assert table.lookup(os.makedev(0, 99), "/mnt/btrfs/sub/f")["mount_point"] == "/mnt/btrfs"
    assert table.lookup(os.makedev(0, 99), "/elsewhere/f") is None


def test_network_fstypes():
    assert mounts.is_network_fstype("nfs4") and mounts.is_network_fstype("fuse.sshfs")
    assert not mounts.is_network_fstype("ext4")


def test_parse_swaps_unescapes_and_converts_to_bytes():
    swaps = mounts.parse_swaps(SWAPS)
    assert swaps == [
        {"path": "/dev/vdb", "type": "partition", "size": 1048572 * 1024, "used": 0, "priority": -2},
        {"path": "/var/swap file (deleted)", "type": "file", "size": 524284 * 1024, "used": 1024 * 1024,
         "priority": -3},
        {"path": "/swapfile", "type": "file", "size": 2097148 * 1024, "used": 12345678 * 1024, "priority": -4},
    ]
    assert mounts.parse_swaps("Filename\tType\tSize\tUsed\tPriority\n") == []


def test_parse_deleted_mappings():
    found = procfs.parse_deleted_mappings(MAPS)
    vda = os.makedev(0xFE, 0)
    shm = os.makedev(0, 1)
    assert found == [
        ("7f0000000000-7f0000003000", "r--s", 0, vda, 2146326, "/tmp/gone.so"),
        ("7f0000003000-7f0000004000", "r-xs", 0x3000, vda, 2146326, "/tmp/gone.so"),
        ("7f0000010000-7f0000020000", "rw-s", 0, shm, 6, "/SYSV00000000"),
        ("7f0000020000-7f0000030000", "rw-s", 0, shm, 1033, "/dev/zero"),
        ("7f0000030000-7f0000031000", "rw-s", 0, shm, 2048, "/memfd:buf"),
        ("7f0000040000-7f0000041000", "r--p", 0, vda, 99, "/tmp/x (deleted)"),
        ("7f0000050000-7f0000051000", "r--p", 0, vda, 98, "/tmp/new\nline"),
    ]
    assert procfs.parse_deleted_mappings(MAPS.split(b"7f0000000000", maxsplit=1)[0]) == []
    # no trailing newline on the last line
    assert len(procfs.parse_deleted_mappings(MAPS.rstrip(b"\n").split(b"\n")[1])) == 1


def test_parse_fdinfo_and_access_mode():
    info = procfs.parse_fdinfo("pos:\t5000\nflags:\t02102002\nmnt_id:\t27\nino:\t2146326\n")
    assert info == {"pos": 5000, "flags": 0o2102002, "mnt_id": 27}
    assert procfs.access_mode(info["flags"]) == "rwa"
    assert procfs.access_mode(0o100000) == "r"
    assert procfs.access_mode(0o100001) == "w"


@pytest.mark.parametrize("major,minor", [(7, 0), (254, 0), (8, 17), (0, 45), (259, 1048575), (4095, 255)])
def test_decode_huge_dev(major, minor):
    # new_encode_dev() from include/linux/kdev_t.h
    encoded = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    assert loop.decode_huge_dev(encoded) == os.makedev(major, minor)


def test_parse_loop_info64():
    assert loop.LOOP_INFO64.size == 232  # sizeof(struct loop_info64) on every Linux ABI
    name = b"/tmp/disk.img"
    dev_254_0 = (254 << 8)
    buf = struct.pack("=5Q4I64s64s32s2Q", dev_254_0, 2146326, 0, 1 << 20, 4 << 20, 3, 0, 0,
                      loop.LO_FLAGS_READ_ONLY | loop.LO_FLAGS_AUTOCLEAR, name, b"", b"", 0, 0)
    assert loop.parse_loop_info64(bytearray(buf)) == {
        "backing_dev": os.makedev(254, 0), "backing_ino": 2146326, "backing_rdev": 0,
        "offset": 1 << 20, "sizelimit": 4 << 20, "number": 3, "flags": 5, "read_only": True,
        "autoclear": True, "file_name": "/tmp/disk.img",
    }


def test_file_type_and_open_path_ranking():
    assert enrich.file_type(0o100644) == "file" and enrich.file_type(0o040755) == "directory"
    assert enrich.file_type(0o020600) == "chardev"
    holders = [("mmap", "12", "7f00-7f01"), ("exe", "12", None), ("loop", None, {}), ("fd", "13", 4)]
    assert enrich.open_path_of("/proc", holders) == "/proc/13/fd/4"
    assert enrich.open_path_of("/proc", holders[:2]) == "/proc/12/exe"
    assert enrich.open_path_of("/proc", holders[:1]) == "/proc/12/map_files/7f00-7f01"
    assert enrich.open_path_of("/proc", holders[2:3]) is None


def test_unescape():
    assert mounts.unescape(r"/a\040b\011c\134d") == "/a b\tc\\d"
    assert mounts.unescape("/plain") == "/plain"


def test_overlay_layers_from_super_options():
    # 6.1: one lowerdir list; 6.8+ with the new mount API: lowerdir+ per layer, datadir+ for data-only layers
    old = overlay.layers("rw,lowerdir=/l1:/l2,upperdir=/var/lib/u,workdir=/var/lib/w,xino=off")
    assert old == {"upperdir": "/var/lib/u", "workdir": "/var/lib/w", "lowerdir": ["/l1", "/l2"]}
    new = overlay.layers("rw,lowerdir+=/a\\054b,lowerdir+=/c,datadir+=/d,upperdir=/u\\040x,workdir=/w,uuid=on")
    assert new == {"upperdir": "/u x", "workdir": "/w", "lowerdir": ["/a,b", "/c", "/d"]}
    assert overlay.layers("ro,lowerdir=/only")["upperdir"] is None


def test_overlay_layer_containing_and_rescue_dest():
    upper = {"upperdir": "/srv/ov/upper", "workdir": "/srv/ov/work", "lowerdir": ["/srv/ov/lower"],
             "upper_device": "254:0", "rescue_dir": "/frelink-rescue"}
    assert overlay.layer_containing(upper, "/srv/ov/upper/app.log") == "/srv/ov/upper"
    assert overlay.layer_containing(upper, "/srv/ov/work") == "/srv/ov/work"
    assert overlay.layer_containing(upper, "/srv/ov/lower/x/y") == "/srv/ov/lower"
    assert overlay.layer_containing(upper, "/srv/ov/uppermost/x") is None
    assert overlay.layer_containing(upper, "/frelink-rescue/x") is None
    assert overlay.rescue_dest(upper, None, "/var/log/app.log") == "/frelink-rescue/overlay-254-0/var/log/app.log"
    cid = "ab" * 32
    assert overlay.rescue_dest(upper, {"short_id": cid[:12]}, "/a") == "/frelink-rescue/%s/a" % cid[:12]


def test_containers_from_cgroup_files():
    cid = "0123456789abcdef" * 4
    assert containers.container_of("0::/system.slice/docker-%s.scope\n" % cid) == {
        "runtime": "docker", "id": cid, "short_id": cid[:12]}
    assert containers.container_of("12:memory:/docker/%s\n" % cid)["runtime"] == "docker"
    assert containers.container_of("0::/machine.slice/libpod-%s.scope/container\n" % cid)["runtime"] == "podman"
    k8s = containers.container_of(
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_0000_1111_2222_333344445555"
        ".slice/cri-containerd-%s.scope\n" % cid)
    assert k8s == {"runtime": "containerd", "id": cid, "short_id": cid[:12],
                   "pod_uid": "1a2b3c4d-0000-1111-2222-333344445555"}
    v1 = containers.container_of("4:pids:/kubepods/besteffort/pod1a2b3c4d-0000-1111-2222-333344445555/%s\n" % cid)
    assert v1["pod_uid"] == "1a2b3c4d-0000-1111-2222-333344445555" and v1["id"] == cid
    assert containers.container_of("0::/kubepods.slice/x/crio-%s.scope\n" % cid)["runtime"] == "cri-o"
    assert containers.container_of("0::/user.slice/user-1000.slice/session-2.scope\n") is None
