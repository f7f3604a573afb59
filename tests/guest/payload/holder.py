"""A process that holds a file it deleted, for the guest tests (runs in the guest).

    python3 holder.py PATH SIZE MODE INFO

Creates PATH (never an existing one), writes SIZE random bytes, fsyncs, unlinks it, and
writes INFO (JSON: pid, fd, path, dev, ino, device, mntns) once it holds only the
deleted inode. MODE: idle; append (then appends 4 KiB 20,000 times, 1 ms apart);
appendonly (sets FS_APPEND_FL on the deleted inode, which vfs_link() refuses). On
SIGUSR1 it writes LATER-WRITE at offset 0 and fsyncs: a write made after a restore,
which must land in the restored file.
"""

import fcntl
import json
import os
import signal
import struct
import sys
import time

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_APPEND_FL = 0x80086601, 0x40086602, 0x20


def main():
    path, size, mode, info = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    block = os.urandom(1 << 16)
    left = size
    while left > 0:
        left -= os.write(fd, block[:min(left, len(block))])
    os.fsync(fd)
    st = os.fstat(fd)
    os.unlink(path)
    if mode == "appendonly":
        flags = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags | FS_APPEND_FL))

    def later(*_signal):
        os.pwrite(fd, b"LATER-WRITE", 0)
        os.fsync(fd)

    signal.signal(signal.SIGUSR1, later)
    with open(info + ".tmp", "w") as out:
        json.dump({"pid": os.getpid(), "fd": fd, "path": path, "dev": st.st_dev, "ino": st.st_ino,
                   "device": "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev)),
                   "mntns": os.readlink("/proc/self/ns/mnt")}, out)
    os.rename(info + ".tmp", info)
    for n in range(20000 if mode == "append" else 0):
        os.write(fd, (b"%08d" % n) * 512)
        time.sleep(0.001)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
