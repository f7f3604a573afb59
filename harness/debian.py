"""Which Debian suites the harness builds, from which mirror, with which packages.

The mirror is never written into the repository: it is read at run time from the
host's own apt configuration, so the guests use whatever archive (or proxy) the
host is set up with.
"""

import glob
import os
import re
from pathlib import Path

from .util import HarnessError

SUITES = ("bookworm", "trixie", "sid")

# The kernels the module is proven on beyond SUITES: the oldest a fleet still runs
# (bullseye, 5.10) and the newest (trixie with its backports kernel). They cost an image
# each, so only the kmod suite uses them; `make test` runs a few of its scenarios there
# and `make test-kernels` all of them (docs/harness.md).
EXTRA_KERNEL_SUITES = ("bullseye", "trixie-backports")
KERNEL_SUITES = SUITES + EXTRA_KERNEL_SUITES

# Stable suites get their -updates and -security pockets so the kernel is the current one.
STABLE_SUITES = ("bullseye", "bookworm", "trixie")

# A suite that is a release plus its backports pocket: the release's userland with the
# kernel (and what it needs: linux-base, kbuild) from backports.
BACKPORTS_SUITES = {"trixie-backports": "trixie"}

# apt preferences of such a suite (in the image too, so apt in the guest keeps to them)
BACKPORTS_PIN = """\
Package: linux-*
Pin: release n={pocket}
Pin-Priority: 500
"""

# Everything the kernel tests, the role's molecule scenario and the demo need in a guest.
# linux-headers-amd64 pulls the matching -common headers, linux-kbuild and the gcc major
# that kernel was built with, so the chroot compiles modules exactly as DKMS would.
PACKAGES = (
    "linux-image-amd64",
    "linux-headers-amd64",
    "initramfs-tools",
    "zstd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "openssh-server",
    "sudo",
    "passwd",
    "acl",
    "procps",
    "less",
    "python3",
    "python3-psutil",
    "gcc",
    "make",
    "dkms",
    "kmod",
    "util-linux",
    "lsof",
    "e2fsprogs",
    "xfsprogs",
    "btrfs-progs",
    "dosfstools",
    "jfsutils",
    # what a kernel build needs beyond gcc and make: the debug kernel
    # (harness/debug_kernel.py) is built from Debian's source in this chroot
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
)


def _stanzas_deb822(text):
    stanza = {}
    key = None
    for raw in text.splitlines() + [""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
            continue
        if line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
            continue
        if ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()


def host_apt_sources(root="/"):
    """(uri, suite, components) triples of the host's enabled binary apt sources."""
    etc = os.path.join(root, "etc", "apt")
    entries = []
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        for stanza in _stanzas_deb822(Path(path).read_text(errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in stanza.get("types", "").split():
                continue
            for uri in stanza.get("uris", "").split():
                for suite in stanza.get("suites", "").split():
                    entries.append((uri.rstrip("/"), suite, stanza.get("components", "main").split()))
    lists = [os.path.join(etc, "sources.list")]
    lists += sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list")))
    for path in lists:
        if not os.path.exists(path):
            continue
        for raw in Path(path).read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                entries.append((line[1].rstrip("/"), line[2], line[3:] or ["main"]))
    return entries


def host_mirrors():
    """(archive_uri, security_uri or None) taken from the host's apt sources.

    FRELINK_MIRROR / FRELINK_SECURITY_MIRROR override them (e.g. a local proxy).
    """
    archive = os.environ.get("FRELINK_MIRROR")
    security = os.environ.get("FRELINK_SECURITY_MIRROR")
    for uri, suite, _components in host_apt_sources():
        if not uri.startswith(("http://", "https://")):
            continue
        is_security = suite.endswith("-security") or suite.endswith("/updates")
        if is_security and security is None:
            security = uri
        elif not is_security and archive is None and "security" not in uri:
            archive = uri
    if archive is None:
        raise HarnessError(
            "cannot tell which Debian mirror to use: no http(s) 'deb' source found in "
            "/etc/apt/sources.list or /etc/apt/sources.list.d/; configure apt on this host "
            "or set FRELINK_MIRROR to a Debian archive URL"
        )
    return archive, security


def apt_source_lines(suite):
    """One-line apt sources for SUITE on the host's mirror (used inside the image too)."""
    if suite not in KERNEL_SUITES:
        raise HarnessError(f"unknown suite {suite!r}; choose one of {', '.join(KERNEL_SUITES)}")
    archive, security = host_mirrors()
    release = codename(suite)
    lines = [f"deb {archive} {release} main"]
    if release in STABLE_SUITES:
        lines.append(f"deb {archive} {release}-updates main")
        if security:
            lines.append(f"deb {security} {release}-security main")
    if suite in BACKPORTS_SUITES:
        lines.append(f"deb {archive} {suite} main")
    return lines


def codename(suite):
    """The Debian release SUITE's userland comes from (mmdebstrap's suite argument)."""
    return BACKPORTS_SUITES.get(suite, suite)


def apt_preferences(suite):
    """/etc/apt/preferences.d text SUITE needs, or "" (a backports suite: its kernel)."""
    if suite in BACKPORTS_SUITES:
        return BACKPORTS_PIN.format(pocket=suite)
    return ""


def apt_options(suite):
    """apt.conf lines the suite needs (host side during the build and inside the guest)."""
    if suite == "sid":
        # unstable snapshots can be older than their Valid-Until stamp
        return ['Acquire::Check-Valid-Until "false";']
    return []
