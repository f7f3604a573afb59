// SPDX-License-Identifier: GPL-2.0-only
/*
 * frelink - give a deleted but still open inode a name again.
 *
 * Userspace cannot do this: linkat() refuses an inode whose link count is 0
 * unless it carries I_LINKABLE, which only O_TMPFILE files get.  frelink sets
 * that flag the way linkat() relies on it for O_TMPFILE and calls vfs_link(),
 * so the filesystem's own ->link() takes the inode off its orphan list.  The
 * ABI is described in uapi/frelink.h.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/dcache.h>
#include <linux/cred.h>
#include <linux/err.h>
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/fs_struct.h>
#include <linux/fsnotify.h>
#include <linux/kdev_t.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/mutex.h>
#include <linux/namei.h>
#include <linux/path.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/stat.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "allowlist.h"
#include "compat.h"
#include "uapi/frelink.h"

/*
 * Serialises relinks: it keeps the btrfs commit and the link of one request
 * together, and it makes "exactly one of two relinks of one inode wins"
 * hold.  frelink_link() calls vfs_link() first, which links any inode that
 * has a name, so the link count must be known to be 0 before: checked under
 * this mutex, it cannot become 1 meanwhile, since nothing but a relink
 * names an inode with link count 0 (the link count check of frelink_link()
 * under the inode lock is what keeps a concurrent linkat() out).  Taken
 * inside the directory lock, never while waiting for a frozen filesystem
 * (see frelink_relink_dentry()).
 */
static DEFINE_MUTEX(frelink_mutex);

static int frelink_check_request(const struct frelink_relink *req)
{
	size_t len;
	int i;

	if (req->reserved0)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(req->reserved); i++)
		if (req->reserved[i])
			return -EINVAL;

	switch (req->flags) {
	case FRELINK_BY_FD:
		if (req->dev || req->ino || req->generation)
			return -EINVAL;
		break;
	case FRELINK_BY_INODE:
		if (req->generation)
			return -EINVAL;
		fallthrough;
	case FRELINK_BY_INODE | FRELINK_GENERATION:
		/* i_generation is a u32 */
		if (req->src_fd != -1 || !req->dev || req->generation > U32_MAX)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}

	len = strnlen(req->name, sizeof(req->name));
	if (len == sizeof(req->name))
		return -ENAMETOOLONG;
	if (!len || strchr(req->name, '/') ||
	    !strcmp(req->name, ".") || !strcmp(req->name, ".."))
		return -EILSEQ;
	return 0;
}

/* st_dev of @path as stat(2) reports it (on btrfs: of the subvolume) */
static int frelink_stat_dev(const struct path *path, u64 *dev)
{
	struct kstat stat;
	int err;

	err = vfs_getattr_nosec(path, &stat, STATX_INO, AT_STATX_DONT_SYNC);
	if (err)
		return err;
	*dev = huge_encode_dev(stat.dev);
	return 0;
}

/*
 * Return a dentry for @inode if its st_dev is @dev, NULL if it is not, or an
 * error.  The caller keeps its own reference to @inode.
 */
static struct dentry *frelink_alias_on_dev(struct vfsmount *mnt,
					   struct inode *inode, u64 dev)
{
	struct path path = { .mnt = mnt };
	u64 inode_dev;
	int err;

	/*
	 * The dentry of a deleted file is unhashed: d_find_alias() skips it,
	 * d_obtain_alias() does not, and if the last holder has closed it
	 * meanwhile, it makes a new one from our reference, so the inode
	 * cannot go away under us.  d_obtain_alias() consumes a reference.
	 */
	ihold(inode);
	path.dentry = d_obtain_alias(inode);
	if (IS_ERR(path.dentry))
		return path.dentry;

	err = frelink_stat_dev(&path, &inode_dev);
	if (!err && inode_dev == dev)
		return path.dentry;
	dput(path.dentry);
	return err ? ERR_PTR(err) : NULL;
}

/*
 * Find the deleted regular file @ino with st_dev @dev among the in-memory
 * inodes of @mnt's superblock.  ilookup() is no use: xfs, btrfs and tmpfs
 * do not keep their inodes in the inode hash.  The list may be huge, so
 * like drop_pagecache_sb() we reschedule with the lock dropped, holding a
 * reference to the current inode so that it stays on the list.  One btrfs
 * superblock has several subvolumes with their own inode numbers, hence
 * the st_dev check.
 */
static struct dentry *frelink_find_inode(struct vfsmount *mnt, u64 ino,
					 u64 dev)
{
	struct super_block *sb = mnt->mnt_sb;
	struct inode *inode, *held = NULL;
	struct dentry *found = NULL;

	spin_lock(&sb->s_inode_list_lock);
	list_for_each_entry(inode, &sb->s_inodes, i_sb_list) {
		/*
		 * Only a deleted regular file is a candidate: nothing else is
		 * ever pinned, given a dentry or asked for its attributes.
		 * Both fields are read without the inode lock; the link count
		 * is checked again under it before linking.
		 */
		bool candidate = inode->i_ino == ino &&
				 S_ISREG(READ_ONCE(inode->i_mode)) &&
				 !READ_ONCE(inode->i_nlink);

		if (!candidate && !need_resched())
			continue;

		spin_lock(&inode->i_lock);
		if (frelink_inode_state(inode) &
		    (I_NEW | I_FREEING | I_WILL_FREE)) {
			spin_unlock(&inode->i_lock);
			continue;
		}
		frelink_iget(inode);
		spin_unlock(&inode->i_lock);
		spin_unlock(&sb->s_inode_list_lock);

		iput(held);
		held = inode;

		if (candidate) {
			found = frelink_alias_on_dev(mnt, inode, dev);
			if (found)
				goto out;
		}

		cond_resched();
		spin_lock(&sb->s_inode_list_lock);
	}
	spin_unlock(&sb->s_inode_list_lock);
out:
	iput(held);
	return found;
}

/*
 * Is @inode another file than the one the caller identified?  (dev, ino)
 * alone names whatever deleted file holds the number now; the generation,
 * which the caller got from FRELINK_IOC_IDENTIFY, tells a file that took a
 * freed number apart.  i_generation changes only by FS_IOC_SETVERSION
 * (ext4), under the inode lock.
 */
static bool frelink_stale(const struct frelink_relink *req,
			  const struct inode *inode)
{
	return (req->flags & FRELINK_GENERATION) &&
	       READ_ONCE(inode->i_generation) != req->generation;
}

/* Is @sb one of the filesystems of allowlist.h? */
static bool frelink_fs_allowed(const struct super_block *sb)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(frelink_magics); i++)
		if (sb->s_magic == frelink_magics[i])
			return true;
	return false;
}

static int frelink_check_inode(struct inode *inode, struct inode *dir)
{
	if (!S_ISREG(inode->i_mode))
		return -EMEDIUMTYPE;
	if (!frelink_fs_allowed(inode->i_sb))
		return -EOPNOTSUPP;
	if (inode->i_sb != dir->i_sb)
		return -EXDEV;
	return 0;
}

/*
 * btrfs: unlink() of a file with one link may only schedule the deletion of
 * its inode ref item (BTRFS_DELAYED_NODE_DEL_IREF): the delayed-inode code
 * deletes it later, assuming it is the only ref item of the inode.  If we
 * link before that happens, the inode has a second ref item (or, in the
 * same directory, the new name is added to the old item), and the delayed
 * deletion removes the ref of the new name: "unresolved ref ... no inode
 * ref" in btrfs check, and the next unlink aborts the transaction.  linkat()
 * of an O_TMPFILE never meets this, such an inode never had a ref.
 *
 * Committing the transaction runs all delayed items first.  That costs the
 * metadata dirtied since the last commit, independent of the file's size,
 * and is cheaper than sync_filesystem(), which also writes back every dirty
 * page of the filesystem.
 *
 * ->sync_fs() is called with s_umount held shared, as every caller in the
 * kernel calls it (sync_filesystem(), freeze_super(), syncfs(2)), and with
 * the directory locked, as btrfs itself commits under a locked directory
 * when it creates a snapshot.  s_umount is only tried, never waited for:
 * its order against the freeze protection that the mounts' write access
 * takes is not the same in every kernel (6.1's freeze_super() holds s_umount
 * while it waits for writers; since 6.6 it lets it go first, "to preserve
 * sb_start_write -> s_umount ordering"), and taking it before the write
 * access was reported by lockdep on 7.2 as the inverse of freeze_super().
 * A trylock waits for nothing, so it cannot close a cycle in either order;
 * when it fails, someone holds s_umount exclusively (a freeze, a remount,
 * an unmount is starting) and the request is refused with EBUSY, nothing
 * changed, as a frozen filesystem is.
 */
static bool frelink_needs_flush(struct super_block *sb)
{
#ifdef FRELINK_TEST_SKIP_BTRFS_COMMIT
	/* negative control for tests/guest/test_kmod.py; never set otherwise */
	return false;
#endif
	return !strcmp(sb->s_type->name, "btrfs") && sb->s_op->sync_fs;
}

static int frelink_flush_delayed_unlink(struct super_block *sb)
{
	lockdep_assert_held_read(&sb->s_umount);
	if (sb_rdonly(sb))
		return 0;
	return sb->s_op->sync_fs(sb, 1);
}

#ifdef FRELINK_TEST_UNLOCKED_LINKABLE
/*
 * Negative control for the race test of tests/guest/test_kmod.py, never
 * built otherwise: the scheme of frelink 0.1.0, I_LINKABLE set outside the
 * inode lock before vfs_link(), with the window widened to 2 ms so that a
 * concurrent linkat() of the same inode reliably falls into it.
 */
static int frelink_link(const struct frelink_relink *req,
			struct dentry *old_dentry, const struct path *dir,
			struct dentry *new_dentry, struct frelink_deleg *deleg)
{
	struct inode *inode = d_inode(old_dentry);
	int err;

	if (frelink_stale(req, inode))
		return -ESTALE;
	spin_lock(&inode->i_lock);
	frelink_inode_state_set(inode, I_LINKABLE);
	spin_unlock(&inode->i_lock);
	usleep_range(2000, 2100);
	err = frelink_vfs_link(old_dentry, dir->mnt, d_inode(dir->dentry),
			       new_dentry, deleg);
	if (err) {
		spin_lock(&inode->i_lock);
		frelink_inode_state_clear(inode, I_LINKABLE);
		spin_unlock(&inode->i_lock);
	}
	return err;
}
#else
/*
 * Was @dentry made by vfs_tmpfile() and never given a name?  Call with the
 * inode locked.
 *
 * open(O_TMPFILE | O_EXCL) promises that the file can never be linked:
 * vfs_tmpfile() then leaves I_LINKABLE off.  The inode of such a file is in
 * the very state of a deleted file (link count 0, no I_LINKABLE), the open
 * file's f_flags do not tell either (do_dentry_open() clears O_EXCL), and
 * by fd the module sees a descriptor of its caller, not the holder's.  What
 * differs is the dentry.  d_tmpfile() names the dentry of an O_TMPFILE
 * "#<inode number>" and makes it positive without ever hashing it; every
 * other positive dentry of a regular file that is unhashed and not a root
 * (d_unlinked()) lost a name, and on the way vfs_unlink() or vfs_rename()
 * marked it with dont_mount() (DCACHE_CANT_MOUNT).  BY_INODE, the dentry is
 * the one d_obtain_alias() found, the O_TMPFILE's own one while it is held;
 * a disconnected alias it may make is a root, not d_unlinked().
 *
 * An O_TMPFILE without O_EXCL that its holder linked (vfs_link() cleared
 * I_LINKABLE) and deleted again while the first descriptor is open looks
 * the same and is refused too: the kernel keeps no other record of O_EXCL.
 */
static bool frelink_never_named(struct dentry *dentry, struct inode *inode)
{
	char tmpname[24];
	bool ret;
	int len;

	len = snprintf(tmpname, sizeof(tmpname), "#%llu", (u64)inode->i_ino);
	spin_lock(&dentry->d_lock);
	ret = d_unlinked(dentry) && !cant_mount(dentry) &&
	      dentry->d_name.len == len &&
	      !memcmp(dentry->d_name.name, tmpname, len);
	spin_unlock(&dentry->d_lock);
	return ret;
}

/*
 * may_linkat() of fs/namei.c, which do_linkat() calls before vfs_link():
 * with fs.protected_hardlinks set, only the owner of the source, a caller
 * with CAP_FOWNER over it, or one that may read and write it (a "safe"
 * source: regular, neither setuid nor setgid-executable) may link it.
 * Neither may_linkat() nor sysctl_protected_hardlinks is exported, so the
 * rule applies as with the sysctl at 1, every distribution's default (with
 * 0, frelink is stricter than linkat()).  Write access to the file itself is
 * not needed (linkat() does not ask for it either): a descriptor opened
 * read-only or O_PATH is fine.  may_linkat()'s EOVERFLOW for ids without a
 * mapping is vfs_link()'s EPERM (HAS_UNMAPPED_ID) here.
 */
static int frelink_may_linkat(struct vfsmount *mnt, struct inode *inode)
{
	/* setgid and group-executable: S_ISGID | S_IXGRP */
	const umode_t setgid_exec = S_ISGID | 0010;
	umode_t mode = inode->i_mode;

	if (frelink_inode_owner_or_capable(mnt, inode))
		return 0;
	if (S_ISREG(mode) && !(mode & S_ISUID) &&
	    (mode & setgid_exec) != setgid_exec &&
	    !frelink_inode_permission(mnt, inode, MAY_READ | MAY_WRITE))
		return 0;
	return -EPERM;
}

/*
 * Link @old_dentry, whose link count is 0, as the negative @new_dentry in
 * @dir, whose inode the caller has locked (start_creating_path()).
 *
 * vfs_link() refuses an inode with link count 0 unless it carries
 * I_LINKABLE, and checks that under the inode's lock.  Setting the flag and
 * then calling vfs_link() (frelink 0.1.0) leaves a window in which a
 * concurrent linkat() of the same inode, e.g. the holder's own
 * linkat("/proc/self/fd/N", AT_SYMLINK_FOLLOW), sees the flag, links the
 * inode first, and our link then adds a second name to a file that already
 * has one; if our vfs_link() fails, the holder's name stays although frelink
 * refused.  vfs_link() takes the inode lock itself, so it cannot be called
 * with the lock held, and the flag must never be visible outside the lock.
 *
 * So the flag (which ->link() needs: inc_nlink() warns about a link count 0
 * inode without it) is set, used and cleared inside one inode_lock()
 * section, in the lock order of vfs_link() (parent directory, then the
 * source inode), and every vfs_link() elsewhere, which reads the flag only
 * under that lock, sees either link count 0 without the flag (ENOENT) or
 * the link count 1 after our link (and links a file that has a name, as it
 * may).  The link count, the O_TMPFILE | O_EXCL promise and the directory
 * are checked in the same section, so neither a concurrent frelink nor the
 * holder's own linkat() can slip in between a check and the link.
 *
 * The checks of vfs_link() before its lock (may_create() with
 * audit_inode_child(), same superblock, append-only and immutable, unmapped
 * ids, security_inode_link(): SELinux, Smack) are not exported one by one.
 * So vfs_link() runs first without the flag: with every check passed it
 * stops at the link count with ENOENT, having changed nothing.  Whether
 * that ENOENT was the stop at the link count is then decided on the state
 * under the inode lock, not on the errno: the link count still 0 and no
 * I_LINKABLE (with the flag, vfs_link() would have linked, so its ENOENT
 * came from elsewhere and is returned), the directory not deleted (the
 * other ENOENT of may_create()).  An inode that still carries I_LINKABLE
 * (an O_TMPFILE not linked yet, which anyone who reaches it may link) is
 * linked by that first vfs_link() itself.
 *
 * BY_INODE with a generation, the inode must be the one identified
 * (frelink_stale()): checked before the first vfs_link(), which links an
 * inode carrying I_LINKABLE, and again under the inode lock.
 */
static int frelink_link(const struct frelink_relink *req,
			struct dentry *old_dentry, const struct path *dir,
			struct dentry *new_dentry, struct frelink_deleg *deleg)
{
	struct inode *dir_inode = d_inode(dir->dentry);
	struct inode *inode = d_inode(old_dentry);
	bool linkable;
	int err;

	if (frelink_stale(req, inode))
		return -ESTALE;
	/* as do_linkat(): after the directory is locked, before vfs_link() */
	err = frelink_may_linkat(dir->mnt, inode);
	if (err)
		return err;
	err = frelink_vfs_link(old_dentry, dir->mnt, dir_inode, new_dentry,
			       deleg);
	if (err != -ENOENT)
		return err;

	inode_lock(inode);
	spin_lock(&inode->i_lock);
	linkable = frelink_inode_state(inode) & I_LINKABLE;
	spin_unlock(&inode->i_lock);
	/* not the stop at the link count: vfs_link()'s own ENOENT stands */
	if (linkable || IS_DEADDIR(dir_inode))
		goto out_unlock;
	err = -ESTALE;
	if (frelink_stale(req, inode))
		goto out_unlock;
	err = -EMLINK;
	if (inode->i_nlink)
		goto out_unlock;
	err = -ENOLINK;
	if (frelink_never_named(old_dentry, inode))
		goto out_unlock;
	/* as vfs_link(): the directory's delegation (7.2), then the inode's */
	err = frelink_try_break_dir_deleg(dir_inode, deleg);
	if (err)
		goto out_unlock;
	err = frelink_try_break_deleg(inode, deleg);
	if (err)
		goto out_unlock;

	spin_lock(&inode->i_lock);
	frelink_inode_state_set(inode, I_LINKABLE);
	spin_unlock(&inode->i_lock);

	err = dir_inode->i_op->link(old_dentry, dir_inode, new_dentry);

	spin_lock(&inode->i_lock);
	frelink_inode_state_clear(inode, I_LINKABLE);
	spin_unlock(&inode->i_lock);
out_unlock:
	inode_unlock(inode);
	if (!err)
		fsnotify_link(dir_inode, inode, new_dentry);
	return err;
}
#endif

#if defined(FRELINK_TEST_LOCK_INVERSION) || defined(FRELINK_TEST_USE_AFTER_FREE)
/*
 * Negative controls for the debug-kernel judges of tests/guest/test_kmod.py,
 * never built otherwise: after a relink, take the source inode's lock and
 * then frelink_mutex, the reverse of the order of a relink (lockdep must
 * report it), or read a copy of the name after freeing it (KASAN must).
 */
static noinline void frelink_test_judges(struct inode *inode,
					 const char *name)
{
#ifdef FRELINK_TEST_LOCK_INVERSION
	inode_lock(inode);
	mutex_lock(&frelink_mutex);
	mutex_unlock(&frelink_mutex);
	inode_unlock(inode);
#endif
#ifdef FRELINK_TEST_USE_AFTER_FREE
	{
		char *copy = kstrdup(name, GFP_KERNEL);

		kfree(copy);
		OPTIMIZER_HIDE_VAR(copy);
		if (copy)
			pr_info("freed name starts with %d\n", READ_ONCE(copy[0]));
	}
#endif
}
#else
static inline void frelink_test_judges(struct inode *inode, const char *name)
{
}
#endif

/*
 * Write access to @mnt, the mount the source descriptor was opened through,
 * for as long as the link takes: a source seen through a read-only mount
 * must not gain a name through a writable one.  A literal same-mount rule
 * like do_linkat()'s would refuse the common case (the holder is in a
 * container or a PrivateTmp namespace, its mounts are not the caller's), so
 * the rule is: the mount the source was opened through must itself be
 * writable, checked the way the VFS checks it, with the mount's write
 * access (which a remount read-only waits for or fails on), not by reading
 * its flags.  mnt_get_write_access() takes it without the freeze
 * protection, which the directory's mnt_want_write() takes (once: it does
 * not nest).  6.1 does not export it: there mnt_want_write() and
 * mnt_drop_write() check it at one instant, and only a remount read-only
 * of that mount between the check and the link is not excluded (the
 * filesystem itself cannot become read-only: the directory's write access
 * holds it).
 */
static int frelink_src_write_access(struct vfsmount *mnt)
{
	int err = 0;

	if (!mnt)
		return 0;
#ifdef FRELINK_HAVE_MNT_GET_WRITE_ACCESS
	err = mnt_get_write_access(mnt);
#else
	err = mnt_want_write(mnt);
	if (!err)
		mnt_drop_write(mnt);
#endif
	return err;
}

static void frelink_src_write_done(struct vfsmount *mnt)
{
#ifdef FRELINK_HAVE_MNT_GET_WRITE_ACCESS
	if (mnt)
		mnt_put_write_access(mnt);
#endif
}

/*
 * Give @old_dentry the name req->name in the directory @dir_file; BY_FD,
 * @src_mnt is the mount the source was opened through, else NULL.
 *
 * Lock order: the source mount's write access, the directory's write
 * access and inode lock (start_creating_path()), on btrfs s_umount (shared,
 * only tried: see frelink_flush_delayed_unlink()), then frelink_mutex, then
 * the source inode's lock (frelink_link()).  Nothing that waits for a frozen filesystem runs under
 * frelink_mutex, so a relink on a frozen filesystem never stalls relinks
 * elsewhere.  A filesystem frozen (fsfreeze, FIFREEZE) when the request
 * arrives is refused at once with EBUSY instead of sleeping unkillably in
 * mnt_want_write() until the thaw; only a freeze that starts in the
 * instant between that check and mnt_want_write() makes this request wait,
 * as it does linkat().
 */
static int frelink_relink_dentry(const struct frelink_relink *req,
				 struct file *dir_file,
				 struct dentry *old_dentry,
				 struct vfsmount *src_mnt)
{
	struct inode *inode = d_inode(old_dentry);
	struct super_block *sb = inode->i_sb;
	struct frelink_deleg deleg = { };
	struct dentry *new_dentry;
	struct path dir_path;
	bool flush;
	int err;

retry:
	/* cheap early refusal; the check that counts is in frelink_link() */
	if (READ_ONCE(inode->i_nlink))
		return -EMLINK;

	if (!sb_start_write_trylock(sb))
		return -EBUSY;
	sb_end_write(sb);

	err = frelink_src_write_access(src_mnt);
	if (err)
		return err;

	new_dentry = frelink_start_creating_path(req->dir_fd, req->name,
						 &dir_path, 0);
	err = PTR_ERR_OR_ZERO(new_dentry);
	if (err)
		goto out_src;

	/* another thread of the caller replaced dir_fd meanwhile */
	err = -EBADF;
	if (!path_equal(&dir_path, &dir_file->f_path))
		goto out_end;

	flush = frelink_needs_flush(sb);
	err = -EBUSY;
	if (flush && !down_read_trylock(&sb->s_umount))
		goto out_end;
	err = mutex_lock_killable(&frelink_mutex);
	if (err)
		goto out_umount;
	/* final: only a relink, under this mutex, names a link count 0 inode */
	err = -EMLINK;
	if (!READ_ONCE(inode->i_nlink)) {
		err = flush ? frelink_flush_delayed_unlink(sb) : 0;
		if (!err)
			err = frelink_link(req, old_dentry, &dir_path,
					   new_dentry, &deleg);
	}
	mutex_unlock(&frelink_mutex);
out_umount:
	if (flush)
		up_read(&sb->s_umount);
out_end:
	frelink_end_creating_path(&dir_path, new_dentry);
out_src:
	frelink_src_write_done(src_mnt);

	/* an NFS delegation was in the way: wait for it, then retry */
	if (frelink_is_delegated(&deleg)) {
		err = frelink_break_deleg_wait(&deleg);
		if (!err)
			goto retry;
	}
	if (err)
		return err;
	/* %pE: the name is the caller's, it must not forge log lines */
	pr_info("pid %d relinked inode %llu of %s as %*pE\n",
		task_pid_nr(current), (u64)inode->i_ino, sb->s_id,
		(int)strlen(req->name), req->name);
	frelink_test_judges(inode, req->name);
	return 0;
}

/*
 * The dentry to relink for the file open as @src_file: its own, or for a
 * file on overlayfs the upper layer's dentry holding its data (d_real()).
 * An overlay file without upper data yields its lower dentry, which still
 * has its name in the lower layer (EMLINK later) or lives on another
 * filesystem than any directory of the upper one (EXDEV).
 */
static struct dentry *frelink_src_dentry(struct file *src_file)
{
	struct dentry *dentry = src_file->f_path.dentry;

	if (dentry->d_sb->s_magic == FRELINK_VIA_UPPER_MAGIC)
		dentry = frelink_d_real_data(dentry);
	return dget(dentry);
}

/*
 * The deleted regular file @ino with st_dev @dev, found among the in-memory
 * inodes of the filesystem of @dir_file, whose st_dev is @dir_dev.
 */
static struct dentry *frelink_lookup_inode(struct file *dir_file, u64 dir_dev,
					   u64 dev, u64 ino)
{
	struct dentry *dentry;

	/* overlayfs inodes are never searched: its st_dev is anonymous */
	if (!frelink_fs_allowed(dir_file->f_path.dentry->d_sb))
		return ERR_PTR(-EOPNOTSUPP);
	if (dev != dir_dev)
		return ERR_PTR(-EXDEV);
	dentry = frelink_find_inode(dir_file->f_path.mnt, ino, dev);
	return dentry ? dentry : ERR_PTR(-ENOENT);
}

/*
 * The directory open as @fd (O_PATH is fine), with a reference, and its
 * st_dev in @dev; or an error pointer.
 */
static struct file *frelink_get_dir(int fd, u64 *dev)
{
	struct file *dir_file = fget_raw(fd);
	int err;

	if (!dir_file)
		return ERR_PTR(-EBADF);
	err = -ENOTDIR;
	if (d_is_dir(dir_file->f_path.dentry))
		err = frelink_stat_dev(&dir_file->f_path, dev);
	if (!err)
		return dir_file;
	fput(dir_file);
	return ERR_PTR(err);
}

static int frelink_relink(const struct frelink_relink *req)
{
	struct file *src_file = NULL;
	struct dentry *old_dentry;
	struct file *dir_file;
	struct path old_path;
	u64 dir_dev, old_dev;
	int err;

	dir_file = frelink_get_dir(req->dir_fd, &dir_dev);
	if (IS_ERR(dir_file))
		return PTR_ERR(dir_file);

	if (req->flags == FRELINK_BY_FD) {
		/*
		 * Kept until the end: its mount pins the superblock of
		 * old_dentry, which may be another one than dir_fd's (refused
		 * below, but only after looking at it).  A dentry without its
		 * mount outlives a lazily unmounted filesystem ("Dentry still
		 * in use" at its shutdown, found by the hostile fuzzer).
		 */
		src_file = fget_raw(req->src_fd);
		err = -EBADF;
		if (!src_file)
			goto out_dir;
		old_dentry = frelink_src_dentry(src_file);
	} else {
		old_dentry = frelink_lookup_inode(dir_file, dir_dev, req->dev,
						  req->ino);
		err = PTR_ERR_OR_ZERO(old_dentry);
		if (err)
			goto out_dir;
	}

	err = frelink_check_inode(d_inode(old_dentry),
				  d_inode(dir_file->f_path.dentry));
	if (err)
		goto out_old;

	/* same superblock; on btrfs also the same subvolume (st_dev) */
	old_path.mnt = dir_file->f_path.mnt;
	old_path.dentry = old_dentry;
	err = frelink_stat_dev(&old_path, &old_dev);
	if (!err && old_dev != dir_dev)
		err = -EXDEV;
	if (!err)
		err = frelink_relink_dentry(req, dir_file, old_dentry,
					    src_file ? src_file->f_path.mnt : NULL);
out_old:
	dput(old_dentry);
	if (src_file)
		fput(src_file);
out_dir:
	fput(dir_file);
	return err;
}

/* FRELINK_IOC_IDENTIFY: the generation of a deleted in-memory inode */
static int frelink_identify(struct frelink_identify *req)
{
	struct dentry *dentry;
	struct file *dir_file;
	u64 dir_dev;
	int err;

	dir_file = frelink_get_dir(req->dir_fd, &dir_dev);
	if (IS_ERR(dir_file))
		return PTR_ERR(dir_file);
	dentry = frelink_lookup_inode(dir_file, dir_dev, req->dev, req->ino);
	err = PTR_ERR_OR_ZERO(dentry);
	if (err)
		goto out_dir;
	req->generation = READ_ONCE(d_inode(dentry)->i_generation);
	dput(dentry);
out_dir:
	fput(dir_file);
	return err;
}

static long frelink_ioctl_identify(void __user *arg)
{
	struct frelink_identify req;
	int err, i;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.flags || !req.dev || req.generation)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(req.reserved); i++)
		if (req.reserved[i])
			return -EINVAL;
	err = frelink_identify(&req);
	if (!err && copy_to_user(arg, &req, sizeof(req)))
		return -EFAULT;
	return err;
}

/*
 * FRELINK_IOC_HELD: the handles on deleted files of every process, found in
 * the kernel.  A complete scan from userspace costs a readlink() of every
 * /proc/PID/fd entry and a read of every /proc/PID/maps; this looks at the
 * same fd tables and mappings without formatting anything but the few
 * deleted ones.  Nothing is changed, so no lock is held longer than one
 * process's fd table or mappings take to look at.
 */

/* larger than any sane request; keeps @used and rec_len arithmetic small */
#define FRELINK_HELD_MAX_BUF	SZ_1G

/* the shortest record: a one-character path */
#define FRELINK_HELD_MIN_REC	ALIGN(sizeof(struct frelink_held_record) + 2, 8)

/* one handle of the process being listed on a candidate file */
struct frelink_handle {
	struct path path;
	u16 kind;
	s32 fd;
	u64 start;
	u64 end;
	u32 open_flags;
	loff_t pos;
	unsigned int fds;	/* descriptors looked at before it */
};

/*
 * A point within a process: a kind and the fd or mapping start where its
 * records go on, in the order exe, cwd, root, fd, mmap.  Kind 0: its start.
 */
struct frelink_held_pos {
	u32 kind;
	u64 at;
};

struct frelink_held_walk {
	struct frelink_handle *handles;
	unsigned int count;
	unsigned int cap;
	unsigned int limit;	/* FRELINK_HELD_SPLIT: handles worth collecting */
	unsigned int fds;
	u32 kinds;
	pid_t tid;		/* the fd table's thread, 0: the process's */
	struct pid_namespace *ns;
	bool split;		/* out: the process goes on at @next */
	struct frelink_held_pos from;	/* in: skip what comes before */
	struct frelink_held_pos cut;	/* the first handle not collected */
	struct frelink_held_pos next;
	char *pathbuf;
};

static int frelink_held_rank(u32 kind)
{
	switch (kind) {
	case FRELINK_HELD_EXE:
		return 1;
	case FRELINK_HELD_CWD:
		return 2;
	case FRELINK_HELD_ROOT:
		return 3;
	case FRELINK_HELD_FD:
		return 4;
	case FRELINK_HELD_MMAP:
		return 5;
	}
	return 0;
}

/* true if the handle (@kind, @at) comes before the resume point */
static bool frelink_held_before(const struct frelink_held_walk *walk,
				u32 kind, u64 at)
{
	int rank = frelink_held_rank(kind), from = frelink_held_rank(walk->from.kind);

	return rank < from || (rank == from && at < walk->from.at);
}

/*
 * What readlink() of the handle would end in " (deleted)", or name an NFS
 * silly rename: an unlinked dentry of a real filesystem.  Pipes, sockets and
 * anonymous inodes have unlinked dentries too, but a d_dname() name
 * ("pipe:[N]"), never a path.
 */
static bool frelink_held_candidate(const struct dentry *dentry)
{
	if (dentry->d_op && dentry->d_op->d_dname)
		return false;
	return d_unlinked(dentry) ||
	       (READ_ONCE(dentry->d_flags) & DCACHE_NFSFS_RENAMED);
}

static int frelink_held_grow(struct frelink_held_walk *walk)
{
	unsigned int cap = walk->cap ? walk->cap * 2 : 16;
	struct frelink_handle *handles;

	handles = kvmalloc_array(cap, sizeof(*handles), GFP_KERNEL);
	if (!handles)
		return -ENOMEM;
	if (walk->count)
		memcpy(handles, walk->handles, walk->count * sizeof(*handles));
	kvfree(walk->handles);
	walk->handles = handles;
	walk->cap = cap;
	return 0;
}

/* May run under a spinlock: takes references, never sleeps or allocates. */
static void frelink_held_add(struct frelink_held_walk *walk,
			     const struct path *path, u16 kind, s32 fd,
			     u64 start, u64 end)
{
	struct frelink_handle *handle = &walk->handles[walk->count++];

	handle->path = *path;
	path_get(path);
	handle->kind = kind;
	handle->fd = fd;
	handle->start = start;
	handle->end = end;
	handle->open_flags = 0;
	handle->pos = 0;
	handle->fds = walk->fds;
}

/*
 * iterate_fd() callback, under the fd table's lock.  Returns fd + 1 to stop
 * the walk when the handle array is full: the caller grows it and resumes
 * at fd, as net/core/netclassid_cgroup.c does.
 */
static int frelink_held_fd(const void *arg, struct file *file, unsigned int fd)
{
	struct frelink_held_walk *walk = (struct frelink_held_walk *)arg;

	if (!frelink_held_candidate(file->f_path.dentry)) {
		walk->fds++;
		return 0;
	}
	if (walk->count == walk->cap ||
	    (walk->limit && walk->count >= walk->limit))
		return fd + 1;
	frelink_held_add(walk, &file->f_path, FRELINK_HELD_FD, fd, walk->tid, 0);
	walk->fds++;
	/* read as /proc/PID/fdinfo/N reads them: unlocked, a snapshot */
	walk->handles[walk->count - 1].open_flags = READ_ONCE(file->f_flags);
	walk->handles[walk->count - 1].pos = READ_ONCE(file->f_pos);
	return 0;
}

/* -ENOSPC: enough handles for the room left, the rest from @walk->cut on */
static int frelink_held_limit(struct frelink_held_walk *walk, u32 kind, u64 at)
{
	if (!walk->limit || walk->count < walk->limit)
		return 0;
	walk->cut.kind = kind;
	walk->cut.at = at;
	return -ENOSPC;
}

/* a descriptor's place: its table's thread (0: the process's), its number */
#define FRELINK_HELD_FD_AT(tid, fd)	(((u64)(tid) << 32) | (u32)(fd))

/* the fd table of @task, as thread @tid's own (0: the process's) */
static int frelink_held_table(struct frelink_held_walk *walk,
			      struct task_struct *task, pid_t tid)
{
	u64 from = walk->from.kind == FRELINK_HELD_FD ? walk->from.at : 0;
	unsigned int next = 0;
	int err;

	if (FRELINK_HELD_FD_AT(tid, U32_MAX) < from)
		return 0;
	if (from >> 32 == tid)
		next = (u32)from;
	walk->tid = tid;
	for (;;) {
		task_lock(task);
		next = iterate_fd(task->files, next, frelink_held_fd, walk);
		task_unlock(task);
		if (!next)
			return 0;
		next--;
		err = frelink_held_limit(walk, FRELINK_HELD_FD,
					 FRELINK_HELD_FD_AT(tid, next));
		if (!err)
			err = frelink_held_grow(walk);
		if (err)
			return err;
	}
}

struct frelink_held_table {
	struct task_struct *task;
	pid_t tid;
};

/*
 * The process's fd table and those of its threads cloned without
 * CLONE_FILES (/proc/PID/task/TID/fd), each table once, in the order of
 * their tid: 0 for the one /proc/PID/fd shows, @main_tid for the process's
 * table when its main thread exited.
 */
static int frelink_held_fds(struct frelink_held_walk *walk,
			    struct task_struct *task, pid_t main_tid)
{
	struct frelink_held_table *tables;
	struct files_struct *files, *own;
	unsigned int count = 1, n = 1, i, j;
	struct task_struct *t;
	pid_t tid;
	int err = 0;

	task_lock(task);
	files = task->files;
	task_unlock(task);
	rcu_read_lock();
	for_each_thread(task, t) {
		own = READ_ONCE(t->files);
		if (own && own != files)
			count++;
	}
	rcu_read_unlock();
	tables = kvmalloc_array(count, sizeof(*tables), GFP_KERNEL);
	if (!tables)
		return -ENOMEM;
	get_task_struct(task);
	tables[0].task = task;
	tables[0].tid = main_tid;
	rcu_read_lock();
	for_each_thread(task, t) {
		own = READ_ONCE(t->files);
		tid = task_pid_nr_ns(t, walk->ns);
		if (n == count)
			break;
		if (!own || own == files || tid <= 0)
			continue;
		for (j = 0; j < n && READ_ONCE(tables[j].task->files) != own; j++)
			;
		if (j < n)
			continue;
		get_task_struct(t);
		/* by tid, the order a resume point counts on */
		for (j = n++; j && tables[j - 1].tid > tid; j--)
			tables[j] = tables[j - 1];
		tables[j].task = t;
		tables[j].tid = tid;
	}
	rcu_read_unlock();
	for (i = 0; i < n; i++) {
		if (!err)
			err = frelink_held_table(walk, tables[i].task, tables[i].tid);
		put_task_struct(tables[i].task);
	}
	walk->tid = 0;
	kvfree(tables);
	return err;
}

static int frelink_held_reserve(struct frelink_held_walk *walk, u32 kind,
				u64 at)
{
	int err = frelink_held_limit(walk, kind, at);

	if (err || walk->count < walk->cap)
		return err;
	return frelink_held_grow(walk);
}

static int frelink_held_exe(struct frelink_held_walk *walk,
			    struct task_struct *task)
{
	struct mm_struct *mm = get_task_mm(task);
	struct file *exe;
	int err = 0;

	if (!mm)
		return 0;
	exe = frelink_mm_exe_file(mm);
	mmput(mm);
	if (!exe)
		return 0;
	if (frelink_held_candidate(exe->f_path.dentry)) {
		err = frelink_held_reserve(walk, FRELINK_HELD_EXE, 0);
		if (!err)
			frelink_held_add(walk, &exe->f_path, FRELINK_HELD_EXE, -1,
					 0, 0);
	}
	fput(exe);
	return err;
}

static int frelink_held_maps(struct frelink_held_walk *walk,
			     struct task_struct *task)
{
	u64 from = walk->from.kind == FRELINK_HELD_MMAP ? walk->from.at : 0;
	struct mm_struct *mm = get_task_mm(task);
	struct vm_area_struct *vma;
	int err;

	if (!mm)
		return 0;
	err = mmap_read_lock_killable(mm);
	if (!err) {
		FRELINK_VMA_ITERATOR(vmi, mm, from);

		frelink_for_each_vma(vmi, vma) {
			const struct path *path;

			if (!vma->vm_file || vma->vm_start < from)
				continue;
			/* as map_files and maps see it: an overlay's path */
			path = frelink_file_user_path(vma->vm_file);
			if (!frelink_held_candidate(path->dentry))
				continue;
			err = frelink_held_reserve(walk, FRELINK_HELD_MMAP,
						   vma->vm_start);
			if (err)
				break;
			frelink_held_add(walk, path, FRELINK_HELD_MMAP, -1,
					 vma->vm_start, vma->vm_end);
		}
		mmap_read_unlock(mm);
	}
	mmput(mm);
	return err;
}

static int frelink_held_fs(struct frelink_held_walk *walk,
			   struct task_struct *task)
{
	static const u16 kinds[] = { FRELINK_HELD_CWD, FRELINK_HELD_ROOT };
	struct path path;
	bool found;
	int i, err;

	for (i = 0; i < ARRAY_SIZE(kinds); i++) {
		if (!(walk->kinds & kinds[i]) ||
		    frelink_held_before(walk, kinds[i], 0))
			continue;
		found = false;
		task_lock(task);
		if (task->fs) {
			if (kinds[i] == FRELINK_HELD_CWD)
				get_fs_pwd(task->fs, &path);
			else
				get_fs_root(task->fs, &path);
			found = true;
		}
		task_unlock(task);
		if (!found)
			continue;
		err = 0;
		if (frelink_held_candidate(path.dentry)) {
			err = frelink_held_reserve(walk, kinds[i], 0);
			if (!err)
				frelink_held_add(walk, &path, kinds[i], -1, 0, 0);
		}
		path_put(&path);
		if (err)
			return err;
	}
	return 0;
}

/*
 * Write the record of @handle at @at in the user buffer, if it fits before
 * @limit.  Returns its length, 0 if the handle went away meanwhile (as a
 * failing stat() does in a /proc scan), or -EOVERFLOW / an error.
 */
static int frelink_held_write(struct frelink_held_walk *walk,
			      const struct frelink_handle *handle,
			      pid_t pid, char __user *at, size_t room)
{
	struct frelink_held_record rec = { };
	struct kstat stat;
	size_t path_len, rec_len;
	char *path;
	int err;

	/*
	 * Cached attributes: a FUSE (or network) filesystem is not asked, so
	 * that its daemon, maybe an unprivileged user's, cannot stall the
	 * listing by not answering (as frelink_stat_dev() does).
	 */
	err = vfs_getattr(&handle->path, &stat, STATX_BASIC_STATS,
			  AT_STATX_DONT_SYNC);
	if (err)
		return err == -EINTR ? err : 0;
	path = d_path(&handle->path, walk->pathbuf, PATH_MAX);
	if (IS_ERR(path))
		return 0;
	path_len = strlen(path) + 1;
	rec_len = ALIGN(sizeof(rec) + path_len, 8);
	if (rec_len > room)
		return -EOVERFLOW;

	rec.rec_len = rec_len;
	rec.kind = handle->kind;
	rec.pid = pid;
	rec.fd = handle->fd;
	if (READ_ONCE(handle->path.dentry->d_flags) & DCACHE_NFSFS_RENAMED)
		rec.flags = FRELINK_HELD_NFS_RENAMED;
	rec.start = handle->start;
	rec.end = handle->end;
	rec.dev = huge_encode_dev(stat.dev);
	rec.ino = stat.ino;
	rec.mode = stat.mode;
	rec.nlink = stat.nlink;
	rec.uid = from_kuid_munged(current_user_ns(), stat.uid);
	rec.gid = from_kgid_munged(current_user_ns(), stat.gid);
	rec.size = stat.size;
	rec.blocks = stat.blocks;
	rec.mtime_sec = stat.mtime.tv_sec;
	rec.mtime_nsec = stat.mtime.tv_nsec;
	rec.open_flags = handle->open_flags;
	rec.pos = handle->pos;

	if (copy_to_user(at, &rec, sizeof(rec)) ||
	    copy_to_user(at + sizeof(rec), path, path_len) ||
	    clear_user(at + sizeof(rec) + path_len,
		       rec_len - sizeof(rec) - path_len))
		return -EFAULT;
	return rec_len;
}

static void frelink_held_release(struct frelink_held_walk *walk)
{
	while (walk->count)
		path_put(&walk->handles[--walk->count].path);
}

/* The process goes on at @handle in the next call. */
static void frelink_held_split(struct frelink_held_walk *walk,
			       const struct frelink_handle *handle)
{
	walk->split = true;
	walk->next.kind = handle->kind;
	walk->next.at = handle->kind == FRELINK_HELD_FD ?
			FRELINK_HELD_FD_AT(handle->start, handle->fd) :
			handle->start;
	walk->fds = handle->fds;
}

/*
 * @leader, or when it exited (a zombie leader: mm, files and fs gone) a
 * live thread of its group, which holds them for the process; referenced.
 */
static struct task_struct *frelink_held_live(struct task_struct *leader)
{
	struct task_struct *t, *live = leader;

	rcu_read_lock();
	if (READ_ONCE(leader->flags) & PF_EXITING) {
		for_each_thread(leader, t) {
			if (!(READ_ONCE(t->flags) & PF_EXITING)) {
				live = t;
				break;
			}
		}
	}
	get_task_struct(live);
	rcu_read_unlock();
	return live;
}

/*
 * Collect the candidate handles of @leader's process, then, with no lock
 * held (the copy to the caller may fault, and the caller may be the
 * process), write their records at @buf + *used.  All or nothing: -EOVERFLOW leaves *used as it
 * was.  With @split, a full buffer after some records ends the call
 * inside the process instead (@walk->split, @walk->next), and only the
 * handles the room left can take are collected.
 */
static int frelink_held_process(struct frelink_held_walk *walk,
				struct task_struct *leader, pid_t pid,
				char __user *buf, u32 buf_size, u32 *used,
				bool split)
{
	struct task_struct *task = frelink_held_live(leader);
	pid_t main_tid = task == leader ? 0 : task_pid_nr_ns(task, walk->ns);
	u32 at = *used;
	int i, len, err = 0;

	walk->fds = 0;
	walk->split = false;
	walk->cut.kind = 0;
	walk->limit = split ? (buf_size - at) / FRELINK_HELD_MIN_REC + 1 : 0;
	/* in the order a /proc reader meets them: exe, cwd, root, fd, maps */
	if ((walk->kinds & FRELINK_HELD_EXE) &&
	    !frelink_held_before(walk, FRELINK_HELD_EXE, 0))
		err = frelink_held_exe(walk, task);
	if (!err)
		err = frelink_held_fs(walk, task);
	if (!err && (walk->kinds & FRELINK_HELD_FD) &&
	    !frelink_held_before(walk, FRELINK_HELD_FD, U64_MAX))
		err = frelink_held_fds(walk, task, main_tid);
	if (!err && (walk->kinds & FRELINK_HELD_MMAP))
		err = frelink_held_maps(walk, task);
	if (err == -ENOSPC)	/* collected up to walk->cut */
		err = 0;

	for (i = 0; !err && i < walk->count; i++) {
		len = frelink_held_write(walk, &walk->handles[i], pid,
					 buf + at, buf_size - at);
		if (len == -EOVERFLOW && split && at &&
		    (i || walk->from.kind)) {
			frelink_held_split(walk, &walk->handles[i]);
			break;
		}
		if (len < 0)
			err = len;
		else
			at += len;
	}
	if (!err && !walk->split && walk->cut.kind) {
		walk->split = true;
		walk->next = walk->cut;
	}
	frelink_held_release(walk);
	put_task_struct(task);
	if (!err)
		*used = at;
	return err;
}

/* The next thread group leader from pid @nr on, with a reference, or NULL. */
static struct task_struct *frelink_next_tgid(struct pid_namespace *ns,
					     pid_t *nr)
{
	struct task_struct *task = NULL;
	struct pid *pid;

	rcu_read_lock();
	while ((pid = frelink_find_ge_pid(*nr, ns))) {
		*nr = pid_nr_ns(pid, ns);
		task = pid_task(pid, PIDTYPE_TGID);
		if (task) {
			get_task_struct(task);
			break;
		}
		(*nr)++;
	}
	rcu_read_unlock();
	return task;
}

static int frelink_held(struct frelink_held *req)
{
	struct pid_namespace *ns = task_active_pid_ns(current);
	char __user *buf = u64_to_user_ptr(req->buf);
	struct frelink_held_walk walk = { .kinds = req->kinds, .ns = ns };
	bool split = req->flags & FRELINK_HELD_SPLIT;
	struct task_struct *task;
	pid_t nr = req->next_pid;
	int i, err = 0;

	for (i = 0; i < ARRAY_SIZE(req->reserved); i++)
		if (req->reserved[i])
			return -EINVAL;
	if (!req->kinds || (req->kinds & ~FRELINK_HELD_ALL) || nr < 0 ||
	    req->buf_size > FRELINK_HELD_MAX_BUF ||
	    (req->flags & ~FRELINK_HELD_SPLIT))
		return -EINVAL;
	/* a resume point needs SPLIT and a pid; exe, cwd, root have at 0 */
	if (req->next_kind &&
	    (!split || !nr || !frelink_held_rank(req->next_kind) ||
	     (req->next_at && !(req->next_kind &
				(FRELINK_HELD_FD | FRELINK_HELD_MMAP)))))
		return -EINVAL;
	if (!req->next_kind && req->next_at)
		return -EINVAL;

	walk.pathbuf = __getname();
	if (!walk.pathbuf)
		return -ENOMEM;
	req->used = 0;
	req->processes = 0;
	req->fds = 0;
	while ((task = frelink_next_tgid(ns, &nr))) {
		/* resume inside process @next_pid only if it is still there */
		walk.from.kind = nr == req->next_pid ? req->next_kind : 0;
		walk.from.at = walk.from.kind ? req->next_at : 0;
		err = frelink_held_process(&walk, task, nr, buf,
					   req->buf_size, &req->used, split);
		put_task_struct(task);
		if (err)
			break;
		req->fds += walk.fds;
		if (walk.split)
			break;
		req->processes++;
		nr++;
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
		cond_resched();
	}
	/* a full buffer after whole processes: the caller resumes at @nr */
	if (err == -EOVERFLOW && req->used)
		err = 0;
	req->next_pid = task ? nr : 0;
	if (!walk.split)	/* EOVERFLOW: retry where this call began */
		walk.next = err == -EOVERFLOW ? walk.from : (struct frelink_held_pos){ };
	req->next_kind = walk.next.kind;
	req->next_at = walk.next.at;
	__putname(walk.pathbuf);
	kvfree(walk.handles);
	return err;
}

static int frelink_open(struct inode *inode, struct file *file)
{
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return 0;
}

static long frelink_ioctl_relink(void __user *arg)
{
	struct frelink_relink req;
	int err;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	err = frelink_check_request(&req);
	if (err)
		return err;
	return frelink_relink(&req);
}

/*
 * Reading /proc/PID/fd and map_files needs ptrace read access to PID, which
 * CAP_SYS_PTRACE grants for every process; the LSM hook of that check
 * (ptrace_may_access()) is not exported to modules.
 */
static long frelink_ioctl_held(void __user *arg)
{
	struct frelink_held req;
	int err;

	if (!capable(CAP_SYS_PTRACE))
		return -EPERM;
	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	err = frelink_held(&req);
	/* the counts and the resume point are the caller's on overflow too */
	if ((!err || err == -EOVERFLOW) &&
	    copy_to_user(arg, &req, sizeof(req)))
		return -EFAULT;
	return err;
}

static long frelink_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	switch (cmd) {
	case FRELINK_IOC_RELINK:
		return frelink_ioctl_relink((void __user *)arg);
	case FRELINK_IOC_HELD:
		return frelink_ioctl_held((void __user *)arg);
	case FRELINK_IOC_IDENTIFY:
		return frelink_ioctl_identify((void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations frelink_fops = {
	.owner		= THIS_MODULE,
	.open		= frelink_open,
	.unlocked_ioctl	= frelink_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

static struct miscdevice frelink_miscdev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= FRELINK_DEVICE_NAME,
	.fops	= &frelink_fops,
	.mode	= 0600,
};

module_misc_device(frelink_miscdev);

MODULE_DESCRIPTION("Give a deleted but still open file a name again");
MODULE_AUTHOR("frelink developers");
MODULE_LICENSE("GPL");
MODULE_VERSION("0.1.0");
