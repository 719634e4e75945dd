/* fork() while other threads use stdio and the allocator (in the spirit of
 * glibc's tst-malloc-fork-deadlock, written for this project).
 *
 * Threads loop in: getline on a file (the stream's lock is held while
 * getline grows its buffer with realloc), fprintf into an open_memstream
 * (same, through the stream's own buffer), fflush(NULL) (the stdio list
 * lock, then each stream's lock), fopen+fclose (list lock and malloc), and
 * realloc of small and large blocks. The main thread forks ROUNDS times;
 * each child allocates, uses stdio, and _exit(0)s; the parent checks every
 * child's exit status. A deadlock is reported by alarm(), not a hang.
 *
 * Usage: fork_stdio_deadlock <scratch-file> [rounds]
 * Output: "fork_stdio_deadlock: N forks, N children exited 0" and exit 0.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define TIMEOUT_S 60

static atomic_int stop;
static const char *path;
static volatile sig_atomic_t rounds_done;
static volatile pid_t current_child;

static void say(const char *s) {
  ssize_t r = write(2, s, strlen(s));
  (void)r;
}

static void on_alarm(int sig) {
  (void)sig;
  char buf[160];
  int n = snprintf(buf, sizeof buf,
                   "fork_stdio_deadlock: TIMEOUT after %d rounds (pid %d): deadlock\n",
                   (int)rounds_done, (int)getpid());
  ssize_t r = write(2, buf, n > 0 ? (size_t)n : 0);
  (void)r;
  if (current_child > 0) kill(current_child, SIGKILL);
  _exit(3);
}

/* Workers run at a lower priority, so that the forking thread (and each
 * child) gets the CPU on a small machine; they still run whenever it waits. */
static void lower_priority(void) {
  if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10) != 0) perror("setpriority");
}

static void *getline_thread(void *arg) {
  (void)arg;
  lower_priority();
  FILE *f = fopen(path, "r");
  if (!f) { perror("fopen"); exit(1); }
  char *line = NULL;
  size_t cap = 0;
  unsigned n = 0;
  while (!atomic_load(&stop)) {
    if (getline(&line, &cap, f) < 0) rewind(f);
    if (++n % 8 == 0) { /* make getline allocate again */
      free(line);
      line = NULL;
      cap = 0;
    }
  }
  free(line);
  fclose(f);
  return NULL;
}

/* A worker without state between passes: runs `pass` at a lower priority
 * until stop is set. */
static void *repeat_pass(void (*pass)(void)) {
  lower_priority();
  while (!atomic_load(&stop)) pass();
  return NULL;
}

static void memstream_pass(void) {
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  if (!m) { perror("open_memstream"); exit(1); }
  for (int i = 0; i < 200 && !atomic_load(&stop); i++)
    fprintf(m, "%d: %0*d\n", i, i % 97, i);
  fclose(m);
  free(buf);
}

static void fflush_pass(void) {
  fflush(NULL);
  sched_yield(); /* the list lock is unfair: let the forker in */
}

static void fopen_pass(void) {
  FILE *f = fopen("/dev/null", "w");
  if (!f) { perror("fopen /dev/null"); exit(1); }
  fputs("x", f);
  fclose(f);
  sched_yield();
}

static void *memstream_thread(void *arg) { (void)arg; return repeat_pass(memstream_pass); }
static void *fflush_thread(void *arg) { (void)arg; return repeat_pass(fflush_pass); }
static void *fopen_thread(void *arg) { (void)arg; return repeat_pass(fopen_pass); }

static void *realloc_thread(void *arg) {
  (void)arg;
  lower_priority();
  unsigned seed = 12345;
  void *p = NULL;
  while (!atomic_load(&stop)) {
    seed = seed * 1103515245u + 12345u;
    size_t sz = (seed >> 8) % ((seed & 1) ? 300000 : 2000) + 1;
    void *q = realloc(p, sz);
    if (!q) { say("fork_stdio_deadlock: realloc failed\n"); exit(1); }
    memset(q, 0x5a, sz < 64 ? sz : 64);
    p = q;
  }
  free(p);
  return NULL;
}

/* What a child does: allocate, use stdio, exit 0 (1 on any failure). */
static void child_body(void) {
  alarm(10);
  size_t sizes[] = {16, 100, 4000, 40000, 300000};
  void *p[5];
  for (int i = 0; i < 5; i++) {
    p[i] = malloc(sizes[i]);
    if (!p[i]) _exit(1);
    memset(p[i], i, sizes[i]);
  }
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  if (!m) _exit(1);
  fprintf(m, "child %d", 42);
  if (fclose(m) != 0 || strcmp(buf, "child 42") != 0) _exit(1);
  free(buf);
  for (int i = 0; i < 5; i++) free(p[i]);
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s scratch-file [rounds]\n", argv[0]); return 2; }
  path = argv[1];
  int rounds = argc > 2 ? atoi(argv[2]) : 500;
  FILE *f = fopen(path, "w");
  if (!f) { perror("fopen scratch"); return 1; }
  for (int i = 0; i < 2000; i++) fprintf(f, "%*d\n", (i * 37) % 3000, i);
  fclose(f);

  signal(SIGALRM, on_alarm);
  alarm(TIMEOUT_S);

  void *(*bodies[])(void *) = {getline_thread, memstream_thread, fflush_thread,
                               fopen_thread, realloc_thread};
  enum { NT = sizeof bodies / sizeof bodies[0] };
  pthread_t t[NT];
  for (int i = 0; i < NT; i++)
    if (pthread_create(&t[i], NULL, bodies[i], NULL) != 0) { say("pthread_create failed\n"); return 1; }

  int ok = 0;
  for (int r = 0; r < rounds; r++) {
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) child_body();
    current_child = pid;
    int st;
    if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
    current_child = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "fork_stdio_deadlock: child %d of round %d: %s %d\n", (int)pid, r,
              WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      return 1;
    }
    ok++;
    rounds_done = r + 1;
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < NT; i++) pthread_join(t[i], NULL);
  alarm(0);
  printf("fork_stdio_deadlock: %d forks, %d children exited 0\n", rounds, ok);
  return 0;
}
