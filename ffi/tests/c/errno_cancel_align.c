/* Small C-semantics cases of issue 9 (written for this project; the cases
 * follow glibc's tst-free-errno and tst-malloc-stats-cancellation):
 *  1. free() preserves errno, for small, large and huge blocks, and when
 *     munmap fails because the process is at its map-count limit (the
 *     block's mapping is enlarged by a page on each side, so unmapping it
 *     splits a VMA; run in a child, which ends at the limit);
 *  2. malloc_stats() in a thread with a pending (deferred) cancellation
 *     request prints its whole report and returns; the request then acts
 *     at the next cancellation point;
 *  3. aligned_alloc with an alignment that is not a power of two gives
 *     NULL with EINVAL; memalign keeps glibc's rounding.
 * Prints "errno_cancel_align: N checks passed" and exits 0, or names each
 * failed check and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    checks++;                                              \
    if (!(cond)) {                                         \
      failures++;                                          \
      fprintf(stderr, "FAIL line %d: ", __LINE__);         \
      fprintf(stderr, __VA_ARGS__);                        \
      fputc('\n', stderr);                                 \
    }                                                      \
  } while (0)

/* Not inlined, so the compiler cannot assume free() kept errno. */
__attribute__((noinline, weak)) int get_errno(void) { return errno; }

static void free_keeps_errno(void) {
  size_t sizes[] = {1, 100, 5000, 70000, 300000, 5318153};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    void *volatile p = malloc(sizes[i]);
    CHECK(p != NULL, "malloc(%zu)", sizes[i]);
    memset(p, 1, sizes[i]);
    errno = 1789;
    free(p);
    CHECK(get_errno() == 1789, "free of a %zu-byte block changed errno to %d", sizes[i], get_errno());
  }
  errno = 1789;
  free(NULL);
  CHECK(get_errno() == 1789, "free(NULL) changed errno to %d", get_errno());
}

/* munmap of the middle of a VMA at the map-count limit fails (ENOMEM). */
static int map_limit_child(void) {
  size_t page = (size_t)getpagesize();
  char path[] = "/tmp/errno_cancel_alignXXXXXX";
  int fd = mkstemp(path);
  if (fd < 0 || ftruncate(fd, (off_t)page) != 0) { perror("mkstemp"); return 2; }
  unlink(path);
  size_t big = 0x1000000;
  void *volatile ptr = malloc(big - 0x100);
  if (!ptr) return 2;
  char *base = (char *)((uintptr_t)ptr & ~(page - 1));
  char *first = malloc(page), *last = malloc(page);
  memcpy(first, base, page);
  memcpy(last, base + big - page, page);
  /* One mapping from a page before the block to a page after it. */
  if (mmap(base - page, big + 2 * page, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED,
           -1, 0) == MAP_FAILED) { perror("mmap fixed"); return 2; }
  memcpy(base, first, page);
  memcpy(base + big - page, last, page);
  int n = 0;
  while (n < 70000 && mmap(NULL, page, PROT_READ, MAP_PRIVATE, fd, 0) != MAP_FAILED) n++;
  errno = 1789;
  free(ptr);
  int e = get_errno();
  if (e != 1789) {
    char msg[120];
    int len = snprintf(msg, sizeof msg, "FAIL: free at the map-count limit (%d maps) set errno to %d\n", n, e);
    ssize_t w = write(2, msg, (size_t)len);
    (void)w;
    return 1;
  }
  return 0;
}

static volatile int stats_returned;

static void *cancelled_thread(void *arg) {
  (void)arg;
  pthread_cancel(pthread_self()); /* deferred: pending until a cancellation point */
  malloc_stats();
  stats_returned = 1;
  pthread_testcancel();
  return (void *)2;
}

static void stats_under_cancel(void) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, cancelled_thread, NULL) == 0, "pthread_create");
  void *ret = NULL;
  CHECK(pthread_join(t, &ret) == 0, "pthread_join");
  CHECK(stats_returned == 1, "malloc_stats() acted on the pending cancellation");
  CHECK(ret == PTHREAD_CANCELED, "the thread was not cancelled after malloc_stats (ret %p)", ret);
}

static void aligned_alloc_rules(void) {
  static const size_t bad[] = {0, 3, 24, 65, 100, 4097, (1u << 20) + 1};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    errno = 0;
    void *p = aligned_alloc(bad[i], 64);
    CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64) = %p, errno %d: want NULL/EINVAL", bad[i], p,
          errno);
    free(p);
  }
  void *p = aligned_alloc(64, 64);
  CHECK(p != NULL && ((uintptr_t)p & 63) == 0, "aligned_alloc(64, 64) = %p", p);
  free(p);
  p = memalign(65, 64); /* glibc: rounded up to 128 */
  CHECK(p != NULL && ((uintptr_t)p & 127) == 0, "memalign(65, 64) = %p: want 128-aligned", p);
  free(p);
  void *out = (void *)0x1;
  CHECK(posix_memalign(&out, 65, 64) == EINVAL && out == (void *)0x1, "posix_memalign(65): want EINVAL");
}

int main(void) {
  free_keeps_errno();
  aligned_alloc_rules();
  stats_under_cancel();
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) _exit(map_limit_child());
  int st = 0;
  CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork/waitpid");
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "map-limit child: status %d", st);
  if (failures) {
    printf("errno_cancel_align: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("errno_cancel_align: %d checks passed\n", checks);
  return 0;
}
