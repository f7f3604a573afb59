"""Runs inside a guest with the frelink module loaded (see run.py).

For each size: create a file (sparse or filled), keep it open, unlink it;
time `cp` of /proc/self/fd/N (after dropping the page cache, as a rescue of a
cold file would), then time the relink ioctl of the same file (median and
max of RELINK_SAMPLES relinks, the name removed again after each). Prints JSON.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kmod_abi  # noqa: E402  pylint: disable=wrong-import-position

MIB = 1 << 20
RELINK_SAMPLES = 7


def make(path, size, filled):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    if filled:
        block = bytes(range(256)) * (MIB // 256)
        left = size
        while left:
            left -= os.write(fd, block[:min(left, MIB)])
        os.fsync(fd)
    else:
        os.ftruncate(fd, size)
        os.pwrite(fd, b"end", size - 3)  # one allocated block at the end
    os.unlink(path)
    return fd


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def one(workdir, size, filled):
    name = "bench-%d-%s" % (size, "filled" if filled else "sparse")
    fd = make(os.path.join(workdir, name), size, filled)
    dir_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        drop_caches()
        start = time.perf_counter()
        subprocess.run(["cp", "--sparse=auto", "/proc/self/fd/%d" % fd, os.path.join(workdir, name + ".cp")],
                       check=True, pass_fds=(fd,))
        cp_s = time.perf_counter() - start
        os.unlink(os.path.join(workdir, name + ".cp"))
        os.sync()  # the copy's writeback would otherwise stall the journal the relink needs
        samples = []
        for _sample in range(RELINK_SAMPLES):  # relink, check, delete again: the same file each time
            start = time.perf_counter()
            kmod_abi.relink_by_fd(fd, dir_fd, name + ".relinked")
            samples.append(time.perf_counter() - start)
            st = os.stat(os.path.join(workdir, name + ".relinked"))
            assert (st.st_ino, st.st_nlink) == (os.fstat(fd).st_ino, 1)
            os.unlink(os.path.join(workdir, name + ".relinked"))
        samples.sort()
    finally:
        os.close(dir_fd)
        os.close(fd)
    return {"size": size, "kind": "filled" if filled else "sparse", "cp_s": cp_s,
            "relink_s": samples[len(samples) // 2], "relink_max_s": samples[-1]}


def main():
    workdir = sys.argv[1]
    sparse_max = int(sys.argv[2]) * MIB
    filled_max = int(sys.argv[3]) * MIB
    rows = []
    size = MIB
    while size <= sparse_max:
        for filled in (False, True):
            if filled and size > filled_max:
                continue
            rows.append(one(workdir, size, filled))
        size *= 8 if size < 64 * MIB else 4 if size < 1024 * MIB else 8
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
