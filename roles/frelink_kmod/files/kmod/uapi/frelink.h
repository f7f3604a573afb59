/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note */
/*
 * frelink - give a deleted but still open inode a name again.
 *
 * Userspace ABI of the /dev/frelink misc device.  The Python mirror in
 * plugins/module_utils/_frelink/kmod_abi.py must follow every change here; the unit
 * test tests/unit/plugins/module_utils/_frelink/test_kmod_abi.py compiles this header and compares.
 */
#ifndef _UAPI_LINUX_FRELINK_H
#define _UAPI_LINUX_FRELINK_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define FRELINK_DEVICE_NAME	"frelink"

/* NAME_MAX + 1: room for the longest single path component and its NUL */
#define FRELINK_NAME_SIZE	256

/* Exactly one of these selects how the inode is identified. */
#define FRELINK_BY_FD		0x1U	/* src_fd */
#define FRELINK_BY_INODE	0x2U	/* dev + ino */
/* With FRELINK_BY_INODE: @generation is set (0 is a valid generation). */
#define FRELINK_GENERATION	0x4U

/**
 * struct frelink_relink - argument of FRELINK_IOC_RELINK
 * @flags:	FRELINK_BY_FD, FRELINK_BY_INODE or
 *		FRELINK_BY_INODE | FRELINK_GENERATION, nothing else
 * @src_fd:	BY_FD: a descriptor of the deleted file, e.g. opened on
 *		/proc/PID/fd/N, /proc/PID/map_files/A-B or /proc/PID/exe
 *		(O_PATH is fine; on overlayfs open it O_PATH or read-only,
 *		an open for writing copies a lower file up); must be -1
 *		with BY_INODE
 * @dir_fd:	directory that receives the name (O_PATH is fine)
 * @dev:	BY_INODE: st_dev as stat(2) reports it (glibc makedev()
 *		encoding); must be 0 with BY_FD
 * @ino:	BY_INODE: st_ino; must be 0 with BY_FD
 * @generation:	with FRELINK_GENERATION: the inode's generation as
 *		FRELINK_IOC_IDENTIFY reported it (below 2^32); else 0.
 *		(dev, ino) alone names whatever deleted file holds the
 *		number now: after the file identified was freed (a loop
 *		device detached), another one may have got it
 * @reserved:	must be zero
 * @name:	the new name: one path component, NUL-terminated
 *
 * The ioctl succeeds only if the inode is a regular file with link count 0
 * on one of the allowed filesystems (ext4, also serving ext2 and ext3; xfs;
 * btrfs; tmpfs), on the filesystem (and, for btrfs, the subvolume) of
 * @dir_fd, and @name does not exist yet.  BY_FD on overlayfs relinks the
 * file's upper-layer inode (the one holding its data) into @dir_fd, which
 * must then be on the upper layer's filesystem.  On any refusal nothing is
 * changed.
 *
 * Errors, each meaning exactly one thing:
 *	EPERM		caller lacks CAP_SYS_ADMIN
 *	EINVAL		malformed request: unknown or conflicting flags,
 *			non-zero reserved field, field set that the chosen
 *			form does not use, dev 0 with BY_INODE, a
 *			generation of 2^32 or more
 *	ENAMETOOLONG	@name has no NUL within FRELINK_NAME_SIZE bytes
 *	EILSEQ		@name is empty, ".", ".." or contains '/'
 *	EBADF		@src_fd or @dir_fd is not an open descriptor
 *	ENOTDIR		@dir_fd is not a directory
 *	EMEDIUMTYPE	BY_FD: the inode is not a regular file
 *	EMLINK		the inode still has links (link count not 0):
 *			nothing to undelete, or another relink (or link)
 *			just won; BY_FD on overlayfs also when the file has no
 *			upper copy and its lower one still has its name
 *	EXDEV		@dir_fd is on another filesystem or subvolume than
 *			the inode (BY_INODE: its st_dev differs from @dev;
 *			BY_FD on overlayfs: not on the upper layer's one)
 *	EOPNOTSUPP	the inode's filesystem is not one of the allowed
 *			ones (BY_INODE: the filesystem of @dir_fd, overlayfs
 *			included: its st_dev is anonymous, use BY_FD)
 *	ENOENT		BY_INODE: no deleted regular file @ino of @dev is in
 *			memory (its last holder let go, or the inode is not
 *			a deleted regular file)
 *	ESTALE		BY_INODE with FRELINK_GENERATION: the deleted file
 *			@ino of @dev has another generation, it is not the
 *			file identified
 *	EEXIST		@name already exists in @dir_fd
 *	EROFS		a read-only mount is in the way: the directory's
 *			mount or filesystem, or (BY_FD) the mount @src_fd was
 *			opened through (a file seen read-only does not gain
 *			a name through a writable mount)
 *	EBUSY		the filesystem is frozen (fsfreeze, FIFREEZE);
 *			nothing waited, retry after the thaw
 *	ENOLINK		the file was created with O_TMPFILE | O_EXCL, which
 *			promises it never gets a name (also an O_TMPFILE that
 *			its holder linked and deleted again while its first
 *			descriptor is open: the kernel cannot tell the two apart)
 * Other errors come unchanged from the kernel or the filesystem: ENOTTY
 * (unknown ioctl), EFAULT (bad pointer), EINTR (killed while waiting),
 * ENOSPC, EDQUOT, EIO; vfs_link() also gives EPERM for an immutable or
 * append-only file or directory, EPERM as linkat() does with
 * fs.protected_hardlinks (another user's file, the caller without
 * CAP_FOWNER and without read and write access to it; applied as if the
 * sysctl were 1), EACCES when a security module (SELinux,
 * Smack) refuses the link, and ENOENT when the directory itself was
 * deleted.  EBADF also when another thread replaced @dir_fd during the call.
 * The path-based link hook of AppArmor and TOMOYO (security_path_link()) is
 * not exported to modules and is not called.
 */
struct frelink_relink {
	__u32	flags;
	__s32	src_fd;
	__s32	dir_fd;
	__u32	reserved0;
	__u64	dev;
	__u64	ino;
	__u64	generation;
	__u64	reserved[3];
	char	name[FRELINK_NAME_SIZE];
};

/**
 * struct frelink_identify - argument of FRELINK_IOC_IDENTIFY
 * @dir_fd:	a directory on the inode's filesystem (O_PATH is fine)
 * @flags:	must be zero
 * @dev:	st_dev as stat(2) reports it (glibc makedev() encoding)
 * @ino:	st_ino
 * @generation:	out: the inode's generation (i_generation); in: zero
 * @reserved:	must be zero
 *
 * The generation of the deleted in-memory regular file @ino of @dev, found
 * as FRELINK_IOC_RELINK finds it BY_INODE, for a file that no descriptor
 * reaches (a loop device's backing file, a swap file), so that userspace
 * cannot ask FS_IOC_GETVERSION.  Passed back with FRELINK_GENERATION, it
 * makes a later relink refuse (ESTALE) a file that got the inode number
 * after this one was freed.  ext4, xfs and tmpfs draw it at random per
 * inode; btrfs uses the creating transaction, shared by files created
 * together (but btrfs hands out a freed inode number again only after a
 * remount).
 *
 * Errors: EPERM (no CAP_SYS_ADMIN), EINVAL (non-zero flags, generation or
 * reserved, dev 0), EBADF, ENOTDIR, EOPNOTSUPP, EXDEV, ENOENT as with
 * BY_INODE, EFAULT.
 */
struct frelink_identify {
	__s32	dir_fd;
	__u32	flags;
	__u64	dev;
	__u64	ino;
	__u64	generation;
	__u64	reserved[4];
};

/* Which holders FRELINK_IOC_HELD reports: held.kinds, held records' kind */
#define FRELINK_HELD_FD		0x01U	/* an open file descriptor */
#define FRELINK_HELD_MMAP	0x02U	/* a file mapping (one record per VMA) */
#define FRELINK_HELD_EXE	0x04U	/* the process's executable */
#define FRELINK_HELD_CWD	0x08U	/* its working directory */
#define FRELINK_HELD_ROOT	0x10U	/* its root directory */
#define FRELINK_HELD_ALL	0x1fU

/* record flags */
#define FRELINK_HELD_NFS_RENAMED 0x1U	/* NFS "silly rename": .nfsXXXX, live */

/* held.flags */
#define FRELINK_HELD_SPLIT	0x1U	/* a process's records may span calls */

/**
 * struct frelink_held_record - one holder of a deleted file, in the buffer
 * @rec_len:	bytes of this record including @path and padding (a multiple
 *		of 8): the next record starts @rec_len bytes further
 * @kind:	one FRELINK_HELD_* bit
 * @pid:	the process (thread group id) as the caller's pid namespace
 *		sees it, also for the handles of its other threads
 * @fd:		FRELINK_HELD_FD: the descriptor number; else -1
 * @flags:	FRELINK_HELD_NFS_RENAMED or 0
 * @start:	FRELINK_HELD_MMAP: first address of the mapping;
 *		FRELINK_HELD_FD: 0 for the fd table /proc/PID/fd shows, else
 *		the tid TID of the thread whose table holds it, shown as
 *		/proc/PID/task/TID/fd/N (a thread cloned without CLONE_FILES,
 *		or the process's table when its main thread exited); else 0
 * @end:	FRELINK_HELD_MMAP: the address after it; else 0
 * @dev, @ino, @mode, @nlink, @uid, @gid, @size, @blocks, @mtime_sec,
 * @mtime_nsec:	what fstat(2) of the handle reports (vfs_getattr(); @dev
 *		in glibc makedev() encoding, ids in the caller's user
 *		namespace), as the kernel has it cached: on FUSE and network
 *		filesystems the server is not asked (AT_STATX_DONT_SYNC), so
 *		size and mtime may lag behind what stat(2) would fetch
 * @open_flags:	FRELINK_HELD_FD: the file's open flags, as "flags" in
 *		/proc/PID/fdinfo/N but without O_CLOEXEC; else 0
 * @pos:	FRELINK_HELD_FD: the file position, as "pos" in fdinfo; else 0
 * @path:	the handle's path as readlink(2) of /proc/PID/fd/N (or
 *		map_files, exe, cwd, root) gives it to the caller, ending in
 *		" (deleted)" for an unlinked file (a mapping: as
 *		/proc/PID/maps shows it, an overlay's path and st_dev, not
 *		its layer's); NUL-terminated
 *
 * A record is written for every handle whose dentry is unlinked or, on NFS,
 * silly-renamed: @nlink says whether the file is deleted (0) or still named.
 */
struct frelink_held_record {
	__u16	rec_len;
	__u16	kind;
	__s32	pid;
	__s32	fd;
	__u32	flags;
	__u64	start;
	__u64	end;
	__u64	dev;
	__u64	ino;
	__u32	mode;
	__u32	nlink;
	__u32	uid;
	__u32	gid;
	__u64	size;
	__u64	blocks;
	__s64	mtime_sec;
	__u32	mtime_nsec;
	__u32	open_flags;
	__s64	pos;
	char	path[];
};

/**
 * struct frelink_held - argument of FRELINK_IOC_HELD
 * @buf:	user address of the buffer that receives the records
 * @buf_size:	its size in bytes
 * @kinds:	FRELINK_HELD_* bits of the holders to report, at least one
 * @next_pid:	in: the first pid to look at (0: from the start); out: the
 *		pid to pass next time, 0 when every process was seen
 * @used:	out: bytes of records written
 * @processes:	out: processes (thread groups) looked at
 * @fds:	out: open descriptors looked at
 * @flags:	FRELINK_HELD_SPLIT or 0
 * @next_kind:	with FRELINK_HELD_SPLIT, in: where in process @next_pid to
 *		go on (0: at its start), the kind of its next record; out:
 *		set when the buffer filled inside process @next_pid, else 0.
 *		Without the flag: 0
 * @next_at:	in and out with @next_kind: FRELINK_HELD_FD the record's
 *		@start (its table's tid) << 32 | the descriptor number,
 *		FRELINK_HELD_MMAP the mapping's start address to go on at; 0
 *		for the other kinds
 * @reserved:	must be zero
 *
 * Walks the processes of the caller's pid namespace from @next_pid on, in
 * pid order, and writes a record for each handle on a deleted file: no
 * per-descriptor text or system call in userspace.  A process's records
 * come in the order exe, cwd, root, fd (by table, then number), mmap (by
 * address).  Its fd tables: the one /proc/PID/fd shows, then those of
 * threads cloned without CLONE_FILES, each table once, by tid.  When the
 * main thread exited (a zombie leader), a live thread's mm, fd table, cwd
 * and root are the process's.
 * Without FRELINK_HELD_SPLIT the buffer receives whole processes only;
 * when the next one does not fit, the call returns with @next_pid set to
 * it.  With it, a buffer that fills inside a process after some records
 * ends the call there: pass @next_pid, @next_kind and @next_at back as
 * they came, the process goes on at that descriptor or mapping (as a
 * re-read of /proc/PID/fd goes on at a position: what changed meanwhile
 * before it is not seen again).  @processes counts a process in the call
 * that writes its last records; @fds each descriptor once.  If process
 * @next_pid is gone, the walk goes on at the next one from its start.
 * Like a read of /proc, it is no snapshot:
 * processes may come and go meanwhile.  Memory-less processes (kernel
 * threads, zombies) have no mappings and no executable.
 *
 * Access: where /proc/PID/fd and map_files ask ptrace_may_access(task,
 * PTRACE_MODE_READ_FSCREDS) per process, which modules cannot call (it,
 * security_ptrace_access_check() and mm_access() are not exported), the
 * listing requires CAP_SYS_PTRACE of the caller: that capability passes
 * the check's capability part for every process, but a security module's
 * ptrace hook (Yama, SELinux, AppArmor) is not consulted.
 *
 * Errors: EPERM (the caller lacks CAP_SYS_ADMIN or CAP_SYS_PTRACE), EINVAL
 * (no or unknown kinds or flags, non-zero reserved fields, @next_pid
 * negative, a buffer over 1 GiB, @next_kind or @next_at set without
 * FRELINK_HELD_SPLIT or @next_pid, @next_kind not one kind, @next_at set
 * for exe, cwd or root), EOVERFLOW (the records of process @next_pid alone
 * do not fit in @buf_size, with FRELINK_HELD_SPLIT its next record alone:
 * retry with a larger buffer; @next_pid, @next_kind and @next_at are as
 * they were passed), EFAULT, EINTR (killed), ENOMEM.
 */
struct frelink_held {
	__u64	buf;
	__u32	buf_size;
	__u32	kinds;
	__s32	next_pid;
	__u32	used;
	__u32	processes;
	__u32	fds;
	__u32	flags;
	__u32	next_kind;
	__u64	next_at;
	__u64	reserved[2];
};

/* 0xF4 is unassigned in Documentation/userspace-api/ioctl/ioctl-number.rst */
#define FRELINK_IOC_MAGIC	0xF4
#define FRELINK_IOC_RELINK	_IOW(FRELINK_IOC_MAGIC, 0x01, struct frelink_relink)
#define FRELINK_IOC_HELD	_IOWR(FRELINK_IOC_MAGIC, 0x02, struct frelink_held)
#define FRELINK_IOC_IDENTIFY	_IOWR(FRELINK_IOC_MAGIC, 0x03, \
				      struct frelink_identify)

#endif /* _UAPI_LINUX_FRELINK_H */
