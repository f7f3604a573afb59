/*
 * The complete floor for frelink_facts: the least a scanner must do, in C, to
 * find every deleted-but-held file of the benchmark's workload exactly.
 *
 * For every process in /proc:
 *   - readlinkat exe, cwd, root; fstatat those whose link ends in " (deleted)";
 *   - readdir /proc/PID/fd and readlinkat every entry; fstatat the candidates
 *     (links ending in " (deleted)");
 *   - read /proc/PID/maps whole; for each line ending in " (deleted)" whose
 *     device is not the kernel's internal shmem mount, stat
 *     /proc/PID/map_files/START-END once per (maps device, inode) of the scan.
 * Then every /sys/block/loop* whose backing_file ends in " (deleted)":
 * LOOP_GET_STATUS64 for the backing (device, inode).
 *
 * A candidate is an orphan when st_nlink == 0 and it is not nameless: not on
 * the shmem mount (memfd, SysV shm, shared anonymous maps; its device is
 * learnt from a memfd) and not an O_TMPFILE (basename "#<inode>").
 * No user/group names, no fdinfo, no mount table, no sorting: what frelink
 * adds on top of this is presentation.
 *
 * -q (Linux 6.11+): instead of the maps text, walk the file-backed mappings with the
 * PROCMAP_QUERY ioctl on /proc/PID/maps without asking for names (no d_path per
 * mapping), stat each (device, inode) once per scan through map_files, and ask
 * for the name only of those with st_nlink == 0.  Falls back to the text on ENOTTY.
 *
 * -p prints one line per holder: "KIND\tPID-or-/dev/loopN\tST_DEV\tST_INO".
 * stderr: a count line.  Linux only; needs root for map_files and loop ioctls.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define SUFFIX " (deleted)"
#define SUFFIX_LEN (sizeof(SUFFIX) - 1)

static int print, query;

/* include/uapi/linux/fs.h (6.11+); defined here for older headers */
struct procmap_query_floor {
	uint64_t size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
	uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
	uint64_t vma_name_addr, build_id_addr;
};
#define PROCMAP_QUERY_FLOOR _IOWR('f', 17, struct procmap_query_floor)
#define QUERY_COVERING_OR_NEXT_VMA 0x10
#define QUERY_FILE_BACKED_VMA 0x20
static dev_t shm_dev = (dev_t)-1;
static long links, candidates, orphans_found;

/* (maps major, minor, inode) -> 1 orphan / 2 not an orphan; open addressing */
struct seen {
	uint64_t key_dev, key_ino;
	int state;
	dev_t dev;
	ino_t ino;
};
static struct seen *table;
static size_t table_size = 1 << 16, table_used;

static struct seen *lookup(uint64_t kdev, uint64_t kino)
{
	size_t i = (size_t)((kdev * 0x9E3779B97F4A7C15ULL) ^ (kino * 0xC2B2AE3D27D4EB4FULL)) & (table_size - 1);

	while (table[i].state && (table[i].key_dev != kdev || table[i].key_ino != kino))
		i = (i + 1) & (table_size - 1);
	return &table[i];
}

static void grow(void)
{
	struct seen *old = table;
	size_t n = table_size, i;

	table_size *= 2;
	table = calloc(table_size, sizeof(*table));
	if (!table)
		exit(2);
	for (i = 0; i < n; i++)
		if (old[i].state)
			*lookup(old[i].key_dev, old[i].key_ino) = old[i];
	free(old);
}

static int nameless(const char *path, size_t len, const struct stat *st)
{
	const char *base = memrchr(path, '/', len);
	char want[32];
	int n;

	if (st->st_dev == shm_dev)
		return 1;
	if (!base)
		return 0;
	base++;
	n = snprintf(want, sizeof(want), "#%lu", (unsigned long)st->st_ino);
	return (size_t)n == len - (size_t)(base - path) && memcmp(base, want, n) == 0;
}

static void found(const char *kind, const char *who, const struct stat *st)
{
	orphans_found++;
	if (print)
		printf("%s\t%s\t%lu\t%lu\n", kind, who, (unsigned long)st->st_dev, (unsigned long)st->st_ino);
}

/* readlinkat name in dfd; if it ends in " (deleted)" fstatat it; report an orphan */
static void check_link(int dfd, const char *name, const char *kind, const char *pid)
{
	char buf[4096];
	struct stat st;
	ssize_t n = readlinkat(dfd, name, buf, sizeof(buf) - 1);

	if (n < 0)
		return;
	links++;
	if ((size_t)n <= SUFFIX_LEN || buf[0] != '/' || memcmp(buf + n - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) != 0)
		return;
	candidates++;
	if (fstatat(dfd, name, &st, 0) < 0 || st.st_nlink != 0)
		return;
	if (nameless(buf, (size_t)n - SUFFIX_LEN, &st))
		return;
	found(kind, pid, &st);
}

static struct seen *remember(uint64_t kdev, uint64_t kino, struct seen *s, const struct stat *st, int state)
{
	s->key_dev = kdev;
	s->key_ino = kino;
	s->state = state;
	s->dev = st->st_dev;
	s->ino = st->st_ino;
	if (++table_used * 2 > table_size)
		grow();
	return s;
}

/* 1: done with PROCMAP_QUERY; 0: not supported, read the text */
static int query_maps(int pfd, const char *pid)
{
	int fd = openat(pfd, "maps", O_RDONLY | O_CLOEXEC);
	struct procmap_query_floor q;
	uint64_t addr = 0;

	if (fd < 0)
		return 1;
	for (;;) {
		char path[128], name[4200];
		struct seen *s;
		struct stat st;
		uint64_t kdev;

		memset(&q, 0, sizeof(q));
		q.size = sizeof(q);
		q.query_flags = QUERY_COVERING_OR_NEXT_VMA | QUERY_FILE_BACKED_VMA;
		q.query_addr = addr;
		if (ioctl(fd, PROCMAP_QUERY_FLOOR, &q) < 0) {
			int unsupported = errno == ENOTTY;

			close(fd);
			return !unsupported;	/* ENOENT: no more mappings */
		}
		addr = q.vma_end;
		kdev = makedev(q.dev_major, q.dev_minor);
		if (kdev == shm_dev || q.inode == 0)
			continue;
		s = lookup(kdev, q.inode);
		if (s->state == 2)
			continue;
		if (s->state == 1) {
			st.st_dev = s->dev;
			st.st_ino = s->ino;
			found("mmap", pid, &st);
			continue;
		}
		snprintf(path, sizeof(path), "map_files/%lx-%lx", (unsigned long)q.vma_start, (unsigned long)q.vma_end);
		candidates++;
		if (fstatat(pfd, path, &st, 0) < 0)
			continue;
		if (st.st_nlink != 0) {
			remember(kdev, q.inode, s, &st, 2);
			continue;
		}
		/* a deleted file: now its name, to tell an O_TMPFILE ("#<inode>") apart */
		memset(&q, 0, sizeof(q));
		q.size = sizeof(q);
		q.query_addr = addr - 1;	/* inside the mapping just found */
		q.vma_name_addr = (uint64_t)(uintptr_t)name;
		q.vma_name_size = sizeof(name);
		if (ioctl(fd, PROCMAP_QUERY_FLOOR, &q) < 0)
			continue;
		{
			size_t len = strnlen(name, sizeof(name));

			if (len > SUFFIX_LEN && memcmp(name + len - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) == 0)
				len -= SUFFIX_LEN;
			remember(kdev, q.inode, s, &st, nameless(name, len, &st) ? 2 : 1);
		}
		if (s->state == 1)
			found("mmap", pid, &st);
	}
}

static char *maps_buf;
static size_t maps_cap = 1 << 16;

static void scan_maps(int pfd, const char *pid)
{
	int fd = openat(pfd, "maps", O_RDONLY | O_CLOEXEC);
	size_t len = 0;
	char *line, *end;

	if (fd < 0)
		return;
	for (;;) {
		ssize_t n;

		if (maps_cap - len < 4096) {
			maps_cap *= 2;
			maps_buf = realloc(maps_buf, maps_cap);
			if (!maps_buf)
				exit(2);
		}
		n = read(fd, maps_buf + len, maps_cap - len);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (!memmem(maps_buf, len, SUFFIX "\n", SUFFIX_LEN + 1))
		return;
	for (line = maps_buf; line < maps_buf + len; line = end + 1) {
		char range[64], path[4200];
		unsigned int major, minor;
		unsigned long ino;
		struct seen *s;
		struct stat st;
		char *p, *dash;
		size_t rlen;

		end = memchr(line, '\n', (size_t)(maps_buf + len - line));
		if (!end)
			end = maps_buf + len;
		if ((size_t)(end - line) <= SUFFIX_LEN || memcmp(end - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) != 0)
			continue;
		/* start-end perms offset major:minor inode path */
		p = memchr(line, ' ', (size_t)(end - line));
		dash = p ? memchr(line, '-', (size_t)(p - line)) : NULL;
		if (!dash || (rlen = (size_t)(p - line)) >= sizeof(range))
			continue;
		memcpy(range, line, rlen);
		range[rlen] = '\0';
		if (sscanf(p, " %*s %*s %x:%x %lu", &major, &minor, &ino) != 3 || ino == 0)
			continue;
		if (makedev(major, minor) == shm_dev)
			continue;
		s = lookup(makedev(major, minor), ino);
		if (s->state == 2)
			continue;
		if (s->state == 1) {
			st.st_dev = s->dev;
			st.st_ino = s->ino;
			found("mmap", pid, &st);
			continue;
		}
		snprintf(path, sizeof(path), "map_files/%s", range);
		candidates++;
		if (fstatat(pfd, path, &st, 0) < 0)
			continue;	/* gone, or no CAP_SYS_ADMIN: not cached */
		s->key_dev = makedev(major, minor);
		s->key_ino = ino;
		{
			/* the path starts at the first '/' after the inode field */
			char *slash = memchr(p, '/', (size_t)(end - p));
			size_t plen = slash ? (size_t)(end - slash) - SUFFIX_LEN : 0;

			s->state = (st.st_nlink == 0 && !(slash && nameless(slash, plen, &st))) ? 1 : 2;
		}
		s->dev = st.st_dev;
		s->ino = st.st_ino;
		if (++table_used * 2 > table_size)
			grow();
		if (s->state == 1)
			found("mmap", pid, &st);
	}
}

static void scan_process(int proc, const char *pid)
{
	int pfd = openat(proc, pid, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int dfd;
	DIR *d;
	struct dirent *e;

	if (pfd < 0)
		return;
	check_link(pfd, "exe", "exe", pid);
	check_link(pfd, "cwd", "cwd", pid);
	check_link(pfd, "root", "root", pid);
	dfd = openat(pfd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		d = fdopendir(dfd);
		if (d) {
			while ((e = readdir(d)))
				if (e->d_name[0] != '.')
					check_link(dfd, e->d_name, "fd", pid);
			closedir(d);
		} else {
			close(dfd);
		}
	}
	if (!query || !query_maps(pfd, pid))
		scan_maps(pfd, pid);
	close(pfd);
}

static void scan_loops(void)
{
	DIR *d = opendir("/sys/block");
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d))) {
		char path[512], buf[4096], dev[300];
		struct loop_info64 info;
		struct stat st, live;
		ssize_t n;
		int fd;

		if (strncmp(e->d_name, "loop", 4) != 0)
			continue;
		snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file", e->d_name);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0 && buf[n - 1] == '\n')
			n--;
		if (n <= (ssize_t)SUFFIX_LEN || memcmp(buf + n - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) != 0)
			continue;
		buf[n] = '\0';
		snprintf(dev, sizeof(dev), "/dev/%s", e->d_name);
		fd = open(dev, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
		if (fd < 0)
			continue;
		n = ioctl(fd, LOOP_GET_STATUS64, &info);
		close(fd);
		if (n < 0)
			continue;
		memset(&st, 0, sizeof(st));
		/* lo_device is huge_encode_dev(); glibc's makedev agrees below major 4096 */
		st.st_dev = makedev((info.lo_device >> 8) & 0xfff,
				    (info.lo_device & 0xff) | ((info.lo_device >> 12) & 0xfff00));
		st.st_ino = info.lo_inode;
		if (stat(buf, &live) == 0 && live.st_dev == st.st_dev && live.st_ino == st.st_ino)
			continue;	/* a live file really named "x (deleted)" */
		found("loop", dev, &st);
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	DIR *proc;
	struct dirent *p;
	struct stat st;
	int mfd;

	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-p") == 0)
			print = 1;
		else if (strcmp(argv[i], "-q") == 0)
			query = 1;
	}
	table = calloc(table_size, sizeof(*table));
	maps_buf = malloc(maps_cap);
	if (!table || !maps_buf)
		return 2;
	mfd = memfd_create("frelink-floor-probe", MFD_CLOEXEC);
	if (mfd >= 0 && fstat(mfd, &st) == 0)
		shm_dev = st.st_dev;
	if (mfd >= 0)
		close(mfd);
	proc = opendir("/proc");
	if (!proc)
		return 1;
	while ((p = readdir(proc)))
		if (p->d_name[0] >= '0' && p->d_name[0] <= '9')
			scan_process(dirfd(proc), p->d_name);
	closedir(proc);
	scan_loops();
	fprintf(stderr, "links=%ld candidates=%ld holders=%ld\n", links, candidates, orphans_found);
	return 0;
}
