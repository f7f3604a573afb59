/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The filesystems frelink relinks on, by superblock magic: exactly those
 * whose ->link() is proven to take an inode with link count 0 off its
 * orphan list (tests/guest/test_kmod.py).  Everything else is refused with
 * EOPNOTSUPP.  plugins/module_utils/_frelink/kmod_abi.py has the same table
 * (RELINK_MAGICS); tests/unit/plugins/module_utils/_frelink/test_kmod_abi.py compiles this file and
 * compares the two.
 */
#ifndef FRELINK_ALLOWLIST_H
#define FRELINK_ALLOWLIST_H

#include <linux/magic.h>

static const unsigned long frelink_magics[] = {
	EXT4_SUPER_MAGIC,	/* ext4, also when it mounts ext2 and ext3 */
	XFS_SUPER_MAGIC,
	BTRFS_SUPER_MAGIC,
	TMPFS_MAGIC,
};

/*
 * BY_FD only: a file on overlayfs is relinked as its upper layer's inode,
 * which must be on one of the filesystems above.
 */
#define FRELINK_VIA_UPPER_MAGIC	OVERLAYFS_SUPER_MAGIC

#endif /* FRELINK_ALLOWLIST_H */
