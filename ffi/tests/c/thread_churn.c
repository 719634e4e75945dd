/*
 * Thread creation and exit in a loop: THREADS threads, WAVE at a time, each
 * allocating, freeing, and handing some blocks to the main thread to free.
 * The resident set size after the warm-up and at the end are printed; the
 * program fails if it grew by more than LIMIT_MIB (memory held per dead
 * thread would show up here: caches must not belong to threads).
 * Prints "churn: N threads ok, rss warm X KiB end Y KiB".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 6000
#define WAVE 4
#define WARMUP 1000
#define KEEP 10
#define LIMIT_MIB 24

struct job {
    unsigned seed;
    void *keep[KEEP];
    size_t keep_n[KEEP];
    int errors;
};

static void *body(void *arg)
{
    struct job *j = arg;
    unsigned s = j->seed;
    void *b[60];
    size_t n[60];
    for (int i = 0; i < 60; i++) {
        s = s * 1664525u + 1013904223u;
        n[i] = 1 + (s >> 16) % ((s & 0x1c) == 0 ? 50000 : 1000);
        b[i] = malloc(n[i]);
        if (!b[i]) {
            j->errors++;
            continue;
        }
        memset(b[i], (unsigned char)i, n[i]);
    }
    for (int i = 0; i < 60; i++) {
        unsigned char *p = b[i];
        if (p && (p[0] != (unsigned char)i || p[n[i] - 1] != (unsigned char)i))
            j->errors++;
        if (i < KEEP) {
            j->keep[i] = p;
            j->keep_n[i] = n[i];
        } else {
            free(p);
        }
    }
    return NULL;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    if (f)
        fclose(f);
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    struct job jobs[WAVE];
    long warm = 0;
    int errors = 0;
    for (int t = 0; t < THREADS; t += WAVE) {
        pthread_t th[WAVE];
        for (int k = 0; k < WAVE; k++) {
            memset(&jobs[k], 0, sizeof jobs[k]);
            jobs[k].seed = (unsigned)(t + k) * 2654435761u;
            if (pthread_create(&th[k], NULL, body, &jobs[k]) != 0) {
                printf("pthread_create failed at %d\n", t + k);
                return 1;
            }
        }
        for (int k = 0; k < WAVE; k++) {
            pthread_join(th[k], NULL);
            errors += jobs[k].errors;
            for (int i = 0; i < KEEP; i++) {
                unsigned char *p = jobs[k].keep[i];
                if (p && p[jobs[k].keep_n[i] - 1] != (unsigned char)i)
                    errors++;
                free(p);
            }
        }
        if (t + WAVE == WARMUP)
            warm = rss_kib();
    }
    long end = rss_kib();
    printf("churn: %d threads, rss warm %ld KiB end %ld KiB\n", THREADS, warm, end);
    if (errors) {
        printf("churn: FAILED: %d damaged blocks\n", errors);
        return 1;
    }
    if (end - warm > LIMIT_MIB * 1024L) {
        printf("churn: FAILED: rss grew by %ld KiB after warm-up (limit %d MiB)\n", end - warm, LIMIT_MIB);
        return 1;
    }
    printf("churn: %d threads ok\n", THREADS);
    return 0;
}
