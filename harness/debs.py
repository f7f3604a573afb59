"""Extra Debian packages for one test, without touching the image recipe.

The .debs of PACKAGES and of their dependencies that the suite's image lacks
are downloaded with the image's own apt (its lists and dpkg status, in the
build chroot) and cached under <cache root>/<suite>/debs/<key>/, rebuilt when
missing or when the image is rebuilt.  Guest.install_debs() installs them in
a running guest offline, with dpkg.
"""

import hashlib
import os
from pathlib import Path

from .chroot import build_root, chroot_run
from .image import prepare
from .util import file_lock, progress, remove_tree, suite_dir, write_atomic


def fetch_debs(suite: str, packages) -> Path:
    """Directory of .debs that installs PACKAGES on SUITE's image."""
    packages = sorted(set(packages))
    env = prepare(suite)
    key = hashlib.sha256((" ".join(packages) + "\n" + env.key).encode()).hexdigest()[:12]
    cache = suite_dir(suite) / "debs" / key
    ready = cache / "ready"
    if ready.exists():
        return cache
    with file_lock(suite_dir(suite) / "debs.lock", suite, "waiting for another fetch of packages"):
        if ready.exists():
            return cache
        progress(suite, "downloading %s (and what the image lacks of their dependencies)" % ", ".join(packages))
        work = build_root(suite) / ("debs-" + key)
        remove_tree(work)
        (work / "partial").mkdir(parents=True)
        chroot_run(suite, ["apt-get", "-q", "-y", "--no-install-recommends", "--download-only",
                           "-o", "Dir::Cache::archives=/build/debs-" + key, "-o", "Debug::NoLocking=1",
                           "install", *packages], timeout=1200)
        debs = sorted(work.glob("*.deb"))
        if not debs:
            raise FileNotFoundError("apt downloaded no .deb for %s in %s's image (installed already?)"
                                    % (packages, suite))
        remove_tree(cache)
        cache.mkdir(parents=True)
        for deb in debs:
            os.replace(deb, cache / deb.name)
        remove_tree(work)
        write_atomic(ready, "\n".join(deb.name for deb in debs) + "\n")
    return cache
