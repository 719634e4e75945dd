/*
 * fork() from a multi-threaded parent while its other threads allocate:
 * every child allocates, frees, starts a thread that allocates, and exits 0.
 * Prints "fork: N children ok" and exits 0, or names the failure and exits 1.
 * Each child arms alarm(): a deadlock in the child (a lock held across
 * fork) kills it with SIGALRM, which the parent reports.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 4
#define CHILDREN 40

static volatile int stop;
static unsigned long worker_errors;

static int churn(unsigned seed, int rounds)
{
    enum { K = 64 };
    unsigned char *b[K] = {0};
    size_t n[K] = {0};
    int errors = 0;
    for (int r = 0; r < rounds; r++) {
        seed = seed * 1664525u + 1013904223u;
        int i = (seed >> 8) % K;
        if (b[i]) {
            for (size_t j = 0; j < n[i]; j++)
                if (b[i][j] != (unsigned char)(i + n[i])) {
                    errors++;
                    break;
                }
            free(b[i]);
        }
        n[i] = (seed >> 16) % ((seed & 0x70) == 0 ? 70000 : 700);
        b[i] = malloc(n[i]);
        if (!b[i]) {
            errors++;
            continue;
        }
        memset(b[i], (unsigned char)(i + n[i]), n[i]);
    }
    for (int i = 0; i < K; i++)
        free(b[i]);
    return errors;
}

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (!stop) {
        int e = churn(seed, 2000);
        seed += 17;
        if (e)
            __atomic_add_fetch(&worker_errors, (unsigned long)e, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *child_thread(void *arg)
{
    return (void *)(intptr_t)churn((unsigned)(uintptr_t)arg, 2000);
}

static int child_main(int k)
{
    alarm(20);
    int errors = churn(1000u + (unsigned)k, 4000);
    pthread_t t;
    void *ret;
    if (pthread_create(&t, NULL, child_thread, (void *)(uintptr_t)k) != 0)
        return 10;
    pthread_join(t, &ret);
    errors += (int)(intptr_t)ret;
    char *s = strdup("child strdup");
    if (!s || strcmp(s, "child strdup") != 0)
        errors++;
    free(s);
    return errors ? 1 : 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t w[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        if (pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)(i * 101 + 1)) != 0) {
            printf("pthread_create failed\n");
            return 1;
        }
    int bad = 0;
    for (int k = 0; k < CHILDREN; k++) {
        /* Let the workers get going so fork lands in the middle of their work. */
        free(malloc(1000 + (size_t)k));
        usleep(1000);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0)
            _exit(child_main(k));
        int st;
        if (waitpid(pid, &st, 0) != pid) {
            perror("waitpid");
            return 1;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad++;
            if (WIFSIGNALED(st))
                printf("child %d killed by signal %d (%s)\n", k, WTERMSIG(st),
                       WTERMSIG(st) == SIGALRM ? "deadlock: alarm fired" : strsignal(WTERMSIG(st)));
            else
                printf("child %d exited with %d\n", k, WEXITSTATUS(st));
        }
    }
    stop = 1;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(w[i], NULL);
    if (worker_errors)
        printf("parent workers saw %lu damaged blocks\n", worker_errors);
    if (bad || worker_errors) {
        printf("fork: FAILED (%d of %d children)\n", bad, CHILDREN);
        return 1;
    }
    printf("fork: %d children ok\n", CHILDREN);
    return 0;
}
