/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel APIs frelink uses that differ between the kernels it
 * supports (Debian 12's 6.1, Debian 13's 6.12, 7.x).  Which variant a kernel
 * has is detected from its headers at build time, see scripts/detect-compat.sh.
 */
#ifndef FRELINK_COMPAT_H
#define FRELINK_COMPAT_H

#include <linux/fs.h>
#include <linux/mount.h>
#include <linux/namei.h>

#include "compat-config.h"

#ifdef FRELINK_HAVE_MNT_IDMAP
#define frelink_mnt_idmap(mnt)	mnt_idmap(mnt)
#else
#define frelink_mnt_idmap(mnt)	mnt_user_ns(mnt)
#endif

#ifdef FRELINK_HAVE_START_CREATING_PATH
#define frelink_start_creating_path	start_creating_path
#define frelink_end_creating_path	end_creating_path
#else
#define frelink_start_creating_path	kern_path_create
#define frelink_end_creating_path	done_path_create
#endif

/* All three require inode->i_lock to be held. */
#ifdef FRELINK_HAVE_INODE_STATE_ACCESSORS
#define frelink_inode_state(inode)		inode_state_read(inode)
#define frelink_inode_state_set(inode, flags)	inode_state_set(inode, flags)
#define frelink_inode_state_clear(inode, flags)	inode_state_clear(inode, flags)
#else
static inline unsigned long frelink_inode_state(struct inode *inode)
{
	lockdep_assert_held(&inode->i_lock);
	return inode->i_state;
}

static inline void frelink_inode_state_set(struct inode *inode,
					   unsigned long flags)
{
	lockdep_assert_held(&inode->i_lock);
	inode->i_state |= flags;
}

static inline void frelink_inode_state_clear(struct inode *inode,
					     unsigned long flags)
{
	lockdep_assert_held(&inode->i_lock);
	inode->i_state &= ~flags;
}
#endif

#endif /* FRELINK_COMPAT_H */
