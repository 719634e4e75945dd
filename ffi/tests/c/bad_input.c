/*
 * Bad input to the allocator, one case per run: bad_input <case>.
 *
 * Before the bad call the program fills and verifies a set of live blocks
 * and prints "heap intact: N blocks verified" and "bad pointer: 0x...";
 * then it makes the bad call, which must print
 * "rseq-malloc: <who>: invalid pointer 0x..." and abort (SIGABRT). If the
 * call returns, the program prints "NOT REACHED" and exits 3.
 *
 * Cases: stack global interior interior_medium interior_large
 *        double_medium double_large realloc_stack realloc_interior
 *        realloc_zero_stack foreign usable_stack
 *        double_small:SIZE double_after:SIZE double_thread:SIZE
 *        realloc_freed:SIZE free_sized_wrong tail_waste
 * (medium: a block of pages from the page heap; large: a direct mapping;
 * small: a size-class block, whose double free must print
 * "rseq-malloc: <who>: double free 0x..." instead.)
 *
 * marked_live: not a bad call: live blocks whose first word holds the
 * allocator's free mark (read back from a freed block) are freed in a long
 * random workload; must exit 0 printing "marked ok: N frees".
 *
 * far_blocks: not a bad call: small blocks in a GiB other than the first
 * heap block's (the page map's first leaf: `free` finds them through the
 * root) are filled, freed and allocated again; must exit 0 printing
 * "far ok: N blocks". interior_far and double_far are the bad calls on
 * such a block.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dlfcn.h>

/* glibc's own heap, for a foreign pointer: looked up in libc.so.6 itself
 * (the preloaded library exports __libc_malloc too, and would win a plain
 * reference). */
static void *glibc_malloc(size_t n)
{
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    void *(*f)(size_t) = libc ? (void *(*)(size_t))dlsym(libc, "malloc") : NULL;
    if (!f) {
        fprintf(stderr, "cannot find glibc's malloc: %s\n", dlerror());
        exit(2);
    }
    return f(n);
}

static void *launder(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

enum { LIVE = 1000 };
static unsigned char *live[LIVE];
static char global_buf[256] __attribute__((aligned(64)));

static size_t live_size(int i) { return 1 + (size_t)(i * 37) % 3000; }

static void make_heap(void)
{
    for (int i = 0; i < LIVE; i++) {
        live[i] = malloc(live_size(i));
        if (!live[i]) {
            printf("malloc failed\n");
            exit(2);
        }
        memset(live[i], (unsigned char)(i * 7 + 1), live_size(i));
    }
}

static void check_heap(void)
{
    int ok = 0;
    for (int i = 0; i < LIVE; i++) {
        size_t n = live_size(i), j;
        for (j = 0; j < n && live[i][j] == (unsigned char)(i * 7 + 1); j++)
            ;
        ok += j == n;
    }
    printf("heap intact: %d blocks verified\n", ok);
}

static void *second_free(void *p)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(1, &set);
    sched_setaffinity(0, sizeof set, &set);
    free(launder(p));
    return NULL;
}


/* A small block of `size` whose GiB differs from `first`'s: untouched
 * 256 KiB blocks (page-heap spans, kept for ever) push the heap on until a
 * new small span lands in another GiB. Exits 2 if 4 GiB are not enough. */
static unsigned char *far_small(const void *first, size_t size)
{
    for (long i = 0; i < 16384; i++) {
        if (!malloc(256 << 10))
            break;
        unsigned char *p = malloc(size);
        if (p && ((uintptr_t)p >> 30) != ((uintptr_t)first >> 30))
            return p;
    }
    printf("no small block outside the first GiB\n");
    exit(2);
}

/* Pins the caller to CPU 0, so that freed blocks come back from the same
 * per-CPU cache. */
static void pin_cpu0(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static int far_blocks(void)
{
    enum { N = 16, SIZE = 48 };
    pin_cpu0();
    unsigned char *near = malloc(SIZE), *far[N], *again[N];
    far[0] = far_small(near, SIZE);
    for (int i = 1; i < N; i++)
        far[i] = malloc(SIZE);
    int n_far = 0;
    for (int i = 0; i < N; i++) {
        n_far += ((uintptr_t)far[i] >> 30) != ((uintptr_t)near >> 30);
        memset(far[i], i + 1, SIZE);
    }
    for (int i = 0; i < N; i += 2)
        free(launder(far[i]));
    for (int i = 1; i < N; i += 2)
        for (int j = 0; j < SIZE; j++)
            if (far[i][j] != (unsigned char)(i + 1)) {
                printf("block %d byte %d changed\n", i, j);
                return 4;
            }
    /* The freed blocks come back, each once (this CPU's cache, LIFO). */
    for (int i = 0; i < N / 2; i++) {
        again[i] = malloc(SIZE);
        int found = 0;
        for (int k = 0; k < N; k += 2)
            found += again[i] == far[k];
        for (int k = 0; k < i; k++)
            found += again[k] == again[i] ? 100 : 0;
        if (found != 1) {
            printf("malloc %d gave %p, not one of the freed far blocks\n", i, (void *)again[i]);
            return 5;
        }
    }
    for (int i = 0; i < N / 2; i++)
        free(again[i]);
    for (int i = 1; i < N; i += 2)
        free(far[i]);
    free(near);
    printf("far ok: %d blocks\n", n_far);
    return 0;
}

static int marked_live(void)
{
    void *probe = malloc(64);
    free(launder(probe));
    uint64_t key = *(volatile uint64_t *)probe & ~(uint64_t)0xffffff;
    enum { N = 2000 };
    static unsigned char *blk[N];
    static size_t sz[N];
    uint64_t r = 88172645463325252ull;
    long frees = 0;
    for (long round = 0; round < 200000; round++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int i = (int)(r % N);
        if (!blk[i]) {
            sz[i] = 8 + (r >> 20) % 5000;
            blk[i] = malloc(sz[i]);
            if (!blk[i])
                return 2;
            memset(blk[i] + 8, (int)(i & 0xff), sz[i] - 8);
        } else {
            for (size_t j = 8; j < sz[i]; j++)
                if (blk[i][j] != (unsigned char)(i & 0xff)) {
                    printf("block %d byte %zu changed\n", i, j);
                    return 4;
                }
            uint64_t w = (r & 1) ? key : key | ((r >> 8) & 0xffffff);
            memcpy(blk[i], &w, 8);
            free(blk[i]);
            blk[i] = NULL;
            frees++;
        }
    }
    printf("marked ok: %ld frees\n", frees);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: bad_input <case>\n");
        return 2;
    }
    char name[64];
    const char *c = argv[1];
    const char *colon = strchr(c, ':');
    size_t size = colon ? strtoul(colon + 1, NULL, 10) : 64;
    snprintf(name, sizeof name, "%.*s", colon ? (int)(colon - c) : 63, c);
    c = name;
    if (!strcmp(c, "marked_live"))
        return marked_live();
    if (!strcmp(c, "far_blocks"))
        return far_blocks();
    char stack_buf[256] __attribute__((aligned(64)));
    memset(stack_buf, 1, sizeof stack_buf);
    global_buf[0] = 1;
    make_heap();

    void *bad;
    int use_realloc = 0, use_usable = 0, use_thread = 0, use_sized = 0;
    if (!strcmp(c, "stack")) {
        bad = stack_buf + 64;
    } else if (!strcmp(c, "global")) {
        bad = global_buf;
    } else if (!strcmp(c, "interior")) {
        bad = (char *)malloc(100) + 16;
    } else if (!strcmp(c, "interior_medium")) {
        bad = (char *)malloc(400 << 10) + 8192;
    } else if (!strcmp(c, "interior_large")) {
        bad = (char *)malloc(1 << 20) + 4096;
    } else if (!strcmp(c, "double_medium")) {
        bad = malloc(500 << 10);
        free(launder(bad));
    } else if (!strcmp(c, "double_large")) {
        bad = malloc(8 << 20);
        free(launder(bad));
    } else if (!strcmp(c, "realloc_stack")) {
        bad = stack_buf + 64;
        use_realloc = 1;
    } else if (!strcmp(c, "realloc_interior")) {
        bad = (char *)malloc(100) + 32;
        use_realloc = 1;
    } else if (!strcmp(c, "realloc_zero_stack")) {
        bad = stack_buf + 64;
        use_realloc = 2; /* realloc(p, 0): frees p, so p is checked too */
    } else if (!strcmp(c, "double_small")) {
        bad = malloc(size);
        free(launder(bad));
    } else if (!strcmp(c, "double_after")) {
        enum { OTHERS = 20000 };
        static void *others[OTHERS];
        for (int i = 0; i < OTHERS; i++)
            others[i] = malloc(size);
        bad = malloc(size);
        free(launder(bad));
        for (int i = 0; i < OTHERS; i++)
            free(others[i]);
    } else if (!strcmp(c, "double_thread")) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        sched_setaffinity(0, sizeof set, &set);
        bad = malloc(size);
        free(launder(bad));
        use_thread = 1;
    } else if (!strcmp(c, "realloc_freed")) {
        bad = malloc(size);
        free(launder(bad));
        use_realloc = 1;
    } else if (!strcmp(c, "free_sized_wrong")) {
        bad = malloc(100);
        use_sized = 1;
    } else if (!strcmp(c, "tail_waste")) {
        /* 640 B objects: a one-page span holds 12 (7680 B); offset 7680
         * is a multiple of 640 but tail waste, never an object start. */
        char *p = malloc(640);
        bad = p - ((uintptr_t)p & 8191) + 12 * 640;
    } else if (!strcmp(c, "interior_far")) {
        bad = far_small(live[0], 100) + 16;
    } else if (!strcmp(c, "double_far")) {
        bad = far_small(live[0], 100);
        free(launder(bad));
    } else if (!strcmp(c, "foreign")) {
        bad = glibc_malloc(100);
    } else if (!strcmp(c, "usable_stack")) {
        bad = stack_buf + 64;
        use_usable = 1;
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    check_heap();
    printf("bad pointer: %p\n", bad);
    if (use_thread) {
        pthread_t t;
        pthread_create(&t, NULL, second_free, bad);
        pthread_join(t, NULL);
    } else if (use_sized) {
        /* glibc 2.36 has no free_sized: the preloaded library's. */
        void (*fs)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
        if (!fs) {
            printf("no free_sized\n");
            return 2;
        }
        fs(launder(bad), 5000);
    }
    else if (use_realloc)
        launder(realloc(launder(bad), use_realloc == 2 ? 0 : 200));
    else if (use_usable)
        printf("usable %zu\n", malloc_usable_size(launder(bad)));
    else
        free(launder(bad));
    printf("NOT REACHED\n");
    return 3;
}
