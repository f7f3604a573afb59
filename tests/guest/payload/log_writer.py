"""A service that writes a log, for the reclaim guest test (runs in the guest under systemd).

    python3 log_writer.py PATH SIZE append|plain INFO

Creates PATH (never an existing one) opened write-only, with O_APPEND for `append` (as loggers
and `>>` open a log) or without it for `plain`, writes SIZE random bytes and fsyncs, writes INFO
(JSON: pid, fd) and then writes one 4 KiB record of b"R" and fsyncs on each SIGUSR1: the writes
made after a reclaim.  Idle otherwise, so that free-space figures do not move.
"""

import json
import os
import signal
import sys


def main():
    path, size, how, info = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_APPEND if how == "append" else 0)
    fd = os.open(path, flags, 0o640)
    block = os.urandom(1 << 16)
    left = size
    while left > 0:
        left -= os.write(fd, block[:min(left, len(block))])
    os.fsync(fd)

    def record(*_signal):
        os.write(fd, b"R" * 4096)
        os.fsync(fd)

    signal.signal(signal.SIGUSR1, record)
    with open(info + ".tmp", "w") as out:
        json.dump({"pid": os.getpid(), "fd": fd}, out)
    os.rename(info + ".tmp", info)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
