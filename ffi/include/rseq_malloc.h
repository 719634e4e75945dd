/* rseq_malloc.h: the extension API of librseq_malloc (rseq-alloc's C
 * library). The standard allocation functions (malloc, free, calloc,
 * realloc, posix_memalign, aligned_alloc, malloc_usable_size, malloc_info,
 * malloc_trim, mallinfo2, ...) keep their usual declarations from
 * <stdlib.h> and <malloc.h>; this header adds what only this library has.
 *
 * Link with `pkg-config --cflags --libs rseq_malloc`. Configuration at run
 * time: the RSEQ_MALLOC_CONF environment variable (see the README).
 *
 * The structures only ever grow at their end: pass sizeof(struct ...) and
 * the library fills what both sides know, returning its own size. */
#ifndef RSEQ_MALLOC_H
#define RSEQ_MALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RSEQ_MALLOC_VERSION_MAJOR 0
#define RSEQ_MALLOC_VERSION_MINOR 1
#define RSEQ_MALLOC_VERSION_PATCH 0

/* A statistics snapshot (racy counters; reading them never allocates). */
struct rseq_malloc_stats {
    size_t allocated;   /* bytes in live blocks (class / page granularity) */
    size_t active;      /* bytes in spans in use, plus huge blocks */
    size_t mapped;      /* committed heap bytes not released, plus huge blocks */
    size_t resident;    /* upper bound of resident bytes: mapped + metadata */
    size_t retained;    /* free bytes given back to the OS, address space kept */
    size_t metadata;    /* page map, span records, per-CPU cache regions */
    size_t cached;      /* free bytes in the per-CPU caches */
    size_t huge;        /* bytes of huge blocks (>= 1 MiB, mapped directly) */
    size_t huge_blocks; /* number of huge blocks */
    size_t peak_active; /* highest `active` seen on a slow path */
    size_t peak_mapped; /* highest `mapped` seen on a slow path */
    uint64_t fast_hits;    /* per-CPU cache hits (counted with stats=1) */
    uint64_t fast_misses;  /* per-CPU cache misses */
    uint64_t rseq_aborts;  /* rseq restarts */
    uint64_t fallback_ops; /* compare-and-swap or cache-bypassing operations */
};

/* The options in effect (RSEQ_MALLOC_CONF as parsed at initialisation). */
struct rseq_malloc_options {
    int rseq_off;       /* rseq=off */
    int index;          /* 0 auto, 1 cpu, 2 cid */
    int verbose;
    int stats;          /* 1 also for stats=json */
    int stats_json;
    int background;
    int thp;            /* 0 auto, 1 never */
    int abort_conf;
    long long decay_ms; /* -1: never */
    const char *stats_file; /* not NUL-terminated (a slice of the
                               environment), NULL if unset */
    size_t stats_file_len;
};

/* Fills *out (at most `size` bytes); returns sizeof(struct
 * rseq_malloc_stats) of the library. `out` may be NULL. */
size_t rseq_malloc_stats(struct rseq_malloc_stats *out, size_t size);

/* Fills *out (at most `size` bytes); returns sizeof(struct
 * rseq_malloc_options) of the library. `out` may be NULL. */
size_t rseq_malloc_options(struct rseq_malloc_options *out, size_t size);

/* Gives free memory back to the OS now (drains the per-CPU caches too);
 * returns 1 if anything was released, else 0. */
int rseq_malloc_trim(void);

/* The library's version, e.g. "0.1.0" (static storage). */
const char *rseq_malloc_version(void);

/* "rseq-glibc", "rseq-own" or "cmpxchg" (static storage). */
const char *rseq_malloc_mode(void);

/* Number of per-CPU caches, and the free bytes in one of them (0 when
 * `region` is out of range). */
size_t rseq_malloc_cache_regions(void);
size_t rseq_malloc_cached_in_region(size_t region);

#ifdef __cplusplus
}
#endif

#endif /* RSEQ_MALLOC_H */
