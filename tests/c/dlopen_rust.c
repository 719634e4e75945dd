/* Loads a Rust shared library whose global allocator is rseq-alloc with
 * dlopen (after glibc's malloc and rseq registration are up), runs its
 * threaded allocation workload and prints its registration mode:
 * "mode=<m> sum=<n>". Usage: dlopen_rust LIB THREADS ROUNDS */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s LIB THREADS ROUNDS\n", argv[0]);
        return 2;
    }
    /* Allocate with glibc first, so the library arrives in a live process. */
    char *before = malloc(100);
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    const char *(*mode)(void) = (const char *(*)(void))dlsym(h, "rseq_cdylib_mode");
    unsigned long long (*work)(unsigned, unsigned) =
        (unsigned long long (*)(unsigned, unsigned))dlsym(h, "rseq_cdylib_work");
    if (!mode || !work) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        return 1;
    }
    unsigned long long sum = work((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]));
    printf("mode=%s sum=%llu\n", mode(), sum);
    free(before);
    return 0;
}
