#define _GNU_SOURCE
#include "CProcessPoolShim.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int cpp_prctl_set_pdeathsig(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }

int cpp_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int cpp_pidfd_send_signal(int pidfd, int sig) {
#ifdef SYS_pidfd_send_signal
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int cpp_pipe2_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cpp_socketpair_cloexec(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
}

int cpp_eventfd_cloexec(unsigned int initial, int nonblocking) {
    return eventfd(initial, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
}

int cpp_close_range_from(unsigned int first, const int *keep, int keep_count) {
    // Close every descriptor >= first except those in keep.
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (long fd = first; fd < max; fd++) {
        int skip = 0;
        for (int i = 0; i < keep_count; i++) if (keep[i] == fd) { skip = 1; break; }
        if (!skip) close((int)fd);
    }
    return 0;
}

int cpp_set_nonblocking(int fd, int on) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -1;
    flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, flags);
}

int cpp_set_cloexec(int fd, int on) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
    return fcntl(fd, F_SETFD, flags);
}

ssize_t cpp_send_iov(int fd, const void *const *bases, const size_t *lens, int count) {
    struct iovec iov[64];
    if (count > 64) count = 64;
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = (void *)bases[i];
        iov[i].iov_len = lens[i];
    }
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)count;
    return sendmsg(fd, &msg, MSG_NOSIGNAL);
}

ssize_t cpp_send_nosignal(int fd, const void *buf, size_t len) {
    return send(fd, buf, len, MSG_NOSIGNAL);
}

ssize_t cpp_send_fds(int sock, const void *buf, size_t len, const int *fds, int count) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    char control[CMSG_SPACE(sizeof(int) * 16)];
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    memset(control, 0, sizeof control);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (count > 16) { errno = EINVAL; return -1; }
    if (count > 0) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)count);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)count);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

ssize_t cpp_recv_fds(int sock, void *buf, size_t len, int *fds, int max_fds, int *fd_count) {
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    char control[CMSG_SPACE(sizeof(int) * 16)];
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    *fd_count = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int n_fds = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *data = (int *)CMSG_DATA(c);
            for (int i = 0; i < n_fds; i++) {
                if (*fd_count < max_fds) fds[(*fd_count)++] = data[i];
                else close(data[i]);
            }
        }
    }
    return n;
}

int cpp_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int cpp_wifexited(int status) { return WIFEXITED(status); }
int cpp_wexitstatus(int status) { return WEXITSTATUS(status); }
int cpp_wifsignaled(int status) { return WIFSIGNALED(status); }
int cpp_wtermsig(int status) { return WTERMSIG(status); }

pid_t cpp_spawn(const char *path, char *const argv[], char *const envp[],
                int child_fd, int target_fd, int null_stdin) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int rc;
    int source = child_fd;
    if (posix_spawn_file_actions_init(&actions) != 0) return -1;
    if (posix_spawnattr_init(&attr) != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return -1;
    }
    // dup2(x, x) would keep FD_CLOEXEC: route through a spare descriptor.
    if (child_fd == target_fd) {
        source = fcntl(child_fd, F_DUPFD_CLOEXEC, target_fd + 1);
        if (source < 0) goto fail;
    }
    posix_spawn_file_actions_adddup2(&actions, source, target_fd);
    if (null_stdin) posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    // Only stdio and the channel reach the worker.
    posix_spawn_file_actions_addclosefrom_np(&actions, target_fd + 1);
#endif

    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    pid_t pid;
    rc = posix_spawn(&pid, path, &actions, &attr, argv, envp);
    if (source != child_fd) close(source);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) { errno = rc; return -1; }
    return pid;
fail:
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return -1;
}

pid_t cpp_fork(void) { return fork(); }

void cpp_unblock_all_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
}
void cpp_exit_now(int code) { _exit(code); }

uint64_t cpp_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int cpp_affinity_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}

void cpp_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, 15);
    buf[15] = 0;
    pthread_setname_np(pthread_self(), buf);
}

void cpp_flush_stdout(void) { fflush(stdout); }
void cpp_flush_all(void) { fflush(NULL); }

void cpp_log_stderr(const char *message) {
    size_t len = strlen(message);
    while (len > 0) {
        ssize_t n = write(2, message, len);
        if (n < 0) { if (errno == EINTR) continue; return; }
        message += n;
        len -= (size_t)n;
    }
}

int cpp_random_bytes(void *buf, size_t len) {
    unsigned char *p = buf;
    size_t done = 0;
#ifdef SYS_getrandom
    while (done < len) {
        long n = syscall(SYS_getrandom, p + done, len - done, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        done += (size_t)n;
    }
    if (done == len) return 0;
#endif
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while (done < len) {
        ssize_t n = read(fd, p + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) { close(fd); return -1; }
        done += (size_t)n;
    }
    close(fd);
    return 0;
}

static int cpp_abstract_address(struct sockaddr_un *addr, const void *name, size_t len, socklen_t *addr_len) {
    if (len == 0 || len + 1 > sizeof addr->sun_path) { errno = ENAMETOOLONG; return -1; }
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path + 1, name, len);
    *addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    return 0;
}

int cpp_unix_listen_abstract(const void *name, size_t len, int backlog) {
    struct sockaddr_un addr;
    socklen_t addr_len;
    if (cpp_abstract_address(&addr, name, len, &addr_len) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&addr, addr_len) != 0 || listen(fd, backlog) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cpp_unix_connect_abstract(const void *name, size_t len) {
    struct sockaddr_un addr;
    socklen_t addr_len;
    if (cpp_abstract_address(&addr, name, len, &addr_len) != 0) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int rc;
    do { rc = connect(fd, (struct sockaddr *)&addr, addr_len); } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cpp_accept_nonblocking(int listener) {
    return accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

void cpp_prefault(void *base, size_t len) {
    const uintptr_t page = 4096;
    uintptr_t start = ((uintptr_t)base + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)base + len) & ~(page - 1);
    if (end > start) (void)madvise((void *)start, end - start, MADV_POPULATE_WRITE);
}

size_t cpp_malloc_bytes_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

void cpp_set_socket_buffers(int fd, int bytes) {
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
}

// ThreadSanitizer sees pthread mutexes but not Synchronization's futex-based
// Mutex; these tell it about each acquire and release (no-ops unless the
// TSan runtime is linked: the symbols are weak).
extern void __tsan_acquire(void *addr) __attribute__((weak));
extern void __tsan_release(void *addr) __attribute__((weak));

void cpp_tsan_acquire(const void *addr) {
    if (__tsan_acquire) __tsan_acquire((void *)addr);
}

void cpp_tsan_release(const void *addr) {
    if (__tsan_release) __tsan_release((void *)addr);
}

int cpp_tsan_active(void) { return __tsan_acquire != 0; }
