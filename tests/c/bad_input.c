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
 * (medium: a block of pages from the page heap; large: a direct mapping.
 * A double free of a small block sitting in a per-CPU cache is not
 * detectable without a cost on the fast path, so it is not a case here.)
 */
#define _GNU_SOURCE
#include <malloc.h>
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

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: bad_input <case>\n");
        return 2;
    }
    const char *c = argv[1];
    char stack_buf[256] __attribute__((aligned(64)));
    memset(stack_buf, 1, sizeof stack_buf);
    global_buf[0] = 1;
    make_heap();

    void *bad;
    int use_realloc = 0, use_usable = 0;
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
    if (use_realloc)
        launder(realloc(launder(bad), use_realloc == 2 ? 0 : 200));
    else if (use_usable)
        printf("usable %zu\n", malloc_usable_size(launder(bad)));
    else
        free(launder(bad));
    printf("NOT REACHED\n");
    return 3;
}
