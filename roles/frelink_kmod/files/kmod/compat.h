/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The few kernel APIs frelink uses that differ between the kernels it
 * supports (Debian 11's 5.10, Debian 12's 6.1, Debian 13's 6.12, 7.x).
 * Which variant a kernel has is decided by compile probes at build time,
 * see scripts/detect-compat.sh.
 */
#ifndef FRELINK_COMPAT_H
#define FRELINK_COMPAT_H

#include <linux/dcache.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/mm_types.h>
#include <linux/mount.h>
#include <linux/pid_namespace.h>
#include <linux/rcupdate.h>
#include <linux/namei.h>

#include "compat-config.h"

#ifdef FRELINK_HAVE_FILELOCK_H
#include <linux/filelock.h>
#endif

/*
 * vfs_link(), inode_owner_or_capable() and inode_permission() take the
 * mount's idmap (6.12, 7.x), its user namespace (6.1) or nothing (5.10, no
 * idmapped mounts).
 */
#if defined(FRELINK_HAVE_MNT_IDMAP) || defined(FRELINK_HAVE_MNT_USER_NS)
#ifdef FRELINK_HAVE_MNT_IDMAP
#define frelink_mnt_idmap(mnt)	mnt_idmap(mnt)
#else
#define frelink_mnt_idmap(mnt)	mnt_user_ns(mnt)
#endif
#define frelink_vfs_link(old, mnt, dir, new, deleg) \
	vfs_link(old, frelink_mnt_idmap(mnt), dir, new, frelink_deleg_arg(deleg))
#define frelink_inode_owner_or_capable(mnt, inode) \
	inode_owner_or_capable(frelink_mnt_idmap(mnt), inode)
#define frelink_inode_permission(mnt, inode, mask) \
	inode_permission(frelink_mnt_idmap(mnt), inode, mask)
#else
#define frelink_vfs_link(old, mnt, dir, new, deleg) \
	vfs_link(old, dir, new, frelink_deleg_arg(deleg))
#define frelink_inode_owner_or_capable(mnt, inode) \
	inode_owner_or_capable(inode)
#define frelink_inode_permission(mnt, inode, mask) \
	inode_permission(inode, mask)
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

/* the real dentry that holds the data of an overlayfs file */
#ifdef FRELINK_HAVE_D_REAL_TYPE
#define frelink_d_real_data(dentry)	d_real(dentry, D_REAL_DATA)
#else
#define frelink_d_real_data(dentry)	d_real(dentry, NULL)
#endif

/*
 * An NFS delegation to break before linking: vfs_link() and
 * try_break_deleg() fill it in, break_deleg_wait() waits and drops it.
 * 6.1 and 6.12 pass a struct inode **, 7.2 a struct delegated_inode *.
 */
#ifdef FRELINK_HAVE_DELEGATED_INODE
struct frelink_deleg {
	struct delegated_inode di;
};

static inline struct delegated_inode *frelink_deleg_arg(struct frelink_deleg *d)
{
	return &d->di;
}

static inline bool frelink_is_delegated(struct frelink_deleg *d)
{
	return is_delegated(&d->di);
}
#else
struct frelink_deleg {
	struct inode *di;
};

static inline struct inode **frelink_deleg_arg(struct frelink_deleg *d)
{
	return &d->di;
}

static inline bool frelink_is_delegated(struct frelink_deleg *d)
{
	return d->di;
}
#endif

#ifdef FRELINK_HAVE_TRY_BREAK_DELEG_FLAGS
#define frelink_try_break_deleg(inode, d) \
	try_break_deleg(inode, 0, frelink_deleg_arg(d))
#else
#define frelink_try_break_deleg(inode, d) \
	try_break_deleg(inode, frelink_deleg_arg(d))
#endif
#define frelink_break_deleg_wait(d)	break_deleg_wait(frelink_deleg_arg(d))

/*
 * mm->exe_file with a reference, as get_mm_exe_file() (not exported) takes
 * it: 6.12 and 7.2 give get_file_rcu() the __rcu pointer, 6.1 the file.
 */
static inline struct file *frelink_mm_exe_file(struct mm_struct *mm)
{
	struct file *exe;

	rcu_read_lock();
#ifdef FRELINK_HAVE_GET_FILE_RCU_PTR
	exe = get_file_rcu(&mm->exe_file);
#else
	exe = rcu_dereference(mm->exe_file);
	if (exe && !get_file_rcu(exe))
		exe = NULL;
#endif
	rcu_read_unlock();
	return exe;
}

/*
 * Walking a process's mappings under mmap_lock from address @addr on (the
 * first mapping that ends after it): the maple tree's iterator (6.1 and
 * later), the list of vm_next from find_vma() before it (5.10).
 */
#ifdef FRELINK_HAVE_VMA_ITERATOR
#define FRELINK_VMA_ITERATOR(name, mm, addr)	VMA_ITERATOR(name, mm, addr)
#define frelink_for_each_vma(name, vma)	for_each_vma(name, vma)
#else
struct frelink_vma_iter {
	struct vm_area_struct *next;
};

#define FRELINK_VMA_ITERATOR(name, mm, addr) \
	struct frelink_vma_iter name = { .next = find_vma(mm, addr) }

static inline struct vm_area_struct *
frelink_vma_next(struct frelink_vma_iter *iter)
{
	struct vm_area_struct *vma = iter->next;

	if (vma)
		iter->next = vma->vm_next;
	return vma;
}

#define frelink_for_each_vma(name, vma) \
	for (; ((vma) = frelink_vma_next(&(name))) != NULL;)
#endif

/*
 * __iget() under i_lock: an inline from 6.12 on; 6.1 exports the function
 * of fs/inode.c, 5.10 does not, so its body (one increment) for both.
 */
#ifdef FRELINK_HAVE_INLINE_IGET
#define frelink_iget(inode)	__iget(inode)
#else
static inline void frelink_iget(struct inode *inode)
{
	lockdep_assert_held(&inode->i_lock);
	atomic_inc(&inode->i_count);
}
#endif

/*
 * find_ge_pid() of kernel/pid.c, under rcu_read_lock(): the same lookup in
 * the namespace's idr, as 5.10 does not export it.
 */
static inline struct pid *frelink_find_ge_pid(int nr, struct pid_namespace *ns)
{
	return idr_get_next(&ns->idr, &nr);
}

/*
 * The path /proc/PID/maps and map_files show for a mapped file: 6.12 and 7.2
 * keep the layer's real path in an overlayfs mapping's f_path (a backing
 * file) and the overlay's one apart; 6.1 has only f_path, the user's path.
 */
#ifdef FRELINK_HAVE_FILE_USER_PATH
#define frelink_file_user_path(file)	file_user_path(file)
#else
#define frelink_file_user_path(file)	(&(file)->f_path)
#endif

/*
 * vfs_link() of 7.2 (not 6.1, 6.12), which has directory delegations,
 * breaks the directory's delegation before the inode's; without them there
 * is none to break.
 */
#ifdef FRELINK_HAVE_LEASE_BREAK_DIR_CREATE
#define frelink_try_break_dir_deleg(dir, d) \
	try_break_deleg(dir, LEASE_BREAK_DIR_CREATE, frelink_deleg_arg(d))
#else
static inline int frelink_try_break_dir_deleg(struct inode *dir,
					      struct frelink_deleg *d)
{
	return 0;
}
#endif

#endif /* FRELINK_COMPAT_H */
