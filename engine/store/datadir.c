/* datadir.c — the data directory: created with its parents, and the lock that keeps a second engine off it. */
#include "store/datadir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int mkdir_p(const char *dir)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0750) != 0 && errno != EEXIST)
        return -1;
    struct stat st;
    if (stat(tmp, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* The pid the holder wrote in the lock file, or 0. */
static long holder_pid(int fd)
{
    char text[32];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    long pid = 0;
    return sscanf(text, "%ld", &pid) == 1 && pid > 0 ? pid : 0;
}

int datadir_lock(const char *dir, char *err, size_t errlen)
{
    if (mkdir_p(dir) != 0) {
        snprintf(err, errlen, "cannot create the data directory '%s': %s", dir, strerror(errno));
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/ratchet.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write in the data directory '%s' (creating %s: %s)", dir, path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        long pid = e == EWOULDBLOCK ? holder_pid(fd) : 0;
        if (e != EWOULDBLOCK)
            snprintf(err, errlen, "cannot lock %s: %s", path, strerror(e));
        else if (pid)
            snprintf(err, errlen, "the data directory '%s' is in use by another ratchet (pid %ld holds %s)", dir, pid,
                     path);
        else
            snprintf(err, errlen, "the data directory '%s' is in use by another ratchet (it holds %s)", dir, path);
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        snprintf(err, errlen, "cannot write in the data directory '%s' (writing %s: %s)", dir, path, strerror(errno));
        close(fd); /* closing releases the lock */
        return -1;
    }
    return fd;
}

void datadir_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}
