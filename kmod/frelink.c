// SPDX-License-Identifier: GPL-2.0
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
#include <linux/err.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/kdev_t.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/mutex.h>
#include <linux/namei.h>
#include <linux/path.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/stat.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "compat.h"
#include "uapi/frelink.h"

/*
 * Held from the link count check to the end of vfs_link(): two racing
 * requests for one inode must not both see link count 0 and both succeed.
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
		if (req->dev || req->ino)
			return -EINVAL;
		break;
	case FRELINK_BY_INODE:
		if (req->src_fd != -1 || !req->dev)
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
 * Find inode @ino with st_dev @dev among the in-memory inodes of @mnt's
 * superblock.  ilookup() is no use: xfs, btrfs and tmpfs do not keep their
 * inodes in the inode hash.  The list may be huge, so like
 * drop_pagecache_sb() we reschedule with the lock dropped, holding a
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
		bool candidate = inode->i_ino == ino;

		if (!candidate && !need_resched())
			continue;

		spin_lock(&inode->i_lock);
		if (frelink_inode_state(inode) &
		    (I_NEW | I_FREEING | I_WILL_FREE)) {
			spin_unlock(&inode->i_lock);
			continue;
		}
		__iget(inode);
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

static int frelink_check_inode(struct inode *inode, struct inode *dir)
{
	if (!S_ISREG(inode->i_mode))
		return -EMEDIUMTYPE;
	if (inode->i_sb != dir->i_sb)
		return -EXDEV;
	/*
	 * Only a filesystem that supports O_TMPFILE promises that ->link()
	 * takes an inode with link count 0 off its orphan list.
	 */
	if (!dir->i_op->link || !dir->i_op->tmpfile)
		return -EOPNOTSUPP;
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
 */
static int frelink_flush_delayed_unlink(struct super_block *sb)
{
	int err;

#ifdef FRELINK_TEST_SKIP_BTRFS_COMMIT
	/* negative control for tests/guest/test_kmod.py; never set otherwise */
	return 0;
#endif

	if (strcmp(sb->s_type->name, "btrfs") || sb_rdonly(sb) ||
	    !sb->s_op->sync_fs)
		return 0;

	down_read(&sb->s_umount);
	err = sb->s_op->sync_fs(sb, 1);
	up_read(&sb->s_umount);
	return err;
}

/* Link @old_dentry, whose link count is 0, as @new_dentry in @dir. */
static int frelink_link(struct dentry *old_dentry, const struct path *dir,
			struct dentry *new_dentry)
{
	struct inode *inode = d_inode(old_dentry);
	bool was_linkable;
	int err;

	spin_lock(&inode->i_lock);
	was_linkable = frelink_inode_state(inode) & I_LINKABLE;
	frelink_inode_state_set(inode, I_LINKABLE);
	spin_unlock(&inode->i_lock);

	/* vfs_link() clears I_LINKABLE when it succeeds */
	err = vfs_link(old_dentry, frelink_mnt_idmap(dir->mnt),
		       d_inode(dir->dentry), new_dentry, NULL);

	if (err && !was_linkable) {
		spin_lock(&inode->i_lock);
		frelink_inode_state_clear(inode, I_LINKABLE);
		spin_unlock(&inode->i_lock);
	}
	return err;
}

/* Give @old_dentry the name req->name in the directory @dir_file. */
static int frelink_relink_dentry(const struct frelink_relink *req,
				 struct file *dir_file,
				 struct dentry *old_dentry)
{
	struct inode *inode = d_inode(old_dentry);
	struct dentry *new_dentry;
	struct path dir_path;
	int err;

	err = frelink_check_inode(inode, d_inode(dir_file->f_path.dentry));
	if (err)
		return err;

	err = mutex_lock_killable(&frelink_mutex);
	if (err)
		return err;

	err = -EMLINK;
	if (READ_ONCE(inode->i_nlink))
		goto out_unlock;

	err = frelink_flush_delayed_unlink(inode->i_sb);
	if (err)
		goto out_unlock;

	new_dentry = frelink_start_creating_path(req->dir_fd, req->name,
						 &dir_path, 0);
	if (IS_ERR(new_dentry)) {
		err = PTR_ERR(new_dentry);
		goto out_unlock;
	}

	/* another thread of the caller replaced dir_fd meanwhile */
	err = -EBADF;
	if (path_equal(&dir_path, &dir_file->f_path))
		err = frelink_link(old_dentry, &dir_path, new_dentry);

	frelink_end_creating_path(&dir_path, new_dentry);
out_unlock:
	mutex_unlock(&frelink_mutex);
	if (!err)
		pr_info("pid %d relinked inode %llu of %s as %s\n",
			task_pid_nr(current), (u64)inode->i_ino,
			inode->i_sb->s_id, req->name);
	return err;
}

static int frelink_relink(const struct frelink_relink *req)
{
	struct dentry *old_dentry;
	struct file *dir_file;
	u64 dir_dev, src_dev;
	int err;

	dir_file = fget_raw(req->dir_fd);
	if (!dir_file)
		return -EBADF;

	err = -ENOTDIR;
	if (!d_is_dir(dir_file->f_path.dentry))
		goto out_dir;
	err = frelink_stat_dev(&dir_file->f_path, &dir_dev);
	if (err)
		goto out_dir;

	if (req->flags == FRELINK_BY_FD) {
		struct file *src_file = fget_raw(req->src_fd);

		err = -EBADF;
		if (!src_file)
			goto out_dir;
		err = frelink_stat_dev(&src_file->f_path, &src_dev);
		if (!err && src_dev != dir_dev)
			err = -EXDEV;
		old_dentry = dget(src_file->f_path.dentry);
		fput(src_file);
		if (err)
			goto out_old;
	} else {
		err = -EXDEV;
		if (req->dev != dir_dev)
			goto out_dir;
		old_dentry = frelink_find_inode(dir_file->f_path.mnt, req->ino,
						req->dev);
		err = -ENOENT;
		if (!old_dentry)
			goto out_dir;
		err = PTR_ERR_OR_ZERO(old_dentry);
		if (err)
			goto out_dir;
	}

	err = frelink_relink_dentry(req, dir_file, old_dentry);
out_old:
	dput(old_dentry);
out_dir:
	fput(dir_file);
	return err;
}

static int frelink_open(struct inode *inode, struct file *file)
{
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return 0;
}

static long frelink_ioctl(struct file *file, unsigned int cmd,
			  unsigned long arg)
{
	struct frelink_relink req;
	int err;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (cmd != FRELINK_IOC_RELINK)
		return -ENOTTY;
	if (copy_from_user(&req, (void __user *)arg, sizeof(req)))
		return -EFAULT;

	err = frelink_check_request(&req);
	if (err)
		return err;
	return frelink_relink(&req);
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
