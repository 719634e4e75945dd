/* dlopen/dlclose in a loop of a library that allocates (dlopen_lib.c);
 * blocks cross the boundary both ways; threads use the library's TLS.
 * Usage: dlopen_main /path/to/libdlopen_lib.so
 * Prints "dlopen: N cycles ok" or the failure and exits 1. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CYCLES 300

static int (*lib_tls)(int);

static void *tls_thread(void *arg)
{
    return (void *)(long)(lib_tls((int)(long)arg) != (char)(int)(long)arg);
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    int bad = 0;
    for (int c = 0; c < CYCLES; c++) {
        void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            printf("dlopen: %s\n", dlerror());
            return 1;
        }
        char *(*make)(size_t, int) = (char *(*)(size_t, int))dlsym(h, "lib_make");
        int (*check_free)(char *, size_t, int) = (int (*)(char *, size_t, int))dlsym(h, "lib_check_free");
        lib_tls = (int (*)(int))dlsym(h, "lib_tls");
        if (!make || !check_free || !lib_tls) {
            printf("dlsym: %s\n", dlerror());
            return 1;
        }
        for (int i = 0; i < 50; i++) {
            size_t n = (size_t)(i * 131 + c) % 5000 + 1;
            char *p = make(n, i);
            for (size_t j = 0; j < n; j++)
                bad |= p[j] != (char)i;
            free(p);
            char *q = malloc(n);
            memset(q, i + 1, n);
            bad |= check_free(q, n, i + 1);
        }
        pthread_t t;
        void *r;
        pthread_create(&t, NULL, tls_thread, (void *)(long)(c + 1));
        pthread_join(t, &r);
        bad |= r != NULL;
        bad |= lib_tls(c) != (char)c;
        if (dlclose(h) != 0) {
            printf("dlclose: %s\n", dlerror());
            return 1;
        }
        if (bad) {
            printf("dlopen: FAILED in cycle %d\n", c);
            return 1;
        }
    }
    printf("dlopen: %d cycles ok\n", CYCLES);
    return 0;
}
