"""plugins/lookup/kmod_source_archive.py: the archive the role ships the module sources in.

Byte-identical across runs and across file mtimes and owners, build products
left out, and it unpacks to the kmod/ tree (content and executable bits).
"""

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ansible_collections.frelink.frelink.plugins.lookup import kmod_source_archive

# the collection's root (ansible-test units runs a copy of it)
REPO = Path(__file__).resolve().parents[4]
KMOD = REPO / "roles" / "frelink_kmod" / "files" / "kmod"
COLLECTIONS = REPO.parents[2] if REPO.parents[1].name == "ansible_collections" else REPO / ".build" / "collections"

# the role's list (roles/frelink_kmod/vars/main.yml)
EXCLUDES = ["*.o", "*.ko", "*.mod", "*.mod.c", ".*.cmd", "*.symvers", "modules.order",
            "compat-config.h", ".tmp_versions"]
BUILD_PRODUCTS = ["frelink.o", "frelink.ko", "frelink.mod", "frelink.mod.c", ".frelink.o.cmd",
                  "Module.symvers", "modules.order", "compat-config.h", ".tmp_versions/frelink.mod"]


def source_files(root):
    """Relative path -> (bytes, owner-executable) of the files git would ship from ROOT."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part == p or Path(part).match(p) for part in rel.split("/")
                                      for p in EXCLUDES):
            out[rel] = (path.read_bytes(), bool(path.stat().st_mode & stat.S_IXUSR))
    return out


@pytest.fixture()
def tree(tmp_path):
    copy = tmp_path / "kmod"
    shutil.copytree(KMOD, copy, ignore=shutil.ignore_patterns(*EXCLUDES))
    return copy


def test_identical_across_runs_mtimes_and_owners(tree, tmp_path):
    first = kmod_source_archive.build_archive(str(tree), EXCLUDES)
    assert kmod_source_archive.build_archive(str(tree), EXCLUDES) == first

    other = tmp_path / "elsewhere" / "kmod"
    shutil.copytree(tree, other)
    for number, path in enumerate(sorted(other.rglob("*"))):
        os.utime(path, (1_000_000 + number * 7919, 1_500_000_000 + number * 104729), follow_symlinks=False)
        os.lchown(path, 1000 + number, 2000 + number)
        if path.is_file():
            path.chmod(path.stat().st_mode | stat.S_IWGRP | stat.S_IROTH)
    os.utime(other, (12345, 67890))
    assert kmod_source_archive.build_archive(str(other), EXCLUDES) == first

    # and the bytes depend on the content: one changed byte changes them
    (other / "Kbuild").write_bytes((other / "Kbuild").read_bytes() + b"# changed\n")
    assert kmod_source_archive.build_archive(str(other), EXCLUDES) != first


def test_excludes_build_products_and_unpacks_to_the_tree(tree, tmp_path):
    clean = kmod_source_archive.build_archive(str(tree), EXCLUDES)
    (tree / ".tmp_versions").mkdir()
    for name in BUILD_PRODUCTS:
        (tree / name).write_bytes(b"build product " + name.encode())
    built = kmod_source_archive.build_archive(str(tree), EXCLUDES)
    assert built == clean

    with tarfile.open(fileobj=io.BytesIO(built), mode="r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert not any(Path(n).name in {Path(p).name for p in BUILD_PRODUCTS} or n.startswith(".tmp_versions")
                       for n in names), names
        for member in members:
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
            assert member.mode in (0o644, 0o755), (member.name, oct(member.mode))
        target = tmp_path / "unpacked"
        tar.extractall(target, filter="data")
    assert source_files(target) == source_files(KMOD)
    assert "dkms.conf" in source_files(target) and "frelink.c" in source_files(target)


def test_gzip_header_has_no_name_or_time(tree):
    archive = kmod_source_archive.build_archive(str(tree), EXCLUDES)
    assert archive[:3] == b"\x1f\x8b\x08"
    flags, mtime = archive[3], int.from_bytes(archive[4:8], "little")
    assert flags & 0x08 == 0 and mtime == 0


def _lookup(directory, tmp_path):
    """The lookup as a play calls it: ansible, with the collections directory this copy is in
    (ansible-test's, or the checkout's .build/collections)."""
    out = tmp_path / "lookup.out"
    expr = "{{ lookup('frelink.frelink.kmod_source_archive', %r, excludes=%r) }}" % (str(directory), EXCLUDES)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local",
                           "-m", "ansible.builtin.copy", "-a",
                           json.dumps({"content": expr, "dest": str(out)})],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    return proc, out


def test_lookup_returns_base64_of_the_archive(tree, tmp_path):
    proc, out = _lookup(tree, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    encoded = out.read_text()
    assert "\n" not in encoded
    assert base64.b64decode(encoded) == kmod_source_archive.build_archive(str(tree), EXCLUDES)
    print("archive sha256", hashlib.sha256(encoded.encode()).hexdigest())

    proc = _lookup(tree / "missing", tmp_path)[0]
    assert proc.returncode != 0
    assert "is not a directory on the controller" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
