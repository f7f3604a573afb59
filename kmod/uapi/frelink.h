/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * frelink - give a deleted but still open inode a name again.
 *
 * Userspace ABI of the /dev/frelink misc device.  The Python mirror in
 * plugins/module_utils/kmod_abi.py must follow every change here; the unit
 * test tests/unit/test_kmod_abi.py compiles this header and compares.
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

/**
 * struct frelink_relink - argument of FRELINK_IOC_RELINK
 * @flags:	FRELINK_BY_FD or FRELINK_BY_INODE, nothing else
 * @src_fd:	BY_FD: a descriptor of the deleted file, e.g. opened on
 *		/proc/PID/fd/N, /proc/PID/map_files/A-B or /proc/PID/exe
 *		(O_PATH is fine; on overlayfs open it O_PATH or read-only,
 *		an open for writing copies a lower file up); must be -1
 *		with BY_INODE
 * @dir_fd:	directory that receives the name (O_PATH is fine)
 * @dev:	BY_INODE: st_dev as stat(2) reports it (glibc makedev()
 *		encoding); must be 0 with BY_FD
 * @ino:	BY_INODE: st_ino; must be 0 with BY_FD
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
 *			form does not use, dev 0 with BY_INODE
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
 *	EEXIST		@name already exists in @dir_fd
 *	EROFS		a read-only mount is in the way: the directory's
 *			mount or filesystem, or (BY_FD) the mount @src_fd was
 *			opened through (a file seen read-only does not gain
 *			a name through a writable mount)
 *	EBUSY		the filesystem is frozen (fsfreeze, FIFREEZE);
 *			nothing waited, retry after the thaw
 * Other errors come unchanged from the kernel or the filesystem: ENOTTY
 * (unknown ioctl), EFAULT (bad pointer), EINTR (killed while waiting),
 * ENOSPC, EDQUOT, EIO; vfs_link() also gives EPERM for an immutable or
 * append-only file or directory, EACCES when a security module (SELinux,
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
	__u64	reserved[4];
	char	name[FRELINK_NAME_SIZE];
};

/* 0xF4 is unassigned in Documentation/userspace-api/ioctl/ioctl-number.rst */
#define FRELINK_IOC_MAGIC	0xF4
#define FRELINK_IOC_RELINK	_IOW(FRELINK_IOC_MAGIC, 0x01, struct frelink_relink)

#endif /* _UAPI_LINUX_FRELINK_H */
