/*
 * C conformance test for librseq_malloc: every exported symbol, every edge
 * case of the glibc 2.36 semantics, and cross-thread use with exact content
 * checks.
 *
 * Run with LD_PRELOAD=librseq_malloc.so, or linked against the cdylib or the
 * staticlib. Prints "conformance: N checks, 0 failures" and exits 0, or
 * prints every failed check ("FAIL conformance.c:LINE: ...") and exits 1.
 *
 * Usage: conformance [quick]   ("quick": smaller loops, for valgrind)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* C23 functions that glibc 2.36's headers do not declare. Weak, so the
 * program links without the library and the test can say the symbol is
 * missing instead of failing to link. */
extern void free_sized(void *ptr, size_t size) __attribute__((weak));
extern void free_aligned_sized(void *ptr, size_t alignment, size_t size) __attribute__((weak));

static unsigned long checks;
static unsigned long failures;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

static void check_at(int ok, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check_at(int ok, int line, const char *fmt, ...)
{
    pthread_mutex_lock(&report_lock);
    checks++;
    if (!ok) {
        va_list ap;
        failures++;
        fprintf(stderr, "FAIL conformance.c:%d: ", line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        fflush(stderr);
    }
    pthread_mutex_unlock(&report_lock);
}
#define CHECK(cond, ...) check_at(!!(cond), __LINE__, __VA_ARGS__)

static int quick;

#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

/* ---- pattern helpers: every block gets content derived from a seed ---- */

static unsigned char pattern_byte(uintptr_t seed, size_t i)
{
    uint64_t x = (uint64_t)seed * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (unsigned char)(x ^ (x >> 8));
}

static void fill(void *p, size_t n, uintptr_t seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = pattern_byte(seed, i);
}

/* Returns the index of the first wrong byte, or (size_t)-1. */
static size_t verify(const void *p, size_t n, uintptr_t seed)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != pattern_byte(seed, i))
            return i;
    return (size_t)-1;
}

/* Touches the first, the last and one byte per page: cheap for huge blocks. */
static void touch_sparse(void *p, size_t n, unsigned char v)
{
    unsigned char *b = p;
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i += 4096)
        b[i] = v;
    b[n - 1] = v;
}

static int is_aligned(const void *p, size_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

/* The alignment C requires of malloc(n): that of any type that fits. */
static size_t required_malloc_align(size_t n)
{
    size_t a = 1;
    while (a * 2 <= n && a < 16)
        a *= 2;
    return a;
}

/* Hides a pointer's provenance from the compiler, so it does not warn about
 * (or optimise) the use of a block after a realloc that failed. */
static void *launder(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

static const size_t PTRDIFF_MAX_Z = (size_t)PTRDIFF_MAX;

/* ------------------------------------------------------------------------ */

static void test_malloc_sizes(void)
{
    size_t limit = quick ? 1024 : 4096;
    /* Every small size: usable >= size, alignment, content round trip. */
    for (size_t n = 0; n <= limit; n++) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        if (!p)
            continue;
        CHECK(is_aligned(p, required_malloc_align(n)), "malloc(%zu)=%p misaligned", n, (void *)p);
        size_t us = malloc_usable_size(p);
        CHECK(us >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, us);
        fill(p, us, n);
        CHECK(verify(p, us, n) == (size_t)-1, "malloc(%zu) content lost", n);
        free(p);
    }
    /* Powers of two and their neighbours up to 64 MiB. */
    for (size_t n = 1; n <= (quick ? 4 * MiB : 64 * MiB); n *= 2) {
        size_t sizes[3] = {n - 1, n, n + 1};
        for (int k = 0; k < 3; k++) {
            size_t s = sizes[k];
            unsigned char *p = malloc(s);
            CHECK(p != NULL, "malloc(%zu) returned NULL", s);
            if (!p)
                continue;
            CHECK(is_aligned(p, required_malloc_align(s)), "malloc(%zu)=%p misaligned", s, (void *)p);
            CHECK(malloc_usable_size(p) >= s, "usable(malloc(%zu)) = %zu", s, malloc_usable_size(p));
            if (s <= 1 * MiB) {
                fill(p, s, s + 7);
                CHECK(verify(p, s, s + 7) == (size_t)-1, "malloc(%zu) content lost", s);
            } else {
                touch_sparse(p, s, 0x5a);
                CHECK(p[0] == 0x5a && p[s - 1] == 0x5a, "malloc(%zu) ends not writable", s);
            }
            free(p);
        }
    }
}

static void test_malloc_zero_and_null(void)
{
    enum { N = 256 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(0);
        CHECK(p[i] != NULL, "malloc(0) #%d returned NULL", i);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            CHECK(p[i] != p[j] || p[i] == NULL, "malloc(0) returned %p twice", p[i]);
    for (int i = 0; i < N; i++)
        free(p[i]);

    errno = 1234;
    free(NULL);
    CHECK(errno == 1234, "free(NULL) changed errno to %d", errno);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu", malloc_usable_size(NULL));

    void *z = calloc(0, 0);
    CHECK(z != NULL, "calloc(0, 0) returned NULL");
    free(z);
    z = calloc(0, 1000);
    CHECK(z != NULL, "calloc(0, 1000) returned NULL");
    free(z);
}

/* Size and overflow errors: NULL with ENOMEM, nothing else touched. */
static void test_overflow_errno(void)
{
    static const size_t huge[] = {PTRDIFF_MAX_Z + 1, SIZE_MAX, SIZE_MAX - 4095, PTRDIFF_MAX_Z};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        size_t n = huge[i];
        errno = 0;
        CHECK(malloc(n) == NULL && errno == ENOMEM, "malloc(%zu): want NULL/ENOMEM, errno=%d", n, errno);
        errno = 0;
        CHECK(calloc(1, n) == NULL && errno == ENOMEM, "calloc(1, %zu): want NULL/ENOMEM, errno=%d", n, errno);
        errno = 0;
        CHECK(calloc(n, 1) == NULL && errno == ENOMEM, "calloc(%zu, 1): want NULL/ENOMEM, errno=%d", n, errno);
        errno = 0;
        CHECK(realloc(NULL, n) == NULL && errno == ENOMEM, "realloc(NULL, %zu): errno=%d", n, errno);
        errno = 0;
        CHECK(valloc(n) == NULL && errno == ENOMEM, "valloc(%zu): errno=%d", n, errno);
        errno = 0;
        CHECK(pvalloc(n) == NULL && errno == ENOMEM, "pvalloc(%zu): errno=%d", n, errno);
        errno = 0;
        CHECK(memalign(64, n) == NULL && errno == ENOMEM, "memalign(64, %zu): errno=%d", n, errno);
        errno = 0;
        CHECK(aligned_alloc(4096, n) == NULL && errno == ENOMEM, "aligned_alloc(4096, %zu): errno=%d", n, errno);
        void *out = (void *)0x1234;
        errno = 0;
        int rc = posix_memalign(&out, 64, n);
        CHECK(rc == ENOMEM, "posix_memalign(64, %zu) returned %d, want ENOMEM", n, rc);
        CHECK(out == (void *)0x1234, "posix_memalign wrote *memptr on failure");
    }

    /* Sizes that fit in ptrdiff_t but not in this machine (64 TiB). */
    errno = 0;
    CHECK(malloc((size_t)1 << 46) == NULL && errno == ENOMEM, "malloc(64 TiB): errno=%d", errno);
    errno = 0;
    CHECK(calloc((size_t)1 << 23, (size_t)1 << 23) == NULL && errno == ENOMEM, "calloc(2^23, 2^23): errno=%d",
          errno);
    errno = 0;
    CHECK(memalign(1 << 20, (size_t)1 << 46) == NULL && errno == ENOMEM, "memalign(1 MiB, 64 TiB): errno=%d",
          errno);

    /* Multiplication overflow in calloc and reallocarray. */
    static const size_t pairs[][2] = {
        {SIZE_MAX, 2}, {2, SIZE_MAX}, {(size_t)1 << 32, (size_t)1 << 32},
        {SIZE_MAX / 2 + 1, 2}, {PTRDIFF_MAX_Z / 2 + 1, 2}, {3, SIZE_MAX / 3 + 1},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        size_t a = pairs[i][0], b = pairs[i][1];
        errno = 0;
        CHECK(calloc(a, b) == NULL && errno == ENOMEM, "calloc(%zu, %zu): want NULL/ENOMEM, errno=%d", a, b,
              errno);
        errno = 0;
        CHECK(reallocarray(NULL, a, b) == NULL && errno == ENOMEM, "reallocarray(NULL, %zu, %zu): errno=%d", a,
              b, errno);
        /* A failed reallocarray leaves the old block alone. */
        unsigned char *keep = malloc(100);
        fill(keep, 100, 77);
        errno = 0;
        CHECK(reallocarray(launder(keep), a, b) == NULL && errno == ENOMEM, "reallocarray(p, %zu, %zu): errno=%d", a, b,
              errno);
        CHECK(verify(keep, 100, 77) == (size_t)-1, "failed reallocarray damaged the block");
        free(keep);
    }

    /* A failed realloc leaves the old block alone too. */
    static const size_t grow[] = {SIZE_MAX, PTRDIFF_MAX_Z + 1, PTRDIFF_MAX_Z};
    for (size_t i = 0; i < sizeof grow / sizeof grow[0]; i++) {
        unsigned char *keep = malloc(1000);
        fill(keep, 1000, 99);
        errno = 0;
        CHECK(realloc(launder(keep), grow[i]) == NULL && errno == ENOMEM, "realloc(p, %zu): errno=%d", grow[i], errno);
        CHECK(verify(keep, 1000, 99) == (size_t)-1, "failed realloc(p, %zu) damaged the block", grow[i]);
        CHECK(malloc_usable_size(keep) >= 1000, "block shrank after failed realloc");
        free(keep);
    }

    /* reallocarray that fits works like realloc. */
    int *arr = reallocarray(NULL, 10, sizeof(int));
    CHECK(arr != NULL, "reallocarray(NULL, 10, 4) returned NULL");
    for (int i = 0; i < 10; i++)
        arr[i] = i * i;
    arr = reallocarray(arr, 100000, sizeof(int));
    CHECK(arr != NULL, "reallocarray grow returned NULL");
    int ok = 1;
    for (int i = 0; i < 10; i++)
        ok &= arr[i] == i * i;
    CHECK(ok, "reallocarray lost contents");
    errno = 0;
    CHECK(reallocarray(arr, 0, 4) == NULL && errno == 0, "reallocarray(p, 0, 4): glibc frees and returns NULL");
}

static void test_calloc_zero(void)
{
    static const size_t sizes[] = {1, 8, 15, 16, 24, 100, 512, 1000, 4096, 5000, 65536, 100000, 262144,
                                   300000, 1048576, 4194304, 9000000};
    int rounds = quick ? 2 : 8;
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            size_t n = sizes[i];
            /* Dirty blocks of this size so calloc gets recycled memory. */
            unsigned char *d[4];
            for (int k = 0; k < 4; k++) {
                d[k] = malloc(n);
                memset(d[k], 0xA5, malloc_usable_size(d[k]));
            }
            for (int k = 0; k < 4; k++)
                free(d[k]);
            for (int k = 0; k < 4; k++) {
                unsigned char *p = calloc(n, 1);
                CHECK(p != NULL, "calloc(%zu, 1) returned NULL", n);
                if (!p)
                    continue;
                size_t nonzero = (size_t)-1;
                for (size_t j = 0; j < n; j++)
                    if (p[j]) {
                        nonzero = j;
                        break;
                    }
                CHECK(nonzero == (size_t)-1, "calloc(%zu) byte %zu not zero", n, nonzero);
                d[k] = p;
                memset(p, 0xA5, n);
            }
            for (int k = 0; k < 4; k++)
                free(d[k]);
        }
    }
    /* calloc(n, size) with a product that fits. */
    uint64_t *q = calloc(12345, sizeof(uint64_t));
    CHECK(q != NULL, "calloc(12345, 8) returned NULL");
    uint64_t acc = 0;
    for (int i = 0; i < 12345; i++)
        acc |= q[i];
    CHECK(acc == 0, "calloc(12345, 8) not zeroed");
    CHECK(malloc_usable_size(q) >= 12345 * sizeof(uint64_t), "calloc usable size too small");
    free(q);
}

static void test_realloc(void)
{
    /* realloc(NULL, n) = malloc(n); realloc(NULL, 0) = malloc(0). */
    void *p = realloc(NULL, 0);
    CHECK(p != NULL, "realloc(NULL, 0) returned NULL (glibc: malloc(0))");
    free(p);
    p = realloc(NULL, 100);
    CHECK(p != NULL && malloc_usable_size(p) >= 100, "realloc(NULL, 100)");
    /* realloc(p, 0): frees, returns NULL, errno untouched (glibc). */
    errno = 4321;
    CHECK(realloc(p, 0) == NULL, "realloc(p, 0) did not return NULL");
    CHECK(errno == 4321, "realloc(p, 0) changed errno to %d", errno);

    /* Growth then shrink, contents preserved at every step. */
    size_t top = quick ? 2 * MiB : 16 * MiB;
    unsigned char *b = NULL;
    size_t have = 0;
    for (size_t n = 1; n <= top; n = n * 3 / 2 + 1) {
        unsigned char *nb = realloc(b, n);
        CHECK(nb != NULL, "realloc grow to %zu returned NULL", n);
        if (!nb)
            break;
        size_t bad = verify(nb, have, 4242);
        CHECK(bad == (size_t)-1, "realloc grow %zu -> %zu lost byte %zu", have, n, bad);
        CHECK(malloc_usable_size(nb) >= n, "realloc(%zu) usable %zu", n, malloc_usable_size(nb));
        fill(nb, n, 4242);
        b = nb;
        have = n;
    }
    for (size_t n = have; n > 0; n = n / 2) {
        unsigned char *nb = realloc(b, n);
        CHECK(nb != NULL, "realloc shrink to %zu returned NULL", n);
        if (!nb)
            break;
        size_t bad = verify(nb, n, 4242);
        CHECK(bad == (size_t)-1, "realloc shrink to %zu lost byte %zu", n, bad);
        CHECK(malloc_usable_size(nb) >= n, "realloc shrink usable");
        b = nb;
    }
    free(b);

    /* Many interleaved blocks reallocated at random: no block clobbers another. */
    enum { M = 64 };
    unsigned char *blk[M] = {0};
    size_t len[M] = {0};
    unsigned rnd = 12345;
    int steps = quick ? 2000 : 20000;
    for (int s = 0; s < steps; s++) {
        rnd = rnd * 1103515245u + 12345u;
        int i = (rnd >> 8) % M;
        size_t n = 1 + ((rnd >> 16) % (((rnd >> 3) & 7) == 0 ? 300000 : 2000));
        if (blk[i]) {
            size_t bad = verify(blk[i], len[i], (uintptr_t)i * 1000003u + len[i]);
            CHECK(bad == (size_t)-1, "block %d (%zu bytes) damaged at %zu", i, len[i], bad);
        }
        unsigned char *nb = realloc(blk[i], n);
        CHECK(nb != NULL, "realloc(%zu) returned NULL", n);
        if (!nb)
            continue;
        if (blk[i]) {
            size_t keep = len[i] < n ? len[i] : n;
            size_t bad = verify(nb, keep, (uintptr_t)i * 1000003u + len[i]);
            CHECK(bad == (size_t)-1, "realloc %zu -> %zu lost byte %zu", len[i], n, bad);
        }
        blk[i] = nb;
        len[i] = n;
        fill(nb, n, (uintptr_t)i * 1000003u + n);
    }
    for (int i = 0; i < M; i++) {
        if (blk[i])
            CHECK(verify(blk[i], len[i], (uintptr_t)i * 1000003u + len[i]) == (size_t)-1, "final block %d", i);
        free(blk[i]);
    }
}

/* Checks a block `api`(a, n) returned: not NULL, aligned to `align`, at
 * least n usable bytes; fills it with the pattern of `seed`. Returns
 * whether there is a block. */
static int check_aligned_block(unsigned char *p, const char *api, size_t a, size_t n, size_t align,
                               uintptr_t seed)
{
    CHECK(p != NULL, "%s(%zu, %zu) returned NULL", api, a, n);
    if (!p)
        return 0;
    CHECK(is_aligned(p, align), "%s(%zu, %zu) = %p misaligned", api, a, n, (void *)p);
    CHECK(malloc_usable_size(p) >= n, "%s usable", api);
    fill(p, n, seed);
    return 1;
}

/* Every power-of-two alignment up to 1 MiB through every aligned API. */
static void test_alignment(void)
{
    for (size_t a = 1; a <= 1 * MiB; a *= 2) {
        size_t sizes[] = {0, 1, a > 1 ? a - 1 : 1, a, a + 1, 3 * a + 5, 100};
        for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
            size_t n = sizes[k];
            unsigned char *p;
            size_t want = a < 16 ? 16 : a;

            if (a >= sizeof(void *)) {
                void *out = NULL;
                int rc = posix_memalign(&out, a, n);
                CHECK(rc == 0 && out != NULL, "posix_memalign(%zu, %zu) = %d", a, n, rc);
                p = out;
                if (p) {
                    CHECK(is_aligned(p, a), "posix_memalign(%zu, %zu) = %p misaligned", a, n, (void *)p);
                    CHECK(malloc_usable_size(p) >= n, "posix_memalign(%zu, %zu) usable %zu", a, n,
                          malloc_usable_size(p));
                    fill(p, n, a + n);
                    CHECK(verify(p, n, a + n) == (size_t)-1, "posix_memalign block content");
                    free(p);
                }
            }

            p = aligned_alloc(a, n);
            if (check_aligned_block(p, "aligned_alloc", a, n, a, a ^ n)) {
                CHECK(verify(p, n, a ^ n) == (size_t)-1, "aligned_alloc block content");
                if (free_aligned_sized && n > 0)
                    free_aligned_sized(p, a, n);
                else
                    free(p);
            }

            p = memalign(a, n);
            if (check_aligned_block(p, "memalign", a, n, want, a * 3 + n)) {
                /* An aligned block survives realloc with its contents. */
                unsigned char *r = realloc(p, n + 1000);
                CHECK(r != NULL, "realloc of memalign(%zu) block", a);
                if (r) {
                    CHECK(verify(r, n, a * 3 + n) == (size_t)-1, "realloc of aligned block lost contents");
                    p = r;
                }
                free(p);
            }
        }
    }

    /* Many live aligned blocks at once: no overlap. */
    enum { L = 200 };
    unsigned char *live[L];
    size_t la[L];
    for (int i = 0; i < L; i++) {
        la[i] = (size_t)1 << (4 + i % 13); /* 16 .. 64 KiB */
        live[i] = aligned_alloc(la[i], 24 + (size_t)i * 7);
        CHECK(live[i] && is_aligned(live[i], la[i]), "live aligned_alloc(%zu)", la[i]);
        if (live[i])
            fill(live[i], 24 + (size_t)i * 7, (uintptr_t)i);
    }
    for (int i = 0; i < L; i++) {
        if (!live[i])
            continue;
        CHECK(verify(live[i], 24 + (size_t)i * 7, (uintptr_t)i) == (size_t)-1, "live aligned block %d damaged", i);
        free(live[i]);
    }
}

/* The argument rules of glibc 2.36, one by one. */
static void test_alignment_errors(void)
{
    /* posix_memalign: EINVAL unless a power of two multiple of sizeof(void*);
     * *memptr untouched; errno not required. */
    static const size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 96, 1000, 4097, SIZE_MAX, SIZE_MAX / 2 + 2,
                                 ((size_t)1 << 63) + 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *out = (void *)0xdeadbeef;
        int rc = posix_memalign(&out, bad[i], 16);
        CHECK(rc == EINVAL, "posix_memalign(align=%zu) returned %d, want EINVAL", bad[i], rc);
        CHECK(out == (void *)0xdeadbeef, "posix_memalign(align=%zu) wrote *memptr on failure", bad[i]);
    }
    {
        void *out = (void *)0xdeadbeef;
        int rc = posix_memalign(&out, (size_t)1 << 63, 1);
        CHECK(rc == ENOMEM, "posix_memalign(2^63, 1) returned %d, want ENOMEM (glibc)", rc);
        CHECK(out == (void *)0xdeadbeef, "posix_memalign(2^63) wrote *memptr on failure");
    }
    {
        void *out = NULL;
        int rc = posix_memalign(&out, sizeof(void *), 0);
        CHECK(rc == 0 && out != NULL, "posix_memalign(8, 0) = %d, %p: want a unique block", rc, out);
        free(out);
    }

    /* memalign (glibc 2.36): alignment <= 16 is malloc, a non-power of two
     * is rounded up, > SIZE_MAX/2+1 is EINVAL. aligned_alloc: the same for
     * a power of two, EINVAL otherwise (C17, glibc >= 2.38). */
    static const struct {
        size_t align, want;
    } round_up[] = {{0, 16}, {1, 16}, {3, 16}, {12, 16}, {17, 32}, {24, 32}, {33, 64}, {48, 64},
                    {100, 128}, {1000, 1024}, {4097, 8192}, {65535, 65536}, {(1 << 20) + 1, 1 << 21}};
    for (size_t i = 0; i < sizeof round_up / sizeof round_up[0]; i++) {
        size_t a = round_up[i].align, want = round_up[i].want;
        errno = 0;
        void *p = memalign(a, 40);
        CHECK(p != NULL && is_aligned(p, want), "memalign(%zu, 40) = %p: want %zu-aligned", a, p, want);
        if (p)
            memset(p, 1, 40);
        free(p);
        errno = 0;
        p = aligned_alloc(a, 40);
        if (a != 0 && (a & (a - 1)) == 0)
            CHECK(p != NULL && is_aligned(p, want), "aligned_alloc(%zu, 40) = %p: want %zu-aligned", a, p, want);
        else /* C17, glibc >= 2.38: not a power of two is invalid */
            CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 40) = %p, errno %d: want NULL/EINVAL", a, p,
                  errno);
        free(p);
    }
    static const size_t einval[] = {SIZE_MAX, SIZE_MAX / 2 + 2, ((size_t)1 << 63) + 1, SIZE_MAX - 4095};
    for (size_t i = 0; i < sizeof einval / sizeof einval[0]; i++) {
        errno = 0;
        CHECK(memalign(einval[i], 1) == NULL && errno == EINVAL, "memalign(%zu, 1): errno=%d, want EINVAL",
              einval[i], errno);
        errno = 0;
        CHECK(aligned_alloc(einval[i], 1) == NULL && errno == EINVAL, "aligned_alloc(%zu, 1): errno=%d",
              einval[i], errno);
    }
    errno = 0;
    CHECK(memalign((size_t)1 << 63, 1) == NULL && errno == ENOMEM, "memalign(2^63, 1): errno=%d, want ENOMEM",
          errno);
    errno = 0;
    CHECK(aligned_alloc((size_t)1 << 62, 1) == NULL && errno == ENOMEM,
          "aligned_alloc(2^62, 1): errno=%d, want ENOMEM", errno);
}

static void test_page_allocs(void)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 10000, 65536, 1 << 20, (1 << 22) + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *p = valloc(n);
        CHECK(p != NULL && is_aligned(p, page), "valloc(%zu) = %p", n, (void *)p);
        if (p) {
            CHECK(malloc_usable_size(p) >= n, "valloc(%zu) usable %zu", n, malloc_usable_size(p));
            touch_sparse(p, n, 3);
            free(p);
        }
        p = pvalloc(n);
        size_t rounded = n == 0 ? page : (n + page - 1) / page * page;
        CHECK(p != NULL && is_aligned(p, page), "pvalloc(%zu) = %p", n, (void *)p);
        if (p) {
            CHECK(malloc_usable_size(p) >= rounded, "pvalloc(%zu) usable %zu < %zu", n, malloc_usable_size(p),
                  rounded);
            touch_sparse(p, rounded, 4);
            free(p);
        }
    }
}

static void test_sized_free_and_misc(void)
{
    CHECK(free_sized != NULL, "free_sized is not exported");
    CHECK(free_aligned_sized != NULL, "free_aligned_sized is not exported");
    if (free_sized) {
        free_sized(NULL, 0);
        free_sized(NULL, 100);
        for (size_t n = 1; n <= 1 * MiB; n = n * 2 + 3) {
            void *p = malloc(n);
            memset(p, 7, n);
            free_sized(p, n);
            p = calloc(n, 1);
            free_sized(p, n);
        }
        void *z = malloc(0);
        free_sized(z, 0);
        /* A realloc'd block is freed with its new size. */
        void *r = malloc(10);
        r = realloc(r, 5000);
        free_sized(r, 5000);
    }
    if (free_aligned_sized) {
        free_aligned_sized(NULL, 64, 64);
        for (size_t a = 16; a <= 64 * KiB; a *= 4) {
            void *p = aligned_alloc(a, 3 * a);
            CHECK(p && is_aligned(p, a), "aligned_alloc(%zu)", a);
            free_aligned_sized(p, a, 3 * a);
        }
    }

    /* mallopt: glibc's parameters are accepted (1) and ignored. */
    CHECK(mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1, "mallopt(M_TRIM_THRESHOLD)");
    CHECK(mallopt(M_TOP_PAD, 0) == 1, "mallopt(M_TOP_PAD)");
    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "mallopt(M_MMAP_THRESHOLD)");
    CHECK(mallopt(M_MMAP_MAX, 100) == 1, "mallopt(M_MMAP_MAX)");
    CHECK(mallopt(M_ARENA_MAX, 2) == 1, "mallopt(M_ARENA_MAX)");
    CHECK(mallopt(M_ARENA_TEST, 2) == 1, "mallopt(M_ARENA_TEST)");
    CHECK(mallopt(M_PERTURB, 0) == 1, "mallopt(M_PERTURB)");
    CHECK(mallopt(M_CHECK_ACTION, 3) == 1, "mallopt(M_CHECK_ACTION)");
    CHECK(mallopt(M_MXFAST, 64) == 1, "mallopt(M_MXFAST, 64)");
    CHECK(mallopt(M_MXFAST, 1000) == 0, "mallopt(M_MXFAST, 1000): glibc rejects > 160");
    CHECK(mallopt(12345, 1) == 0, "mallopt(unknown) should return 0");

    /* mallinfo2 sees a large live block; malloc_trim runs; malloc_stats prints. */
    size_t big = 8 * MiB;
    unsigned char *p = malloc(big);
    touch_sparse(p, big, 1);
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.uordblks + mi.hblkhd >= big, "mallinfo2: uordblks %zu + hblkhd %zu < live %zu", mi.uordblks,
          mi.hblkhd, big);
    CHECK(mi.arena + mi.hblkhd >= mi.uordblks, "mallinfo2: arena %zu + hblkhd %zu < uordblks %zu", mi.arena,
          mi.hblkhd, mi.uordblks);
    /* The deprecated int version agrees (values are small here). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo old = mallinfo();
#pragma GCC diagnostic pop
    CHECK((size_t)old.hblkhd + (size_t)old.uordblks >= big, "mallinfo: uordblks %d + hblkhd %d < live %zu",
          old.uordblks, old.hblkhd, big);
    free(p);
    for (int i = 0; i < 1000; i++)
        free(malloc(50000));
    int t = malloc_trim(0);
    CHECK(t == 0 || t == 1, "malloc_trim returned %d", t);
    malloc_stats();
}

/* Blocks that libc allocates internally are ours too (libc's calls to
 * malloc are interposed): freeing or growing them here must work. */
static void test_libc_internal_allocations(void)
{
    char *s = strdup("rseq-malloc strdup");
    CHECK(s && strcmp(s, "rseq-malloc strdup") == 0 && malloc_usable_size(s) >= 19, "strdup");
    s = realloc(s, 100000);
    CHECK(s && strcmp(s, "rseq-malloc strdup") == 0, "realloc of a strdup block");
    free(s);

    char *a = NULL;
    int n = asprintf(&a, "%s-%d-%0500d", "asprintf", 42, 7);
    CHECK(n == 512 && a && strncmp(a, "asprintf-42-", 12) == 0, "asprintf returned %d", n);
    free(a);

    char *buf = NULL;
    size_t len = 0;
    FILE *ms = open_memstream(&buf, &len);
    CHECK(ms != NULL, "open_memstream");
    if (ms) {
        for (int i = 0; i < 10000; i++)
            fprintf(ms, "line %d\n", i);
        fclose(ms);
        CHECK(len > 60000 && buf && strncmp(buf, "line 0\nline 1\n", 14) == 0, "open_memstream contents");
        free(buf);
    }

    FILE *f = fopen("/proc/self/maps", "r");
    CHECK(f != NULL, "fopen /proc/self/maps");
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        int lines = 0;
        while (getline(&line, &cap, f) > 0)
            lines++;
        CHECK(lines > 5, "getline read %d lines", lines);
        free(line);
        fclose(f);
    }
}

/* ---- threads: blocks allocated in one thread, checked and freed in another ---- */

#define NTHREADS 4
#define RING 1024

struct ring {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void *slot[RING];
    size_t len[RING];
    uintptr_t seed[RING];
    unsigned head, tail;
    int done;
};

static struct ring rings[NTHREADS];
static unsigned long freed_remote[NTHREADS];
static unsigned long damaged;

static void ring_push(struct ring *r, void *p, size_t n, uintptr_t seed)
{
    pthread_mutex_lock(&r->lock);
    while (r->tail - r->head == RING)
        pthread_cond_wait(&r->cond, &r->lock);
    r->slot[r->tail % RING] = p;
    r->len[r->tail % RING] = n;
    r->seed[r->tail % RING] = seed;
    r->tail++;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Returns 0 when the ring is closed and empty. */
static int ring_pop(struct ring *r, void **p, size_t *n, uintptr_t *seed)
{
    pthread_mutex_lock(&r->lock);
    while (r->tail == r->head && !r->done)
        pthread_cond_wait(&r->cond, &r->lock);
    if (r->tail == r->head) {
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    *p = r->slot[r->head % RING];
    *n = r->len[r->head % RING];
    *seed = r->seed[r->head % RING];
    r->head++;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return 1;
}

static unsigned long per_thread_iters;

/* Producer: allocates blocks, keeps some locally (checked and freed here),
 * sends the rest to the next thread's consumer. */
static void *producer(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned rnd = 777u + (unsigned)id;
    enum { LOCAL = 128 };
    unsigned char *local[LOCAL] = {0};
    size_t llen[LOCAL] = {0};
    for (unsigned long i = 0; i < per_thread_iters; i++) {
        rnd = rnd * 1664525u + 1013904223u;
        size_t n = (rnd >> 20) % ((rnd & 0xF0) == 0 ? 20000 : 512);
        uintptr_t seed = ((uintptr_t)id << 40) ^ i;
        unsigned char *p = (rnd & 1) ? malloc(n) : calloc(1, n);
        if (!p) {
            __atomic_add_fetch(&damaged, 1, __ATOMIC_RELAXED);
            continue;
        }
        fill(p, n, seed);
        if (rnd & 2) {
            ring_push(&rings[(id + 1) % NTHREADS], p, n, seed);
        } else {
            unsigned k = (rnd >> 4) % LOCAL;
            if (local[k]) {
                if (verify(local[k], llen[k], (uintptr_t)k * 31 + llen[k]) != (size_t)-1)
                    __atomic_add_fetch(&damaged, 1, __ATOMIC_RELAXED);
                free(local[k]);
            }
            fill(p, n, (uintptr_t)k * 31 + n);
            local[k] = p;
            llen[k] = n;
        }
    }
    for (unsigned k = 0; k < LOCAL; k++) {
        if (local[k] && verify(local[k], llen[k], (uintptr_t)k * 31 + llen[k]) != (size_t)-1)
            __atomic_add_fetch(&damaged, 1, __ATOMIC_RELAXED);
        free(local[k]);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    int id = (int)(intptr_t)arg;
    void *p;
    size_t n;
    uintptr_t seed;
    while (ring_pop(&rings[id], &p, &n, &seed)) {
        if (verify(p, n, seed) != (size_t)-1)
            __atomic_add_fetch(&damaged, 1, __ATOMIC_RELAXED);
        /* Every other remote block is grown first, then freed. */
        if (seed & 1) {
            p = realloc(p, n + 100);
            if (!p || verify(p, n, seed) != (size_t)-1)
                __atomic_add_fetch(&damaged, 1, __ATOMIC_RELAXED);
        }
        free(p);
        freed_remote[id]++;
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t prod[NTHREADS], cons[NTHREADS];
    per_thread_iters = quick ? 5000 : 60000;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_mutex_init(&rings[i].lock, NULL);
        pthread_cond_init(&rings[i].cond, NULL);
    }
    for (int i = 0; i < NTHREADS; i++) {
        CHECK(pthread_create(&cons[i], NULL, consumer, (void *)(intptr_t)i) == 0, "pthread_create");
        CHECK(pthread_create(&prod[i], NULL, producer, (void *)(intptr_t)i) == 0, "pthread_create");
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(prod[i], NULL);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_mutex_lock(&rings[i].lock);
        rings[i].done = 1;
        pthread_cond_broadcast(&rings[i].cond);
        pthread_mutex_unlock(&rings[i].lock);
    }
    unsigned long total_remote = 0, pushed = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(cons[i], NULL);
        total_remote += freed_remote[i];
        pushed += rings[i].tail;
    }
    CHECK(damaged == 0, "threads: %lu blocks damaged or not allocated", damaged);
    CHECK(total_remote == pushed, "threads: %lu blocks sent, %lu freed remotely", pushed, total_remote);
    CHECK(pushed > per_thread_iters, "threads: only %lu blocks crossed threads", pushed);
}

/* Many live blocks of mixed sizes, freed in a scrambled order. */
static void test_many_live(void)
{
    size_t count = quick ? 5000 : 100000;
    unsigned char **b = malloc(count * sizeof *b);
    size_t *n = malloc(count * sizeof *n);
    CHECK(b && n, "index arrays");
    if (!b || !n)
        return;
    unsigned rnd = 42;
    for (size_t i = 0; i < count; i++) {
        rnd = rnd * 1103515245u + 12345u;
        n[i] = (rnd >> 16) % ((i % 97) == 0 ? 40000 : 300);
        b[i] = malloc(n[i]);
        CHECK(b[i] != NULL, "malloc(%zu) in many_live", n[i]);
        if (b[i])
            fill(b[i], n[i], i);
    }
    size_t bad = 0;
    for (size_t i = 0; i < count; i++)
        if (b[i] && verify(b[i], n[i], i) != (size_t)-1)
            bad++;
    CHECK(bad == 0, "many_live: %zu of %zu blocks damaged", bad, count);
    for (size_t k = 0; k < count; k++) {
        size_t i = (k * 7919) % count; /* 7919 is prime: a permutation when count % 7919 != 0 */
        free(b[i]);
        b[i] = NULL;
    }
    for (size_t i = 0; i < count; i++)
        free(b[i]);
    free(b);
    free(n);
}

int main(int argc, char **argv)
{
    quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    setvbuf(stdout, NULL, _IONBF, 0);

    test_malloc_zero_and_null();
    test_malloc_sizes();
    test_overflow_errno();
    test_calloc_zero();
    test_realloc();
    test_alignment();
    test_alignment_errors();
    test_page_allocs();
    test_sized_free_and_misc();
    test_libc_internal_allocations();
    test_many_live();
    test_threads();

    printf("conformance: %lu checks, %lu failures\n", checks, failures);
    if (failures) {
        fprintf(stderr, "conformance: FAILED (%lu of %lu checks)\n", failures, checks);
        return 1;
    }
    return 0;
}
