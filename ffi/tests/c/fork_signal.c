/* fork() from a signal handler that interrupts malloc, in a single-threaded
 * process (in the spirit of glibc's tst-mallocfork2, written for this
 * project).
 *
 * An interval timer (setitimer ITIMER_REAL) raises SIGALRM every 200 us
 * while the main loop allocates and frees blocks of every kind (small ones
 * that miss the per-CPU cache in bursts, page-heap spans, huge mappings),
 * so the handler often runs inside malloc or free, sometimes inside a
 * locked section. With "trim", malloc_trim(0) every few loops drains
 * caches and releases pages with system calls inside locked sections, where
 * a pending signal is delivered: the handler then runs inside a locked
 * section almost every time (glibc's own children abort in that variant:
 * its arena is caught mid-trim). The handler forks; the child allocates a few small blocks
 * and _exit(0)s; the handler waits for it and records its status. After
 * FORKS forks the program prints the count. A watchdog (a POSIX timer on
 * CLOCK_MONOTONIC delivering SIGUSR1, no thread) reports a deadlock with a
 * message instead of hanging.
 *
 * Usage: fork_signal [forks] [trim] [child-noalloc]
 *
 * "child-noalloc" makes the children only _exit(0), as glibc's own test
 * does: POSIX allows only async-signal-safe calls in the child of a fork
 * made in a signal handler, and glibc's malloc is not usable there (its
 * children abort with "malloc(): invalid size (unsorted)" and similar in
 * a few percent of these forks, being caught mid-update).
 * Output: "fork_signal: N forks from the handler, N children exited 0".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S 60

static int target = 500;
static int trim;          /* "trim": call malloc_trim(0) in the loop */
static int child_noalloc; /* "child-noalloc": children only _exit(0) */
static volatile sig_atomic_t forks, ok, bad, last_status = -1;
static volatile pid_t current_child;

static void fmt_exit(const char *what) {
  char buf[200];
  int n = snprintf(buf, sizeof buf, "fork_signal: %s after %d forks (%d ok, %d bad)\n", what,
                   (int)forks, (int)ok, (int)bad);
  ssize_t r = write(2, buf, n > 0 ? (size_t)n : 0);
  (void)r;
}

static void on_watchdog(int sig) {
  (void)sig;
  fmt_exit("TIMEOUT (deadlock)");
  if (current_child > 0) kill(current_child, SIGKILL);
  _exit(3);
}

/* The child: a few small allocations, touched, freed. */
static void child_body(void) {
  if (child_noalloc) _exit(0);
  void *p[8];
  for (int i = 0; i < 8; i++) {
    size_t sz = (size_t)16 << (i % 6); /* 16 .. 512 bytes */
    p[i] = malloc(sz);
    if (!p[i]) _exit(1);
    memset(p[i], 0x33, sz);
  }
  for (int i = 0; i < 8; i++) free(p[i]);
  _exit(0);
}

static void on_alarm(int sig) {
  (void)sig;
  if (forks >= target) return;
  int saved = errno;
  pid_t pid = fork();
  if (pid == 0) child_body();
  if (pid < 0) {
    bad++;
  } else {
    current_child = pid;
    int st;
    pid_t w;
    do w = waitpid(pid, &st, 0); while (w < 0);
    current_child = 0;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) ok++;
    else { bad++; last_status = st; }
  }
  forks++;
  errno = saved;
}

int main(int argc, char **argv) {
  if (argc > 1) target = atoi(argv[1]);
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "trim") == 0) trim = 1;
    else if (strcmp(argv[i], "child-noalloc") == 0) child_noalloc = 1;
    else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_watchdog;
  sigaction(SIGUSR1, &sa, NULL);
  timer_t wd;
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_SIGNAL;
  sev.sigev_signo = SIGUSR1;
  if (timer_create(CLOCK_MONOTONIC, &sev, &wd) != 0) { perror("timer_create"); return 1; }
  struct itimerspec its = {{0, 0}, {TIMEOUT_S, 0}};
  timer_settime(wd, 0, &its, NULL);

  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval iv = {{0, 200}, {0, 200}};
  setitimer(ITIMER_REAL, &iv, NULL);

  unsigned seed = 777;
  void *blocks[64] = {0};
  unsigned long iters = 0;
  while (forks < target) {
    for (int i = 0; i < 64; i++) {
      seed = seed * 1103515245u + 12345u;
      unsigned kind = (seed >> 4) % 16;
      size_t sz = kind < 12 ? (seed >> 9) % 1024 + 1        /* small */
                : kind < 15 ? (seed >> 9) % 200000 + 1024    /* spans */
                            : (seed >> 9) % 3000000 + 1000000; /* huge */
      free(blocks[i]);
      blocks[i] = malloc(sz);
      if (!blocks[i]) { fmt_exit("malloc failed"); return 1; }
      ((char *)blocks[i])[0] = 1;
      ((char *)blocks[i])[sz - 1] = 2;
    }
    /* malloc_trim drains the per-CPU caches and releases pages: long
     * locked sections with system calls inside, where a pending signal is
     * delivered. */
    if (trim && ++iters % 4 == 0) malloc_trim(0);
  }
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  for (int i = 0; i < 64; i++) free(blocks[i]);
  if (bad != 0) {
    fmt_exit("FAILED");
    fprintf(stderr, "fork_signal: last bad status %d\n", (int)last_status);
    return 1;
  }
  printf("fork_signal: %d forks from the handler, %d children exited 0\n",
         (int)forks, (int)ok);
  return 0;
}
