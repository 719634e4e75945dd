/* Allocation under an address-space limit (RLIMIT_AS), for
 * ffi/tests/ffi_as_limit.rs. Run with and without LD_PRELOAD; the test
 * compares the totals.
 *
 *   as_limit fill LIMIT_MIB BLOCK_BYTES
 *       Sets RLIMIT_AS to LIMIT_MIB MiB, then mallocs blocks of BLOCK_BYTES
 *       (linked through their first word) until malloc returns NULL (which
 *       must come with errno ENOMEM), frees them all, and fills again
 *       (recovery). Prints "fill N1 refill N2 bytes B1".
 *   as_limit cross LIMIT_MIB BLOCK_BYTES OTHER_BYTES
 *       Like fill, but the second fill uses blocks of OTHER_BYTES (address
 *       space held by free blocks of one size serves another).
 *   as_limit thread LIMIT_MIB
 *       Allocates a little (the allocator is initialised), then lowers
 *       RLIMIT_AS to LIMIT_MIB MiB and creates a thread that allocates.
 *       Prints "thread ok".
 *   as_limit vmsize
 *       One malloc(1) and one malloc(100000), then prints "vmsize KIB".
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static long vmsize_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmSize:", 7) == 0)
            v = atol(line + 7);
    fclose(f);
    return v;
}

static void set_limit(long mib) {
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = (rlim_t)mib << 20;
    if (setrlimit(RLIMIT_AS, &rl) != 0) {
        perror("setrlimit");
        exit(2);
    }
}

/* Fills until NULL; returns the count, the list in *head. */
static size_t fill(size_t bs, void **head) {
    size_t n = 0;
    *head = NULL;
    for (;;) {
        errno = 0;
        void **p = malloc(bs);
        if (!p) {
            if (errno != ENOMEM) {
                printf("malloc(%zu) returned NULL with errno %d, not ENOMEM\n", bs, errno);
                exit(3);
            }
            return n;
        }
        *p = *head;
        *head = p;
        n++;
    }
}

static void free_all(void *head) {
    while (head) {
        void *next = *(void **)head;
        free(head);
        head = next;
    }
}

/* Two blocks allocated before the measurement (so that the allocator is
 * set up, small and large); exits 4 if either fails. */
struct pair {
    void *small, *large;
};

static struct pair alloc_pair(size_t small, size_t large) {
    struct pair w;
    w.small = malloc(small);
    w.large = malloc(large);
    if (!w.small || !w.large)
        exit(4);
    return w;
}

static void free_pair(struct pair w) {
    free(w.small);
    free(w.large);
}

static void *thread_main(void *arg) {
    (void)arg;
    void *blocks[1000];
    for (int i = 0; i < 1000; i++) {
        blocks[i] = malloc(100 + i);
        if (!blocks[i])
            return NULL;
        memset(blocks[i], i & 0xff, 100 + i);
    }
    void *big = malloc(64 << 10);
    void *huge = malloc(4 << 20);
    int ok = big && huge;
    free(big);
    free(huge);
    for (int i = 0; i < 1000; i++)
        free(blocks[i]);
    return ok ? (void *)1 : NULL;
}

int main(int argc, char **argv) {
    if ((argc == 4 && strcmp(argv[1], "fill") == 0) || (argc == 5 && strcmp(argv[1], "cross") == 0)) {
        long limit = atol(argv[2]);
        size_t bs = (size_t)atol(argv[3]);
        size_t bs2 = argc == 5 ? (size_t)atol(argv[4]) : bs;
        void *head;
        set_limit(limit);
        size_t n1 = fill(bs, &head);
        free_all(head);
        size_t n2 = fill(bs2, &head);
        free_all(head);
        printf("fill %zu refill %zu bytes %zu\n", n1, n2, n1 * bs);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "thread") == 0) {
        struct pair w = alloc_pair(1000, 200000);
        set_limit(atol(argv[2]));
        pthread_t t;
        int e = pthread_create(&t, NULL, thread_main, NULL);
        if (e != 0) {
            printf("pthread_create: %s (VmSize %ld KiB)\n", strerror(e), vmsize_kib());
            return 5;
        }
        void *r;
        pthread_join(t, &r);
        if (!r) {
            printf("the thread's allocations failed\n");
            return 6;
        }
        free_pair(w);
        printf("thread ok\n");
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "vmsize") == 0) {
        struct pair w = alloc_pair(1, 100000);
        printf("vmsize %ld\n", vmsize_kib());
        free_pair(w);
        return 0;
    }
    fprintf(stderr, "usage: as_limit fill MIB BYTES | thread MIB | vmsize\n");
    return 1;
}
