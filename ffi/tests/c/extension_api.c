/* The C surface of an installed librseq_malloc, compiled with
 * `pkg-config --cflags --libs rseq_malloc`: the extension API of
 * <rseq_malloc.h>, glibc's __libc_* aliases and cfree, and malloc_info.
 * Prints one line per check (exact values), then the malloc_info XML. */
#include <errno.h>
#include <malloc.h>
#include <rseq_malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void cfree(void *);
void *__libc_malloc(size_t);
void __libc_free(void *);
void *__libc_calloc(size_t, size_t);
void *__libc_realloc(void *, size_t);
void *__libc_memalign(size_t, size_t);
void *__libc_valloc(size_t);
void *__libc_pvalloc(size_t);

static struct rseq_malloc_stats snap(void)
{
    struct rseq_malloc_stats s;
    memset(&s, 0xff, sizeof s);
    size_t n = rseq_malloc_stats(&s, sizeof s);
    if (n != sizeof s) {
        printf("stats size mismatch %zu != %zu\n", n, sizeof s);
        exit(1);
    }
    return s;
}

int main(void)
{
    printf("version=%s\n", rseq_malloc_version());
    printf("mode=%s\n", rseq_malloc_mode());

    struct rseq_malloc_options o;
    size_t on = rseq_malloc_options(&o, sizeof o);
    printf("options size=%s decay_ms=%lld stats_file=%.*s\n",
           on == sizeof o ? "ok" : "BAD", o.decay_ms,
           o.stats_file ? (int)o.stats_file_len : 1, o.stats_file ? o.stats_file : "-");
    printf("null sizes=%s\n",
           rseq_malloc_stats(NULL, 0) == sizeof(struct rseq_malloc_stats) &&
           rseq_malloc_options(NULL, 0) == sizeof(struct rseq_malloc_options) ? "ok" : "BAD");

    /* A huge block through malloc and one through __libc_malloc: both are
     * ours, so `huge` moves by exactly their sizes. */
    struct rseq_malloc_stats a = snap();
    char *big = malloc(8 << 20);
    char *big2 = __libc_malloc(2 << 20);
    memset(big, 1, 8 << 20);
    memset(big2, 2, 2 << 20);
    struct rseq_malloc_stats b = snap();
    printf("huge_delta=%zu blocks_delta=%zu\n", b.huge - a.huge, b.huge_blocks - a.huge_blocks);
    printf("peak_mapped_ok=%d\n", b.peak_mapped >= b.mapped && b.mapped >= b.active &&
                                  b.active >= b.allocated && b.resident >= b.mapped);

    /* malloc_info with two huge blocks live. */
    fflush(stdout);
    if (malloc_info(0, stdout) != 0) {
        printf("malloc_info failed\n");
        return 1;
    }
    errno = 0;
    int r = malloc_info(1, stdout);
    printf("malloc_info(1)=%d errno=%s\n", r, errno == EINVAL ? "EINVAL" : "other");
    __libc_free(big2);
    free(big);

    /* The aliases. */
    int ok = 1;
    char *p = __libc_calloc(100, 10);
    for (int i = 0; i < 1000; i++)
        ok &= p[i] == 0;
    p = __libc_realloc(p, 5000);
    ok &= p != NULL;
    __libc_free(p);
    void *m = __libc_memalign(256, 100);
    ok &= ((uintptr_t)m & 255) == 0;
    cfree(m);
    long page = sysconf(_SC_PAGESIZE);
    void *v = __libc_valloc(10);
    ok &= ((uintptr_t)v % (uintptr_t)page) == 0;
    free(v);
    void *pv = __libc_pvalloc(1);
    ok &= ((uintptr_t)pv % (uintptr_t)page) == 0 && malloc_usable_size(pv) >= (size_t)page;
    free(pv);
    cfree(NULL);
    printf("aliases=%s\n", ok ? "ok" : "BAD");

    /* trim: the caches are empty afterwards. */
    for (int i = 0; i < 1000; i++)
        free(malloc(64));
    rseq_malloc_trim();
    struct rseq_malloc_stats t = snap();
    size_t in_regions = 0;
    for (size_t i = 0; i < rseq_malloc_cache_regions(); i++)
        in_regions += rseq_malloc_cached_in_region(i);
    printf("after trim cached=%zu in_regions=%zu regions_ok=%d\n", t.cached, in_regions,
           rseq_malloc_cache_regions() >= 1);
    return 0;
}
