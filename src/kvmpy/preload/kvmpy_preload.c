/*
 * LD_PRELOAD=libkvmpy_preload.so PROGRAM: /dev/kvm in PROGRAM's process is kvmpy.
 *
 * The library replaces the libc entry points through which a KVM client reaches its KVM
 * files: open/openat (and their 64-bit and _FORTIFY_SOURCE variants) of /dev/kvm, and ioctl,
 * mmap, close, dup/dup2/dup3 and fcntl(F_DUPFD) on the descriptors kvmpy made.  Every other
 * call, and these calls on other descriptors, go to the next definition (libc's), found with
 * dlsym(RTLD_NEXT).  kvmpy's descriptors are real ones (memfds: see kvmpy.kernel.fs), so the
 * client's descriptor table stays consistent, and the calls that need no kernel code work on
 * them unchanged: read/pread of a stats descriptor, fstat, and poll/ppoll/select, which on a
 * memfd answer what they answer on KVM's anonymous-inode files (neither has a poll method:
 * always readable and writable).
 *
 * A bitmap of the descriptors kvmpy gave out keeps the cost of the other descriptors' calls
 * to a bit test; the interpreter starts only when the program opens /dev/kvm.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvmpy_preload.h"

#define KVM_DEVICE_DIR "/dev"
#define KVM_DEVICE_NAME "kvm"
#define MAX_TRACKED_FDS (1 << 20)
#define BITS_PER_WORD (8 * sizeof(unsigned long))

static unsigned long kvm_fds[MAX_TRACKED_FDS / BITS_PER_WORD];

static int is_kvm_fd(int fd)
{
    if (kvmpy_inside || fd < 0 || fd >= MAX_TRACKED_FDS)
        return 0;
    return (__atomic_load_n(&kvm_fds[fd / BITS_PER_WORD], __ATOMIC_RELAXED) >>
            (fd % BITS_PER_WORD)) & 1;
}

static void track_fd(int fd, int on)
{
    unsigned long bit;

    if (fd < 0 || fd >= MAX_TRACKED_FDS)
        return;
    bit = 1UL << (fd % BITS_PER_WORD);
    if (on)
        __atomic_fetch_or(&kvm_fds[fd / BITS_PER_WORD], bit, __ATOMIC_RELAXED);
    else
        __atomic_fetch_and(&kvm_fds[fd / BITS_PER_WORD], ~bit, __ATOMIC_RELAXED);
}

/* A system call's return as libc returns it: -1 with errno for a negative errno. */
static long sys_ret(long ret)
{
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

/* The next definition of a libc function (libc's own). */
#define NEXT(name) ({                                                   \
        static __typeof__(&name) next_##name;                          \
        if (next_##name == NULL)                                        \
            next_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name);  \
        next_##name; })

/*
 * Does this open(2) name kvmpy's device node?  Its last component is "kvm" and the directory
 * before it resolves to /dev (so "/dev/./kvm", "../dev/kvm" from /tmp, and a symlinked /dev
 * count, as in the kernel's path walk; "/dev/kvm/" and the like are left to the host, whose
 * answer for a device node -- ENOTDIR -- is the same).
 */
static int is_kvm_path(int dirfd, const char *path)
{
    char dir[PATH_MAX], real[PATH_MAX];
    const char *slash, *name;
    size_t n;

    if (path == NULL || kvmpy_inside)
        return 0;
    slash = strrchr(path, '/');
    name = slash ? slash + 1 : path;
    if (strcmp(name, KVM_DEVICE_NAME) != 0)
        return 0;
    if (slash == NULL) {
        strcpy(dir, ".");
    } else {
        n = slash == path ? 1 : (size_t)(slash - path);
        if (n >= sizeof(dir))
            return 0;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    if (dir[0] != '/' && dirfd != AT_FDCWD) {
        /* relative to a directory descriptor: resolve it through /proc */
        char rel[PATH_MAX];
        if ((size_t)snprintf(rel, sizeof(rel), "/proc/self/fd/%d/%s", dirfd, dir) >= sizeof(rel))
            return 0;
        strcpy(dir, rel);
    }
    if (realpath(dir, real) == NULL)
        return 0;
    return strcmp(real, KVM_DEVICE_DIR) == 0;
}

/* glibc's _FORTIFY_SOURCE entry points and the large-file aliases, declared by its headers
 * only in some configurations. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
int open64(const char *path, int flags, ...);
int openat64(int dirfd, const char *path, int flags, ...);
void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off64_t offset);
int fcntl64(int fd, int cmd, ...);

static int open_kvm(int flags)
{
    int fd = kvmpy_py_open(KVM_DEVICE_DIR "/" KVM_DEVICE_NAME, flags);

    if (fd >= 0)
        track_fd(fd, 1);
    return (int)sys_ret(fd);
}

/* open's third argument exists only when the flags create a file. */
#define OPEN_MODE(flags, last) ({                                       \
        mode_t mode_ = 0;                                               \
        if ((flags) & O_CREAT || ((flags) & O_TMPFILE) == O_TMPFILE) { \
            va_list ap_;                                                \
            va_start(ap_, last);                                        \
            mode_ = va_arg(ap_, mode_t);                                \
            va_end(ap_);                                                \
        }                                                               \
        mode_; })

int open(const char *path, int flags, ...)
{
    mode_t mode = OPEN_MODE(flags, flags);

    if (is_kvm_path(AT_FDCWD, path))
        return open_kvm(flags);
    return NEXT(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    mode_t mode = OPEN_MODE(flags, flags);

    if (is_kvm_path(AT_FDCWD, path))
        return open_kvm(flags);
    return NEXT(open64)(path, flags, mode);
}

int __open_2(const char *path, int flags)
{
    if (is_kvm_path(AT_FDCWD, path))
        return open_kvm(flags);
    return NEXT(__open_2)(path, flags);
}

int __open64_2(const char *path, int flags)
{
    if (is_kvm_path(AT_FDCWD, path))
        return open_kvm(flags);
    return NEXT(__open64_2)(path, flags);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = OPEN_MODE(flags, flags);

    if (is_kvm_path(dirfd, path))
        return open_kvm(flags);
    return NEXT(openat)(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = OPEN_MODE(flags, flags);

    if (is_kvm_path(dirfd, path))
        return open_kvm(flags);
    return NEXT(openat64)(dirfd, path, flags, mode);
}

int __openat_2(int dirfd, const char *path, int flags)
{
    if (is_kvm_path(dirfd, path))
        return open_kvm(flags);
    return NEXT(__openat_2)(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
    if (is_kvm_path(dirfd, path))
        return open_kvm(flags);
    return NEXT(__openat64_2)(dirfd, path, flags);
}

/*
 * The request is the kernel's unsigned int: a caller that builds it in a wider signed type
 * (QEMU passes 0xffffffffc008ae67 for KVM_SET_MSRS) means its low 32 bits.  The argument is
 * read as the unsigned long the kernel receives, given or not, as libc's own ioctl does.
 */
int ioctl(int fd, unsigned long request, ...)
{
    unsigned long arg;
    va_list ap;
    int is_file;
    long ret;

    va_start(ap, request);
    arg = va_arg(ap, unsigned long);
    va_end(ap);
    if (!is_kvm_fd(fd))
        return NEXT(ioctl)(fd, request, arg);
    if (kvmpy_forked) {
        errno = EIO;
        return -1;
    }
    ret = kvmpy_py_ioctl(fd, request & 0xffffffffUL, arg, &is_file);
    if (ret >= 0 && is_file)
        track_fd((int)ret, 1);
    return (int)sys_ret(ret);
}

/* A kvmpy file that can be mapped (a vCPU's kvm_run pages) is its descriptor's memory: after
 * the kernel's checks, the host maps the descriptor itself. */
static int mmap_allowed(int fd, int prot, int flags)
{
    int ret;

    if (flags & MAP_ANONYMOUS || !is_kvm_fd(fd) || kvmpy_forked)
        return 1;
    ret = kvmpy_py_mmap_check(fd, prot, flags);
    if (ret < 0) {
        errno = -ret;
        return 0;
    }
    return 1;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    if (!mmap_allowed(fd, prot, flags))
        return MAP_FAILED;
    return NEXT(mmap)(addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off64_t offset)
{
    if (!mmap_allowed(fd, prot, flags))
        return MAP_FAILED;
    return NEXT(mmap64)(addr, length, prot, flags, fd, offset);
}

int close(int fd)
{
    if (!is_kvm_fd(fd))
        return NEXT(close)(fd);
    track_fd(fd, 0);
    if (kvmpy_forked)
        return NEXT(close)(fd);
    return (int)sys_ret(kvmpy_py_close(fd));
}

/* After the host's dup of oldfd to newfd: newfd is kvmpy's if oldfd is, and a kvmpy file
 * that newfd named before (dup2/dup3 close it silently) is released. */
static int dup_done(int oldfd, int newfd, int old_kvm, int new_was_kvm)
{
    long ret;

    if (newfd < 0 || !(old_kvm || new_was_kvm))
        return newfd;
    track_fd(newfd, old_kvm);
    if (kvmpy_forked)
        return newfd;
    ret = kvmpy_py_dup(oldfd, newfd);
    if (ret < 0) {
        track_fd(newfd, 0);
        NEXT(close)(newfd);
        return (int)sys_ret(ret);
    }
    return newfd;
}

int dup(int fd)
{
    int kvm = is_kvm_fd(fd);

    return dup_done(fd, NEXT(dup)(fd), kvm, 0);
}

int dup2(int fd, int fd2)
{
    int kvm = is_kvm_fd(fd), was_kvm = is_kvm_fd(fd2);

    if (fd == fd2)
        return NEXT(dup2)(fd, fd2);
    return dup_done(fd, NEXT(dup2)(fd, fd2), kvm, was_kvm);
}

int dup3(int fd, int fd2, int flags)
{
    int kvm = is_kvm_fd(fd), was_kvm = is_kvm_fd(fd2);

    return dup_done(fd, NEXT(dup3)(fd, fd2, flags), kvm, was_kvm);
}

/* fcntl's third argument is an int or a pointer: passed on as a pointer-sized value. */
#define FCNTL(next, fd, cmd) ({                                         \
        void *arg_;                                                     \
        va_list ap_;                                                    \
        int kvm_ = is_kvm_fd(fd);                                       \
        va_start(ap_, cmd);                                             \
        arg_ = va_arg(ap_, void *);                                     \
        va_end(ap_);                                                    \
        kvm_ && ((cmd) == F_DUPFD || (cmd) == F_DUPFD_CLOEXEC)          \
            ? dup_done(fd, (next)(fd, cmd, arg_), 1, 0)                 \
            : (next)(fd, cmd, arg_); })

int fcntl(int fd, int cmd, ...)
{
    return FCNTL(NEXT(fcntl), fd, cmd);
}

int fcntl64(int fd, int cmd, ...)
{
    return FCNTL(NEXT(fcntl64), fd, cmd);
}
