"""The Python mirror plugins/module_utils/_frelink/kmod_abi.py agrees with kmod/uapi/frelink.h.

A tiny C program is compiled with the host's gcc against the real header and
prints the sizes, offsets, flag values and the ioctl number; the errno names
documented in the header are compared with the mirror's hints.
"""

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ansible_collections.frelink.frelink.plugins.module_utils._frelink import kmod_abi

# the collection's root (ansible-test units runs a copy of it)
REPO = Path(__file__).resolve().parents[5]
KMOD = REPO / "roles" / "frelink_kmod" / "files" / "kmod"  # the role ships the sources
HEADER = KMOD / "uapi" / "frelink.h"

FIELDS = ("flags", "src_fd", "dir_fd", "reserved0", "dev", "ino", "generation", "reserved", "name")
IDENTIFY_FIELDS = ("dir_fd", "flags", "dev", "ino", "generation", "reserved")

PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include "frelink.h"
#define OFF(f) printf("offset_%s %zu\n", #f, offsetof(struct frelink_relink, f))
#define SIZE(f) printf("size_%s %zu\n", #f, sizeof(((struct frelink_relink *)0)->f))
#define IOFF(f) printf("identify_offset_%s %zu\n", #f, offsetof(struct frelink_identify, f))
#define ISIZE(f) printf("identify_size_%s %zu\n", #f, sizeof(((struct frelink_identify *)0)->f))
int main(void)
{
    printf("sizeof %zu\n", sizeof(struct frelink_relink));
    printf("ioc_relink %lu\n", (unsigned long)FRELINK_IOC_RELINK);
    printf("ioc_magic %u\n", (unsigned)FRELINK_IOC_MAGIC);
    printf("by_fd %u\n", (unsigned)FRELINK_BY_FD);
    printf("by_inode %u\n", (unsigned)FRELINK_BY_INODE);
    printf("generation %u\n", (unsigned)FRELINK_GENERATION);
    printf("ioc_identify %lu\n", (unsigned long)FRELINK_IOC_IDENTIFY);
    printf("sizeof_identify %zu\n", sizeof(struct frelink_identify));
    printf("name_size %u\n", (unsigned)FRELINK_NAME_SIZE);
    printf("device_name %s\n", FRELINK_DEVICE_NAME);
%s
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_values(tmp_path_factory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to compile kmod/uapi/frelink.h: apt-get install gcc (scripts/bootstrap.sh does)")
    work = tmp_path_factory.mktemp("abi")
    body = "\n".join(["\tOFF(%s); SIZE(%s);" % (f, f) for f in FIELDS] +
                     ["\tIOFF(%s); ISIZE(%s);" % (f, f) for f in IDENTIFY_FIELDS])
    (work / "probe.c").write_text(PROBE.replace("%s\n", body + "\n", 1))
    subprocess.run([gcc, "-Wall", "-Werror", "-I", str(HEADER.parent), "-o", str(work / "probe"),
                    str(work / "probe.c")], check=True)
    out = subprocess.run([str(work / "probe")], check=True, capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_struct_layout_matches_header(c_values):
    assert int(c_values["sizeof"]) == kmod_abi.RELINK_STRUCT_SIZE == 320
    # Rebuild offsets/sizes from the mirror's struct format and compare one by one.
    packed = kmod_abi.pack_request(0xAA, src_fd=-2, dir_fd=-3, dev=0x1122334455667788, ino=0x99,
                                   name=b"n", reserved0=7, generation=0xFFFFFFFF, reserved=(1, 2, 3))
    unpacked = kmod_abi.RELINK_STRUCT.unpack(packed)
    assert unpacked[:7] == (0xAA, -2, -3, 7, 0x1122334455667788, 0x99, 0xFFFFFFFF)
    assert unpacked[7:10] == (1, 2, 3)
    offset = 0
    sizes = {"flags": 4, "src_fd": 4, "dir_fd": 4, "reserved0": 4, "dev": 8, "ino": 8, "generation": 8,
             "reserved": 24, "name": kmod_abi.NAME_SIZE}
    for field in FIELDS:
        assert int(c_values["offset_" + field]) == offset, field
        assert int(c_values["size_" + field]) == sizes[field], field
        offset += sizes[field]
    assert offset == kmod_abi.RELINK_STRUCT_SIZE


def test_constants_match_header(c_values):
    assert int(c_values["ioc_relink"]) == kmod_abi.IOC_RELINK
    assert int(c_values["ioc_magic"]) == kmod_abi.IOC_MAGIC
    assert int(c_values["by_fd"]) == kmod_abi.BY_FD
    assert int(c_values["by_inode"]) == kmod_abi.BY_INODE
    assert int(c_values["generation"]) == kmod_abi.GENERATION
    assert int(c_values["ioc_identify"]) == kmod_abi.IOC_IDENTIFY
    assert int(c_values["name_size"]) == kmod_abi.NAME_SIZE
    assert "/dev/" + c_values["device_name"] == kmod_abi.DEVICE_PATH


def test_identify_layout_matches_header(c_values):
    assert int(c_values["sizeof_identify"]) == kmod_abi.IDENTIFY_STRUCT_SIZE == 64
    sizes = {"dir_fd": 4, "flags": 4, "dev": 8, "ino": 8, "generation": 8, "reserved": 32}
    offset = 0
    for field in IDENTIFY_FIELDS:
        assert int(c_values["identify_offset_" + field]) == offset, field
        assert int(c_values["identify_size_" + field]) == sizes[field], field
        offset += sizes[field]
    assert offset == kmod_abi.IDENTIFY_STRUCT_SIZE


def documented_errnos():
    text = HEADER.read_text()
    block = text[text.index("Errors, each meaning exactly one thing:"):text.index("Other errors")]
    return re.findall(r"^ \*\t(E[A-Z]+)\t", block, re.M)


def test_every_documented_refusal_is_distinct_and_has_a_hint():
    names = documented_errnos()
    assert len(names) >= 13, names
    assert len(set(names)) == len(names), "an errno is documented for two refusals"
    for name in names:
        number = getattr(errno, name)
        assert number in kmod_abi.HINTS, "no hint for %s" % name
        hint = kmod_abi.HINTS[number]
        err = kmod_abi.RelinkError(number)
        assert err.errno == number and err.hint == hint and isinstance(err, OSError)
        assert name in str(err) and hint in str(err)


ALLOWLIST_PROBE = r"""
#include <stdio.h>
#include "allowlist.h"
int main(void)
{
    unsigned int i;

    for (i = 0; i < sizeof(frelink_magics) / sizeof(frelink_magics[0]); i++)
        printf("%lu\n", frelink_magics[i]);
    printf("via_upper %lu\n", (unsigned long)FRELINK_VIA_UPPER_MAGIC);
    return 0;
}
"""


def test_allowlist_matches_the_module(tmp_path):
    """kmod/allowlist.h (compiled with the uapi <linux/magic.h>) and RELINK_MAGICS are one table."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to compile kmod/allowlist.h: apt-get install gcc (scripts/bootstrap.sh does)")
    (tmp_path / "probe.c").write_text(ALLOWLIST_PROBE)
    subprocess.run([gcc, "-Wall", "-Werror", "-I", str(KMOD), "-o", str(tmp_path / "probe"),
                    str(tmp_path / "probe.c")], check=True)
    lines = subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True, text=True).stdout.split("\n")
    magics = [int(line) for line in lines if line and not line.startswith("via_upper")]
    via_upper = [int(line.split()[1]) for line in lines if line.startswith("via_upper")]
    assert sorted(magics) == sorted(kmod_abi.RELINK_MAGICS.values())
    assert len(magics) == len(set(magics)) == len(kmod_abi.RELINK_MAGICS)
    assert via_upper == list(kmod_abi.RELINK_VIA_UPPER_MAGICS.values())
    # the names: every fstype in the tables is served by one of the magics
    assert set(kmod_abi.RELINK_MAGICS) <= kmod_abi.RELINK_FSTYPES
    assert kmod_abi.RELINK_FSTYPES - set(kmod_abi.RELINK_MAGICS) == {"ext2", "ext3"}
    assert kmod_abi.RELINK_VIA_UPPER_FSTYPES == frozenset(kmod_abi.RELINK_VIA_UPPER_MAGICS) == {"overlay"}


def test_relink_supported():
    for fstype in ("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"):
        assert kmod_abi.relink_supported(fstype)
    for fstype in ("vfat", "jfs", "ramfs", "hugetlbfs", "fuse", "nfs", "overlay"):
        assert not kmod_abi.relink_supported(fstype), fstype
    assert kmod_abi.relink_supported("overlay", "xfs")
    assert not kmod_abi.relink_supported("overlay", "vfat")
    assert not kmod_abi.relink_supported("overlay", "overlay")


def test_hints_are_true_for_the_form_of_the_request():
    """By descriptor the inode cannot have left memory: ENOENT must not say so."""
    by_fd = kmod_abi.hint_for(kmod_abi.BY_FD, errno.ENOENT)
    by_inode = kmod_abi.hint_for(kmod_abi.BY_INODE, errno.ENOENT)
    assert "in memory" not in by_fd and "directory was deleted" in by_fd
    assert "in memory" in by_inode and "directory" not in by_inode
    assert "overlayfs" in kmod_abi.hint_for(kmod_abi.BY_FD, errno.EXDEV)
    assert "by descriptor" in kmod_abi.hint_for(kmod_abi.BY_INODE, errno.EOPNOTSUPP)
    assert "opened through" in kmod_abi.hint_for(kmod_abi.BY_FD, errno.EROFS)
    assert "opened through" not in kmod_abi.hint_for(kmod_abi.BY_INODE, errno.EROFS)
    # EPERM and EACCES of the ioctl are not the device's mode or a missing become
    assert "immutable" in kmod_abi.hint_for(kmod_abi.BY_FD, errno.EPERM)
    assert "security module" in kmod_abi.hint_for(kmod_abi.BY_INODE, errno.EACCES)
    for flags in (kmod_abi.BY_FD, kmod_abi.BY_INODE):
        for name in documented_errnos():
            assert kmod_abi.hint_for(flags, getattr(errno, name)), name


def test_ioctl_errors_carry_the_hint_of_their_form(monkeypatch, tmp_path):
    device = tmp_path / "frelink"
    device.write_bytes(b"")
    monkeypatch.setattr(kmod_abi, "DEVICE_PATH", str(device))

    def fake_ioctl(fd, request, arg):
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(kmod_abi.fcntl, "ioctl", fake_ioctl)
    with pytest.raises(kmod_abi.RelinkError) as info:
        kmod_abi.relink_by_fd(0, 0, "x")
    assert info.value.errno == errno.ENOENT and info.value.hint == kmod_abi.HINTS_BY_FD[errno.ENOENT]
    with pytest.raises(kmod_abi.RelinkError) as info:
        kmod_abi.relink_by_inode(1, 2, 0, "x")
    assert info.value.hint == kmod_abi.HINTS_BY_INODE[errno.ENOENT]


def test_name_is_checked_before_it_reaches_the_kernel():
    with pytest.raises(kmod_abi.RelinkError) as info:
        kmod_abi.encode_name("a" * 256)
    assert info.value.errno == errno.ENAMETOOLONG
    with pytest.raises(kmod_abi.RelinkError) as info:
        kmod_abi.encode_name("a\0b")  # the kernel would see only "a"
    assert info.value.errno == errno.EILSEQ
    assert kmod_abi.encode_name("a" * 255) == b"a" * 255
    assert kmod_abi.encode_name("caf\u00e9") == "caf\u00e9".encode()


def test_missing_device_says_how_to_load_the_module(tmp_path, monkeypatch):
    monkeypatch.setattr(kmod_abi, "DEVICE_PATH", str(tmp_path / "frelink"))
    with pytest.raises(kmod_abi.RelinkError) as info:
        kmod_abi.relink_by_fd(0, 0, "x")
    assert info.value.errno == errno.ENODEV
    assert "modprobe frelink" in info.value.hint


HELD_PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include "frelink.h"
#define OFF(s, f) printf("%s.%s %zu %zu\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
int main(void)
{
    printf("held %zu\n", sizeof(struct frelink_held));
    printf("record %zu\n", sizeof(struct frelink_held_record));
    printf("ioc_held %lu\n", (unsigned long)FRELINK_IOC_HELD);
    printf("kinds %u %u %u %u %u %u\n", FRELINK_HELD_FD, FRELINK_HELD_MMAP, FRELINK_HELD_EXE, FRELINK_HELD_CWD,
           FRELINK_HELD_ROOT, FRELINK_HELD_ALL);
    printf("nfs_renamed %u\n", FRELINK_HELD_NFS_RENAMED);
    printf("split %u\n", FRELINK_HELD_SPLIT);
%s
    return 0;
}
"""
HELD_FIELDS = ("buf", "buf_size", "kinds", "next_pid", "used", "processes", "fds", "flags", "next_kind", "next_at",
               "reserved")
RECORD_FIELDS = ("rec_len", "kind", "pid", "fd", "flags", "start", "end", "dev", "ino", "mode", "nlink", "uid", "gid",
                 "size", "blocks", "mtime_sec", "mtime_nsec", "open_flags", "pos", "path")


def _layout(fmt, fields):
    """{field: (offset, size)} of a packed struct.Struct format, one field per code ('4Q' is one)."""
    import struct  # pylint: disable=import-outside-toplevel
    codes = re.findall(r"\d*[A-Za-z]", fmt.lstrip("="))
    out, offset = {}, 0
    for field, code in zip(fields, codes):
        size = struct.calcsize("=" + code)
        out[field] = (offset, size)
        offset += size
    return out


def test_listing_abi_matches_header(tmp_path):
    """struct frelink_held, struct frelink_held_record, FRELINK_IOC_HELD and the kind bits."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to compile kmod/uapi/frelink.h: apt-get install gcc (scripts/bootstrap.sh does)")
    body = "\n".join(["\tOFF(frelink_held, %s);" % f for f in HELD_FIELDS] +
                     ["\tOFF(frelink_held_record, %s);" % f for f in RECORD_FIELDS[:-1]] +
                     ['\tprintf("frelink_held_record.path %zu 0\\n", offsetof(struct frelink_held_record, path));'])
    (tmp_path / "probe.c").write_text(HELD_PROBE.replace("%s\n", body + "\n", 1))
    subprocess.run([gcc, "-Wall", "-Werror", "-I", str(HEADER.parent), "-o", str(tmp_path / "probe"),
                    str(tmp_path / "probe.c")], check=True)
    out = dict(line.split(" ", 1) for line in subprocess.run(
        [str(tmp_path / "probe")], check=True, capture_output=True, text=True).stdout.splitlines())
    assert int(out["held"]) == kmod_abi.HELD_STRUCT_SIZE == 64
    assert int(out["record"]) == kmod_abi.HELD_RECORD_SIZE == 104
    assert int(out["ioc_held"]) == kmod_abi.IOC_HELD
    bits = [kmod_abi.HELD_FD, kmod_abi.HELD_MMAP, kmod_abi.HELD_EXE, kmod_abi.HELD_CWD, kmod_abi.HELD_ROOT]
    assert [int(v) for v in out["kinds"].split()] == bits + [kmod_abi.HELD_ALL]
    assert sorted(kmod_abi.HELD_KINDS.values()) == bits
    assert int(out["nfs_renamed"]) == kmod_abi.HELD_NFS_RENAMED
    assert int(out["split"]) == kmod_abi.HELD_SPLIT
    for struct_name, fmt, fields in (("frelink_held", kmod_abi.HELD_STRUCT.format, HELD_FIELDS),
                                     ("frelink_held_record", kmod_abi.HELD_RECORD_STRUCT.format, RECORD_FIELDS[:-1])):
        for field, (offset, size) in _layout(fmt, fields).items():
            assert out["%s.%s" % (struct_name, field)] == "%d %d" % (offset, size), (struct_name, field)
    assert out["frelink_held_record.path"] == "%d 0" % kmod_abi.HELD_RECORD_SIZE


def test_records_are_parsed_by_their_length():
    def record(kind, pid, fd, path, nlink=0):
        raw = os.fsencode(path) + b"\0"
        rec_len = (kmod_abi.HELD_RECORD_SIZE + len(raw) + 7) // 8 * 8
        head = kmod_abi.HELD_RECORD_STRUCT.pack(rec_len, kind, pid, fd, 0, 0x1000, 0x2000, 2049, 12, 0o100644,
                                                nlink, 0, 0, 5, 8, 1700000000, 500000000, 0o2002, 77)
        return (head + raw).ljust(rec_len, b"\0")

    data = record(kmod_abi.HELD_FD, 42, 3, "/var/log/a (deleted)") + record(kmod_abi.HELD_MMAP, 43, -1, "/x\u00e9")
    parsed = kmod_abi.parse_held_records(data, len(data))
    assert [(r[0], r[1], r[2], r[3], r[6]) for r in parsed] == [
        ("fd", 42, 3, (0x1000, 0x2000), "/var/log/a (deleted)"), ("mmap", 43, -1, (0x1000, 0x2000), "/x\u00e9")]
    assert parsed[0][7] == (0o2002, 77)
    st = parsed[0][5]
    assert (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_blocks, st.st_mtime) == (
        2049, 12, 0o100644, 5, 8, 1700000000.5)
    with pytest.raises(ValueError):
        kmod_abi.parse_held_records(data, len(data) - 8)  # a record that runs past the end
