/*
 * The silicon oracle's trampoline: run a snippet of x86-64 machine code natively,
 * in user mode inside the calling process, from a given register/flag state.
 *
 * Why a trampoline and not inline asm in a C function: the snippet may use every
 * general-purpose register, RSP included, so nothing of the host (no frame, no stack
 * pointer, no callee-saved register) can live in a register while it runs.  The state
 * goes in and out through globals addressed RIP-relatively, which need no register.
 *
 * Layout (fixed, so that snippets can use absolute addresses and so that CALL pushes the
 * same return addresses natively and on kvmpy): the code at ORACLE_CODE_ADDR, followed by
 * an absolute jump back to oracle_exit; the data area at ORACLE_DATA_ADDR; a scratch stack
 * at ORACLE_STACK_ADDR.  A snippet that faults raises a signal; the handler copies the
 * registers at the fault and the hardware vector (the kernel's trap number) and longjmps
 * back, so the host survives without forking.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define ORACLE_CODE_ADDR 0x10200000UL
#define ORACLE_CODE_SIZE 0x10000UL
#define ORACLE_DATA_ADDR 0x10000000UL
#define ORACLE_DATA_MAX 0x10000UL
#define ORACLE_STACK_ADDR 0x10100000UL
#define ORACLE_STACK_SIZE 0x10000UL
#define ORACLE_TAIL_SIZE 14 /* jmp qword ptr [rip+0]; .quad oracle_exit */

/* Flags a snippet may start with: CF PF AF ZF SF DF OF. */
#define USER_FLAGS 0xED5UL

struct oracle_state {
    uint64_t gpr[16]; /* rax rcx rdx rbx rsp rbp rsi rdi r8..r15 (encoding order) */
    uint64_t rflags;
    uint64_t rip;
    int64_t signo;  /* 0, or the signal the snippet raised */
    int64_t trapno; /* the exception vector behind that signal, -1 if none */
    int64_t err;    /* its error code */
};

__attribute__((visibility("hidden"))) struct oracle_state oracle_in, oracle_out;
__attribute__((visibility("hidden"))) uint64_t oracle_host_rsp, oracle_target;
void oracle_enter(void);
void oracle_exit(void);

__asm__(
    ".intel_syntax noprefix\n"
    ".text\n"
    ".globl oracle_enter\n"
    ".type oracle_enter, @function\n"
    "oracle_enter:\n"
    "  push rbx\n  push rbp\n  push r12\n  push r13\n  push r14\n  push r15\n"
    "  mov [rip+oracle_host_rsp], rsp\n"
    "  push qword ptr [rip+oracle_in+128]\n"
    "  popfq\n"
    "  mov rax, [rip+oracle_in+0]\n"
    "  mov rcx, [rip+oracle_in+8]\n"
    "  mov rdx, [rip+oracle_in+16]\n"
    "  mov rbx, [rip+oracle_in+24]\n"
    "  mov rbp, [rip+oracle_in+40]\n"
    "  mov rsi, [rip+oracle_in+48]\n"
    "  mov rdi, [rip+oracle_in+56]\n"
    "  mov r8, [rip+oracle_in+64]\n"
    "  mov r9, [rip+oracle_in+72]\n"
    "  mov r10, [rip+oracle_in+80]\n"
    "  mov r11, [rip+oracle_in+88]\n"
    "  mov r12, [rip+oracle_in+96]\n"
    "  mov r13, [rip+oracle_in+104]\n"
    "  mov r14, [rip+oracle_in+112]\n"
    "  mov r15, [rip+oracle_in+120]\n"
    "  mov rsp, [rip+oracle_in+32]\n"
    "  jmp qword ptr [rip+oracle_target]\n"
    ".globl oracle_exit\n"
    ".type oracle_exit, @function\n"
    "oracle_exit:\n"
    "  mov [rip+oracle_out+0], rax\n"
    "  mov [rip+oracle_out+8], rcx\n"
    "  mov [rip+oracle_out+16], rdx\n"
    "  mov [rip+oracle_out+24], rbx\n"
    "  mov [rip+oracle_out+32], rsp\n"
    "  mov [rip+oracle_out+40], rbp\n"
    "  mov [rip+oracle_out+48], rsi\n"
    "  mov [rip+oracle_out+56], rdi\n"
    "  mov [rip+oracle_out+64], r8\n"
    "  mov [rip+oracle_out+72], r9\n"
    "  mov [rip+oracle_out+80], r10\n"
    "  mov [rip+oracle_out+88], r11\n"
    "  mov [rip+oracle_out+96], r12\n"
    "  mov [rip+oracle_out+104], r13\n"
    "  mov [rip+oracle_out+112], r14\n"
    "  mov [rip+oracle_out+120], r15\n"
    "  mov rsp, [rip+oracle_host_rsp]\n"
    "  pushfq\n"
    "  pop qword ptr [rip+oracle_out+128]\n"
    "  push 0x202\n" /* the ABI's flags: DF, and AC/TF a snippet's POPF may have set, clear */
    "  popfq\n"
    "  pop r15\n  pop r14\n  pop r13\n  pop r12\n  pop rbp\n  pop rbx\n"
    "  ret\n"
    ".att_syntax prefix\n");

static sigjmp_buf fault_jmp;
static const int fault_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP};
#define NSIG_CAUGHT (sizeof(fault_signals) / sizeof(fault_signals[0]))
static char alt_stack[1 << 16];

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
    static const int greg_of[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP,
                                    REG_RSI, REG_RDI, REG_R8,  REG_R9,  REG_R10, REG_R11,
                                    REG_R12, REG_R13, REG_R14, REG_R15};
    greg_t *g = ((ucontext_t *)ctx)->uc_mcontext.gregs;
    (void)si;
    for (int i = 0; i < 16; i++)
        oracle_out.gpr[i] = (uint64_t)g[greg_of[i]];
    oracle_out.rflags = (uint64_t)g[REG_EFL];
    oracle_out.rip = (uint64_t)g[REG_RIP];
    oracle_out.trapno = (int64_t)g[REG_TRAPNO];
    oracle_out.err = (int64_t)g[REG_ERR];
    siglongjmp(fault_jmp, sig);
}

static int mapped;

/* Map the code and stack areas once; the data area is mapped per run at its size. */
static int map_fixed_areas(void)
{
    void *code, *stack;
    if (mapped)
        return 0;
    code = mmap((void *)ORACLE_CODE_ADDR, ORACLE_CODE_SIZE, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (code != (void *)ORACLE_CODE_ADDR)
        return -1;
    stack = mmap((void *)ORACLE_STACK_ADDR, ORACLE_STACK_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (stack != (void *)ORACLE_STACK_ADDR)
        return -2;
    mapped = 1;
    return 0;
}

/*
 * Run code[0:code_len] with the state in *st; mem[0:mem_len] (a whole number of pages)
 * is the data area, copied in before and out after.  On return *st holds the state at
 * the end (or at the fault).  Returns 0 on success, a negative setup error otherwise.
 */
int oracle_run(struct oracle_state *st, const uint8_t *code, uint64_t code_len, uint8_t *mem,
               uint64_t mem_len)
{
    struct sigaction act, old_act[NSIG_CAUGHT];
    stack_t alt, old_alt;
    uint8_t *tail;
    void *data;
    int rc = map_fixed_areas();

    if (rc)
        return rc;
    if (code_len + ORACLE_TAIL_SIZE > ORACLE_CODE_SIZE)
        return -3;
    if (mem_len == 0 || mem_len > ORACLE_DATA_MAX || mem_len % 4096)
        return -4;
    data = mmap((void *)ORACLE_DATA_ADDR, mem_len, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (data != (void *)ORACLE_DATA_ADDR) {
        if (data != MAP_FAILED)
            munmap(data, mem_len);
        return -5;
    }
    memcpy(data, mem, mem_len);
    memset((void *)ORACLE_STACK_ADDR, 0, ORACLE_STACK_SIZE);

    mprotect((void *)ORACLE_CODE_ADDR, ORACLE_CODE_SIZE, PROT_READ | PROT_WRITE);
    memcpy((void *)ORACLE_CODE_ADDR, code, code_len);
    tail = (uint8_t *)ORACLE_CODE_ADDR + code_len;
    memcpy(tail, "\xff\x25\x00\x00\x00\x00", 6);
    *(uint64_t *)(tail + 6) = (uint64_t)(uintptr_t)&oracle_exit;
    mprotect((void *)ORACLE_CODE_ADDR, ORACLE_CODE_SIZE, PROT_READ | PROT_EXEC);

    oracle_in = *st;
    oracle_in.rflags = (__builtin_ia32_readeflags_u64() & ~USER_FLAGS) | (st->rflags & USER_FLAGS);
    oracle_target = ORACLE_CODE_ADDR;
    memset(&oracle_out, 0, sizeof(oracle_out));
    oracle_out.trapno = -1;

    alt.ss_sp = alt_stack;
    alt.ss_size = sizeof(alt_stack);
    alt.ss_flags = 0;
    sigaltstack(&alt, &old_alt);
    memset(&act, 0, sizeof(act));
    act.sa_sigaction = on_fault;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&act.sa_mask);
    for (unsigned i = 0; i < NSIG_CAUGHT; i++)
        sigaction(fault_signals[i], &act, &old_act[i]);

    oracle_out.signo = sigsetjmp(fault_jmp, 1);
    if (oracle_out.signo == 0) {
        oracle_enter();
        oracle_out.rip = (uint64_t)(uintptr_t)tail;
    } else {
        __builtin_ia32_writeeflags_u64(0x202); /* as in oracle_exit */
    }

    for (unsigned i = 0; i < NSIG_CAUGHT; i++)
        sigaction(fault_signals[i], &old_act[i], NULL);
    sigaltstack(&old_alt, NULL);

    *st = oracle_out;
    memcpy(mem, data, mem_len);
    munmap(data, mem_len);
    return 0;
}
