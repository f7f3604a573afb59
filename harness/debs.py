"""Extra Debian packages for one test, without touching the image recipe.

The .debs of PACKAGES and of their dependencies that the guest lacks are
downloaded with the image's own apt (its lists, in the build chroot) against
the guest's dpkg status (the chroot's may hold build tools the guest has not),
and cached under <cache root>/<suite>/debs/<key>/, rebuilt when missing, when
the image is rebuilt or when the guest's packages differ.
Guest.install_debs() installs them in a running guest offline, with dpkg.
"""

import hashlib
import os
from pathlib import Path

from .chroot import CommandError, build_root, chroot_run
from .image import prepare
from .util import file_lock, progress, remove_tree, suite_dir, write_atomic


def fetch_debs(suite: str, packages, dpkg_status: bytes) -> Path:
    """Directory of .debs that installs PACKAGES on a guest of SUITE whose
    /var/lib/dpkg/status is DPKG_STATUS."""
    packages = sorted(set(packages))
    env = prepare(suite)
    key = hashlib.sha256((" ".join(packages) + "\n" + env.key + "\n").encode() + dpkg_status).hexdigest()[:12]
    cache = suite_dir(suite) / "debs" / key
    ready = cache / "ready"
    if ready.exists():
        return cache
    with file_lock(suite_dir(suite) / "debs.lock", suite, "waiting for another fetch of packages"):
        if ready.exists():
            return cache
        progress(suite, "downloading %s (and what the guest lacks of their dependencies)" % ", ".join(packages))
        work = build_root(suite) / ("debs-" + key)
        remove_tree(work)
        (work / "partial").mkdir(parents=True)
        (work / "status").write_bytes(dpkg_status)
        inside = "/build/debs-" + key
        download = ["apt-get", "-q", "-y", "--no-install-recommends", "--download-only",
                    "-o", "Dir::Cache::archives=" + inside, "-o", "Dir::State::status=%s/status" % inside,
                    "-o", "Debug::NoLocking=1", "install", *packages]
        try:
            chroot_run(suite, download, timeout=1200)
        except CommandError:  # the image's lists are older than the archive: refresh them once
            chroot_run(suite, ["apt-get", "-q", "update"], timeout=1200)
            chroot_run(suite, download, timeout=1200)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise FileNotFoundError("apt downloaded no .deb for %s on %s (installed already?)" % (packages, suite))
        remove_tree(cache)
        cache.mkdir(parents=True)
        for deb in debs:
            os.replace(deb, cache / deb.name)
        remove_tree(work)
        write_atomic(ready, "\n".join(deb.name for deb in debs) + "\n")
    return cache
