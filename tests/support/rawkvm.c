/*
 * A KVM client in C with nothing but raw ioctls, to run on the host's /dev/kvm and, under
 * `kvmpy exec`, on kvmpy: the two outputs are compared line by line (tests/preload).
 *
 * It checks the API version, creates a VM with 64 KiB of RAM in a private anonymous mapping
 * (as QEMU keeps guest RAM) and one vCPU, maps kvm_run, and runs a real-mode guest that does
 * PIO and MMIO and halts, printing each exit.  Then, as QEMU's vCPU threads do, a second
 * thread runs the vCPU in a busy loop while the main thread makes VM ioctls and kicks it
 * with SIGUSR1, whose handler only sets kvm_run->immediate_exit: KVM_RUN must end in EINTR.
 * It also goes through dup/dup2/F_DUPFD of the vCPU descriptor, a forked child's use of it,
 * and an ioctl number sign-extended to 64 bits (QEMU's habit), and prints the vCPU's binary
 * statistics last, on lines starting with "stats" (their number differs between kernels:
 * kvmpy's signature).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE 0x10000
#define CODE_ADDR 0x1000
#define MMIO_READ_VALUE 0x33

/* Real mode, loaded at 0:0x1000. */
static const uint8_t guest[] = {
    0xba, 0xf8, 0x03,               /* mov dx, 0x3f8 */
    0xb0, 'K',                      /* mov al, 'K' */
    0xee,                           /* out dx, al */
    0xb8, 0x00, 0x10,               /* mov ax, 0x1000 */
    0x8e, 0xd8,                     /* mov ds, ax         ; ds base 0x10000: no RAM, MMIO */
    0xc6, 0x06, 0x10, 0x00, 0x5a,   /* mov byte [0x10], 0x5a   -> MMIO write at 0x10010 */
    0xa0, 0x20, 0x00,               /* mov al, [0x20]          -> MMIO read at 0x10020 */
    0xee,                           /* out dx, al */
    0xec,                           /* in al, dx */
    0xf4,                           /* hlt */
    0xeb, 0xfe,                     /* jmp $              ; kicked out of this */
};

static struct kvm_run *run;
static int vcpu;
static volatile sig_atomic_t kicks;

static void die(const char *what)
{
    printf("error: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long xioctl(int fd, unsigned long request, unsigned long arg, const char *what)
{
    long ret = ioctl(fd, request, arg);

    if (ret < 0)
        die(what);
    return ret;
}

/* "ok" or the errno's name, for a call's result. */
static const char *describe(long ret)
{
    static char buf[32];

    if (ret >= 0)
        return "ok";
    switch (errno) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENODEV: return "ENODEV";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    }
    snprintf(buf, sizeof(buf), "errno %d", errno);
    return buf;
}

/* QEMU's SIG_IPI handler: nothing but immediate_exit. */
static void kick(int sig)
{
    (void)sig;
    run->immediate_exit = 1;
    kicks++;
}

static void run_until_hlt(void)
{
    for (;;) {
        xioctl(vcpu, KVM_RUN, 0, "KVM_RUN");
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            uint8_t *data = (uint8_t *)run + run->io.data_offset;
            if (run->io.direction == KVM_EXIT_IO_IN)
                data[0] = 0x7e;
            printf("io %s port=%#x size=%d count=%u data=%#x\n",
                   run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in", run->io.port,
                   run->io.size, run->io.count, data[0]);
            break;
        }
        case KVM_EXIT_MMIO:
            if (!run->mmio.is_write)
                run->mmio.data[0] = MMIO_READ_VALUE;
            printf("mmio %s addr=%#llx len=%u data=%#x\n", run->mmio.is_write ? "write" : "read",
                   (unsigned long long)run->mmio.phys_addr, run->mmio.len, run->mmio.data[0]);
            break;
        case KVM_EXIT_HLT:
            printf("hlt\n");
            return;
        default:
            printf("unexpected exit %u\n", run->exit_reason);
            exit(1);
        }
    }
}

/* The vCPU thread of the kick test: KVM_RUN in the guest's busy loop until kicked. */
static void *vcpu_thread(void *started)
{
    long ret;

    *(volatile int *)started = 1;
    ret = ioctl(vcpu, KVM_RUN, 0);
    printf("kicked: %s immediate_exit=%u kicks=%d\n", describe(ret), run->immediate_exit,
           (int)kicks);
    printf("immediate_exit set: %s\n", describe(ioctl(vcpu, KVM_RUN, 0)));
    return NULL;
}

static void print_stats(int fd)
{
    struct kvm_stats_header header;
    struct kvm_stats_desc *desc;
    size_t desc_size;
    uint32_t i;
    char *descs;

    if (pread(fd, &header, sizeof(header), 0) != sizeof(header))
        die("read stats header");
    desc_size = sizeof(*desc) + header.name_size;
    descs = malloc(desc_size * header.num_desc);
    if (pread(fd, descs, desc_size * header.num_desc, header.desc_offset) !=
        (ssize_t)(desc_size * header.num_desc))
        die("read stats descriptors");
    printf("stats descriptors=%u\n", header.num_desc);
    for (i = 0; i < header.num_desc; i++) {
        uint64_t value;
        desc = (struct kvm_stats_desc *)(descs + i * desc_size);
        if (strcmp(desc->name, "io_exits") && strcmp(desc->name, "mmio_exits") &&
            strcmp(desc->name, "halt_exits"))
            continue;
        if (pread(fd, &value, sizeof(value), header.data_offset + desc->offset) != sizeof(value))
            die("read stat");
        printf("stats %s=%llu\n", desc->name, (unsigned long long)value);
    }
    free(descs);
}

int main(void)
{
    struct kvm_userspace_memory_region region;
    struct kvm_sregs sregs;
    struct kvm_regs regs;
    struct sigaction sa;
    pthread_t thread;
    volatile int started = 0;
    int kvm, vm, dupfd, stats;
    pid_t child;
    long size;
    uint8_t *ram;

    setvbuf(stdout, NULL, _IOLBF, 0);
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
    printf("api %ld\n", xioctl(kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION"));
    printf("immediate_exit cap %ld\n",
           xioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT, "KVM_CHECK_EXTENSION"));
    vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");

    ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap RAM");
    memcpy(ram + CODE_ADDR, guest, sizeof(guest));
    region = (struct kvm_userspace_memory_region){
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
        .userspace_addr = (uintptr_t)ram};
    xioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");

    vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
    size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
    run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    printf("mmap of the VM: %s\n",
           describe(mmap(NULL, 4096, PROT_READ, MAP_SHARED, vm, 0) == MAP_FAILED ? -1 : 0));

    xioctl(vcpu, KVM_GET_SREGS, (unsigned long)&sregs, "KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    xioctl(vcpu, KVM_SET_SREGS, (unsigned long)&sregs, "KVM_SET_SREGS");
    memset(&regs, 0, sizeof(regs));
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    xioctl(vcpu, KVM_SET_REGS, (unsigned long)&regs, "KVM_SET_REGS");

    run_until_hlt();

    /* the request as a sign-extended int, on a duplicate of the vCPU descriptor */
    dupfd = dup(vcpu);
    if (dupfd < 0)
        die("dup");
    memset(&regs, 0, sizeof(regs));
    xioctl(dupfd, (unsigned long)(long)(int)KVM_GET_REGS, (unsigned long)&regs, "KVM_GET_REGS");
    printf("regs rip=%#llx al=%#llx\n", (unsigned long long)regs.rip,
           (unsigned long long)(regs.rax & 0xff));
    if (close(dupfd) < 0)
        die("close dup");
    /* dup2 over a descriptor, then F_DUPFD_CLOEXEC above a floor: both name the vCPU */
    dupfd = open("/dev/null", O_RDONLY);
    if (dupfd < 0 || dup2(vcpu, dupfd) != dupfd)
        die("dup2");
    printf("dup2: %s\n", describe(ioctl(dupfd, KVM_GET_REGS, &regs)));
    close(dupfd);
    dupfd = fcntl(vcpu, F_DUPFD_CLOEXEC, 100);
    if (dupfd < 100)
        die("F_DUPFD_CLOEXEC");
    printf("F_DUPFD_CLOEXEC: %s cloexec=%d\n", describe(ioctl(dupfd, KVM_GET_REGS, &regs)),
           fcntl(dupfd, F_GETFD) & FD_CLOEXEC);
    close(dupfd);
    printf("after close: %s\n", describe(ioctl(dupfd, KVM_GET_REGS, &regs)));

    /* a forked child: its copies of the descriptors belong to another process's KVM */
    child = fork();
    if (child == 0) {
        printf("forked child: vCPU ioctl %s", describe(ioctl(vcpu, KVM_GET_REGS, &regs)));
        printf(", close %s\n", describe(close(vcpu)));
        _exit(0);
    }
    waitpid(child, NULL, 0);
    printf("parent after the fork: %s\n", describe(ioctl(vcpu, KVM_GET_REGS, &regs)));

    /* ioctls no KVM has: the errno of each kind of file */
    printf("unknown ioctl: /dev/kvm %s, VM %s, vCPU %s\n", describe(ioctl(kvm, _IO(KVMIO, 0xff))),
           describe(ioctl(vm, _IO(KVMIO, 0xff))), describe(ioctl(vcpu, _IO(KVMIO, 0xff))));

    /* the kick */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_create(&thread, NULL, vcpu_thread, (void *)&started);
    while (!started)
        usleep(1000);
    usleep(200 * 1000);
    printf("vm ioctl while the vCPU runs: %ld\n",
           xioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY, "KVM_CHECK_EXTENSION"));
    pthread_kill(thread, SIGUSR1);
    pthread_join(thread, NULL);
    run->immediate_exit = 0;

    stats = xioctl(vcpu, KVM_GET_STATS_FD, 0, "KVM_GET_STATS_FD");
    print_stats(stats);
    close(stats);
    close(vcpu);
    close(vm);
    close(kvm);
    return 0;
}
