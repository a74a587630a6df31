/* sqlite_private.h — what sqlite.c shares with sqlite_registry.c (the SQL of
 * the registry, datasets and runs); nothing outside the store includes it. */
#ifndef RATCHET_STORE_PRIVATE_H
#define RATCHET_STORE_PRIVATE_H

#include <sqlite3.h>

#include "store/store.h"

#define READ_POOL_MAX 8

/* One statement of a write and its bound values (?1..?n in order). Types:
 * 'i' integer, 'd' real, 's' text, 'n' NULL. An op is one allocation: its
 * values, then copies of their texts. */
typedef struct {
    char t;
    union {
        int64_t i;
        double d;
        const char *s;
    };
} store_val;

struct store_op {
    const char *sql; /* a string constant: statements are cached by its address */
    store_op *next;
    int n;
    store_val v[];
};

sqlite3 *store_read_acquire(store *s, char *err, size_t errlen);
void store_read_release(store *s, sqlite3 *db);
void store_ops_free(store_op *op);

/* Shared by the SQL files (sqlite_registry.c, sqlite_loop.c). */
/* Adds one statement to w; types: one letter per value: i int64, I int64
 * with 0 as NULL, d double, s text (NULL as NULL). */
void op_add(store_write *w, const char *sql, const char *types, ...);
/* A read: borrows a connection, prepares sql, and leaves both in *db, *st. */
int read_begin(store *s, const char *sql, sqlite3 **db, sqlite3_stmt **st, char *err, size_t errlen);
/* Finishes a read: rc is the last sqlite3_step result. */
int read_end(store *s, sqlite3 *db, sqlite3_stmt *st, int rc, char *err, size_t errlen);
json_t *col_text(sqlite3_stmt *st, int i);
json_t *col_json(sqlite3_stmt *st, int i);
json_t *col_time(sqlite3_stmt *st, int i);

#endif
