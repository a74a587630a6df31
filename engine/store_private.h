/* store_private.h — what store.c shares with store_registry.c (the SQL of
 * the registry, datasets and runs); nothing outside the store includes it. */
#ifndef RATCHET_STORE_PRIVATE_H
#define RATCHET_STORE_PRIVATE_H

#include <sqlite3.h>

#include "store.h"

#define READ_POOL_MAX 8

/* One statement of a write and its bound values (?1..?n in order). Types:
 * 'i' integer, 'd' real, 's' text (owned), 'n' NULL. */
typedef struct {
    char t;
    int64_t i;
    double d;
    char *s;
} store_val;

struct store_op {
    const char *sql; /* a string constant: statements are cached by its address */
    int n;
    store_val v[16];
    store_op *next;
};

sqlite3 *store_read_acquire(store *s, char *err, size_t errlen);
void store_read_release(store *s, sqlite3 *db);
void store_ops_free(store_op *op);

#endif
