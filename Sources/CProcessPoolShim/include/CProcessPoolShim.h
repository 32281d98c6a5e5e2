#ifndef CPROCESSPOOLSHIM_H
#define CPROCESSPOOLSHIM_H

#if !defined(__linux__)
#error "ProcessPool supports Linux only (it uses pidfd, prctl and abstract Unix sockets)"
#endif

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/// Linux calls that Swift's Glibc module does not expose. Every descriptor
/// these return is close-on-exec. Each returns -1 and sets errno on failure.

int cpp_prctl_set_pdeathsig(int signal);
int cpp_pidfd_open(pid_t pid);
/// Signals the process behind a pidfd (safe against pid reuse).
int cpp_pidfd_send_signal(int pidfd, int signal);
int cpp_pipe2_cloexec(int fds[2]);
int cpp_socketpair_cloexec(int fds[2]);
int cpp_eventfd_cloexec(unsigned int initial, int nonblocking);
int cpp_close_range_from(unsigned int first, const int *keep, int keep_count);
int cpp_set_nonblocking(int fd, int on);
int cpp_set_cloexec(int fd, int on);

/// sendmsg with MSG_NOSIGNAL over several buffers (writev without SIGPIPE).
ssize_t cpp_send_iov(int fd, const void *const *bases, const size_t *lens, int count);
/// send with MSG_NOSIGNAL.
ssize_t cpp_send_nosignal(int fd, const void *buf, size_t len);

/// Sends `count` descriptors plus `len` bytes of data over a Unix socket.
ssize_t cpp_send_fds(int sock, const void *buf, size_t len, const int *fds, int count);
/// Receives data and up to `max_fds` descriptors (made close-on-exec).
/// `*fd_count` receives how many arrived.
ssize_t cpp_recv_fds(int sock, void *buf, size_t len, int *fds, int max_fds, int *fd_count);
/// Peer credentials of a connected Unix socket (SO_PEERCRED).
int cpp_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

/// waitpid decoding helpers (the W* macros do not import).
int cpp_wifexited(int status);
int cpp_wexitstatus(int status);
int cpp_wifsignaled(int status);
int cpp_wtermsig(int status);

/// Spawns `path` with `argv` and `envp`. The child gets `child_fd` as
/// descriptor `target_fd`, /dev/null on stdin (when `null_stdin` is set),
/// default signal dispositions and an empty signal mask. Returns the pid or -1 with errno.
pid_t cpp_spawn(const char *path, char *const argv[], char *const envp[],
                int child_fd, int target_fd, int null_stdin);

/// Unblocks every signal in the calling thread (a forked child inherits the
/// forking thread's mask; Dispatch's threads block most signals).
void cpp_unblock_all_signals(void);

/// fork() (the Swift overlay marks it unavailable).
pid_t cpp_fork(void);
/// _exit without running atexit handlers.
void cpp_exit_now(int code) __attribute__((noreturn));

/// Names the calling thread (at most 15 characters are kept).
void cpp_set_thread_name(const char *name);
/// fflush(stdout) / fflush(NULL).
void cpp_flush_stdout(void);
void cpp_flush_all(void);
/// Writes a message to stderr (unbuffered).
void cpp_log_stderr(const char *message);

/// Faults in the pages of a buffer with one call (MADV_POPULATE_WRITE), so
/// that filling it does not trap once per page. Advisory.
void cpp_prefault(void *base, size_t len);

/// Bytes malloc has handed out and not had back (mallinfo2: arenas plus
/// mmapped blocks); the benchmark's measure of what pending futures hold.
size_t cpp_malloc_bytes_in_use(void);

/// Asks for send and receive buffers of `bytes` on a socket (the kernel caps
/// them at net.core.wmem_max / rmem_max; errors, such as ENOTSOCK, ignored).
void cpp_set_socket_buffers(int fd, int bytes);

/// Monotonic clock in nanoseconds.
uint64_t cpp_monotonic_ns(void);

/// The CPUs this process may run on (sched_getaffinity), or -1.
int cpp_affinity_cpu_count(void);

/// Fills `buf` with `len` random bytes (getrandom, else /dev/urandom). 0 or -1.
int cpp_random_bytes(void *buf, size_t len);
/// A non-blocking, close-on-exec Unix stream socket listening on the
/// abstract-namespace address `name` (`len` bytes, no leading NUL).
int cpp_unix_listen_abstract(const void *name, size_t len, int backlog);
/// A non-blocking, close-on-exec Unix stream socket connected to the
/// abstract-namespace address `name`. -1 with errno (ECONNREFUSED: nobody
/// listens; EAGAIN: the listener's backlog is full).
int cpp_unix_connect_abstract(const void *name, size_t len);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int cpp_accept_nonblocking(int listener);

/// Tell ThreadSanitizer (when linked) that a lock at `addr` was acquired /
/// released; no-ops otherwise.
void cpp_tsan_acquire(const void *addr);
void cpp_tsan_release(const void *addr);
/// 1 when the ThreadSanitizer runtime is linked.
int cpp_tsan_active(void);

#endif
