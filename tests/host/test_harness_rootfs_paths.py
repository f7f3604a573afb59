"""harness.rootfs resolves links inside a guest tree, never through the host.

The synthetic rootfs mimics Debian's layout: /lib is a relative link to usr/lib and
/lib/modules/<release>/build an absolute link to /usr/src/linux-headers-<release>,
for a release that no host has, so a check that followed links through the host
would answer wrongly.
"""

import errno
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness import image, rootfs  # noqa: E402  pylint: disable=wrong-import-position

RELEASE = "0.0.0-frelink-synthetic-amd64"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr/lib/modules" / RELEASE).mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=debian\n")
    (root / "etc").mkdir()
    os.symlink("usr/lib", root / "lib")
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    headers = root / "usr/src" / f"linux-headers-{RELEASE}"
    headers.mkdir(parents=True)
    (headers / "Makefile").write_text("# kbuild\n")
    os.symlink(f"/usr/src/linux-headers-{RELEASE}", root / "lib/modules" / RELEASE / "build")
    assert not os.path.exists(f"/usr/src/linux-headers-{RELEASE}"), "the host must not have it"
    return root


def test_absolute_link_resolves_inside_the_rootfs(tree):
    build = f"/lib/modules/{RELEASE}/build"
    assert rootfs.resolve(tree, build) == tree / "usr/src" / f"linux-headers-{RELEASE}"
    assert rootfs.is_dir(tree, build)
    assert rootfs.is_file(tree, image.headers_makefile(RELEASE))
    # what the old check did: follow the link through the host, where it dangles
    assert not (tree / "lib/modules" / RELEASE / "build").exists()


def test_relative_links_and_dotdot_stay_inside(tree):
    assert rootfs.resolve(tree, "/etc/os-release") == tree / "usr/lib/os-release"
    assert rootfs.exists(tree, "etc/os-release")
    os.symlink("../../../../../../../etc", tree / "usr/escape")
    assert rootfs.resolve(tree, "/usr/escape") == tree / "etc"
    assert rootfs.resolve(tree, "/../../etc/os-release") == tree / "usr/lib/os-release"


def test_link_to_a_host_path_is_not_taken_from_the_host(tree):
    # /etc/hostname exists on any host; inside the rootfs it does not
    os.symlink("/etc/hostname", tree / "hostname-link")
    assert Path("/etc/hostname").exists()
    assert not rootfs.exists(tree, "/hostname-link")


def test_missing_headers_are_missing(tree):
    (tree / "usr/src" / f"linux-headers-{RELEASE}" / "Makefile").unlink()
    assert not rootfs.is_file(tree, image.headers_makefile(RELEASE))
    assert not rootfs.exists(tree, f"/lib/modules/{RELEASE}/build/Makefile")


def test_link_loop_is_refused(tree):
    os.symlink("/loop-b", tree / "loop-a")
    os.symlink("/loop-a", tree / "loop-b")
    with pytest.raises(OSError) as error:
        rootfs.resolve(tree, "/loop-a")
    assert error.value.errno == errno.ELOOP
    assert not rootfs.exists(tree, "/loop-a")


def test_image_build_finds_headers_only_inside_the_image(tree, tmp_path):
    """The image build's own check: it found the headers only on hosts that had them."""
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"kernel")
    (tree / "boot" / f"initrd.img-{RELEASE}").write_bytes(b"initrd")
    log = tmp_path / "build.log"
    assert image.installed_kernel(tree, "synthetic", log) == RELEASE
    (tree / "usr/src" / f"linux-headers-{RELEASE}" / "Makefile").unlink()
    with pytest.raises(image.HarnessError, match="headers for .* are missing"):
        image.installed_kernel(tree, "synthetic", log)
