/*
 * The two halves of libkvmpy_preload.so.
 *
 * kvmpy_preload.c replaces libc's entry points for the calls that reach a KVM file (open of
 * /dev/kvm, ioctl, mmap, close, dup) and keeps a bitmap of the descriptors that are kvmpy's.
 * kvmpy_embed.c starts CPython in the process and forwards those calls to the Python side,
 * kvmpy.preload.shim.  They are separate translation units because Python.h selects 64-bit
 * file offsets, under which <fcntl.h> renames open() to open64(): the interposers must be
 * compiled with libc's plain names.
 *
 * Every kvmpy_py_* call returns what the kernel's system call returns: a value >= 0, or a
 * negative errno.
 */
#ifndef KVMPY_PRELOAD_H
#define KVMPY_PRELOAD_H

#include <stddef.h>

/* Nonzero while this thread runs inside kvmpy (the interpreter or the kernel): the Python
 * code's own open/ioctl/mmap/close/dup calls go straight to libc. */
extern __thread int kvmpy_inside;

/* Nonzero in a child forked after kvmpy started: the interpreter's other threads (one may
 * hold the GIL) did not come along, so the child cannot enter kvmpy.  Its copies of the
 * descriptors close and map as the host's; their ioctls fail with EIO, as KVM's VM and vCPU
 * ioctls do from another process. */
extern int kvmpy_forked;

int kvmpy_py_open(const char *path, int flags);
/* *is_file: the result names a kvmpy file (KVM_CREATE_VM, KVM_CREATE_VCPU, ...). */
long kvmpy_py_ioctl(int fd, unsigned long request, unsigned long arg, int *is_file);
int kvmpy_py_close(int fd);
/* newfd, made by the host's dup/dup2/dup3/F_DUPFD of oldfd, names oldfd's file too; a kvmpy
 * file that newfd named before is released. */
int kvmpy_py_dup(int oldfd, int newfd);
/* 0: the host's mmap of the descriptor is the file's mapping; < 0: the kernel's errno. */
int kvmpy_py_mmap_check(int fd, int prot, int flags);

#endif
