/* A shared library that allocates: in its constructor, in its functions,
 * in thread-local storage (glibc allocates dynamic TLS with malloc), and
 * frees in its destructor. Loaded and unloaded in a loop by dlopen_main.c. */
#include <stdlib.h>
#include <string.h>

static char *table[64];
static __thread char tls_buf[8192];

__attribute__((constructor)) static void lib_init(void)
{
    for (int i = 0; i < 64; i++) {
        table[i] = malloc((size_t)i * 100 + 1);
        memset(table[i], i, (size_t)i * 100 + 1);
    }
}

__attribute__((destructor)) static void lib_fini(void)
{
    for (int i = 0; i < 64; i++) {
        free(table[i]);
        table[i] = NULL;
    }
}

/* A block allocated here and freed by the caller. */
char *lib_make(size_t n, int seed)
{
    char *p = malloc(n);
    if (p)
        memset(p, seed, n);
    return p;
}

/* Checks a block allocated by the caller and frees it here (and, once per
 * load, the constructor's blocks); 0 if intact. */
int lib_check_free(char *p, size_t n, int seed)
{
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= p[i] != (char)seed;
    free(p);
    if (seed != 1)
        return bad;
    for (int i = 0; i < 64; i++)
        for (size_t j = 0; j < (size_t)i * 100 + 1; j++)
            bad |= table[i][j] != (char)i;
    return bad;
}

/* Touches this thread's TLS block of the library (allocated on first use). */
int lib_tls(int v)
{
    tls_buf[v % sizeof tls_buf] = (char)v;
    return tls_buf[v % sizeof tls_buf];
}
