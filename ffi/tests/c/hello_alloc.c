/* A small allocating program for configuration tests: allocates, checks
 * and frees a few thousand blocks on two threads and prints "hello ok". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *work(void *arg)
{
    int bad = 0;
    (void)arg;
    for (int i = 0; i < 5000; i++) {
        size_t n = (size_t)(i * 37) % 4000 + 1;
        unsigned char *p = malloc(n);
        memset(p, i & 0xff, n);
        bad |= p[n - 1] != (unsigned char)(i & 0xff);
        free(p);
    }
    return (void *)(long)bad;
}

int main(void)
{
    pthread_t t;
    void *r1, *r2;
    pthread_create(&t, NULL, work, NULL);
    r1 = work(NULL);
    pthread_join(t, &r2);
    if (r1 || r2) {
        printf("hello FAILED\n");
        return 1;
    }
    printf("hello ok\n");
    return 0;
}
