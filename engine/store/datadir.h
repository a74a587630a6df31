/* datadir.h — the data directory: created with its parents, locked for one engine. */
#ifndef RATCHET_DATADIR_H
#define RATCHET_DATADIR_H

#include <stddef.h>

/* Creates dir and its missing parents, then takes dir/ratchet.lock (flock,
 * the holder's pid written in it) so that no second engine opens the same
 * store. Returns the lock's file descriptor, or -1 with a message in err
 * that says which of the three failed: creating, writing, or the lock held
 * by another engine (named by its pid). */
int datadir_lock(const char *dir, char *err, size_t errlen);
/* Releases the lock. The file stays: removing a flock'd file would let a
 * second engine lock an unlinked copy while a third creates a new one. */
void datadir_unlock(int fd);

#endif
