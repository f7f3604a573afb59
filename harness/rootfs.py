"""Paths inside a guest rootfs, resolved as the guest sees them, never through the host.

A Debian tree is full of absolute symlinks (/lib/modules/<release>/build points at
/usr/src/linux-headers-<release>); Path.exists() on the host follows them into the
host's own /usr/src, so a check passes or fails by what the host has installed. Here
an absolute link target is taken relative to the rootfs, and ".." never leaves it,
exactly as in a chroot.
"""

import errno
import os
from pathlib import Path, PurePosixPath

# the kernel's own limit on links followed in one lookup (MAXSYMLINKS)
MAX_SYMLINKS = 40


def resolve(root, path) -> Path:
    """The host path of PATH (a path inside ROOT) with every symlink resolved inside ROOT.

    Missing components are kept as they are (like os.path.realpath without strict);
    a link loop raises OSError(ELOOP).
    """
    root = Path(root)
    pending = list(PurePosixPath("/", str(path)).parts[1:])
    resolved = []
    followed = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if not candidate.is_symlink():
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "too many levels of symbolic links inside the rootfs",
                          str(root.joinpath(*resolved, part)))
        target = PurePosixPath(os.readlink(candidate))
        if target.is_absolute():
            resolved = []
            target_parts = target.parts[1:]
        else:
            target_parts = target.parts
        pending[:0] = list(target_parts)
    return root.joinpath(*resolved)


def exists(root, path) -> bool:
    """Whether PATH exists inside ROOT, following links as the guest would."""
    try:
        return resolve(root, path).exists()
    except OSError:
        return False


def is_dir(root, path) -> bool:
    try:
        return resolve(root, path).is_dir()
    except OSError:
        return False


def is_file(root, path) -> bool:
    try:
        return resolve(root, path).is_file()
    except OSError:
        return False
