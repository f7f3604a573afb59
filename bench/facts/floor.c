/*
 * The floor for frelink_facts' fd scan: the least a scanner must do, in C.
 * readdir /proc, and for every process readdir /proc/PID/fd and readlinkat
 * every entry; links ending in " (deleted)" are candidates (printed as
 * "PID\tFD\tPATH" with -p).  No stat, no maps, no loop devices.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SUFFIX " (deleted)"
#define SUFFIX_LEN (sizeof(SUFFIX) - 1)

int main(int argc, char **argv)
{
	int print = argc > 1 && strcmp(argv[1], "-p") == 0;
	DIR *proc = opendir("/proc");
	struct dirent *p, *e;
	char buf[4096], path[300];
	long links = 0, deleted = 0;

	if (!proc)
		return 1;
	while ((p = readdir(proc))) {
		int dfd;
		DIR *d;

		if (p->d_name[0] < '0' || p->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "%s/fd", p->d_name);
		dfd = openat(dirfd(proc), path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			continue;
		d = fdopendir(dfd);
		if (!d) {
			close(dfd);
			continue;
		}
		while ((e = readdir(d))) {
			ssize_t n;

			if (e->d_name[0] == '.')
				continue;
			n = readlinkat(dfd, e->d_name, buf, sizeof(buf) - 1);
			if (n < 0)
				continue;
			links++;
			if ((size_t)n > SUFFIX_LEN && memcmp(buf + n - SUFFIX_LEN, SUFFIX, SUFFIX_LEN) == 0) {
				deleted++;
				if (print) {
					buf[n - SUFFIX_LEN] = '\0';
					printf("%s\t%s\t%s\n", p->d_name, e->d_name, buf);
				}
			}
		}
		closedir(d);
	}
	closedir(proc);
	fprintf(stderr, "links=%ld deleted=%ld\n", links, deleted);
	return 0;
}
