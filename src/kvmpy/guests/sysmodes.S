/*
 * sysmodes.S - differential-test guest for the processor's system paths: mode switches,
 * exception delivery (with privilege changes, TSS stacks and an IST stack), paging faults,
 * fast system calls and SWAPGS.  Run on the host's /dev/kvm and on kvmpy it must print the
 * same lines, exit the same way and end in the same registers (tests/guests/test_sysmodes.py).
 *
 * The host runs guests in KVM's instruction emulator, which implements INT n and IRET only
 * in real mode, no far RET to an outer privilege level, and no SYSRET/SYSEXIT in long mode.
 * So in protected and long mode every handler here returns like a longjmp: it records what
 * the processor pushed, reloads the stack pointer saved by TRY and jumps to the resume
 * point TRY named (the faulting instruction itself when the handler repaired the cause).
 * Ring 3 is entered with SYSEXIT (32-bit) and left through faults and SYSENTER.
 *
 * Steps (one console line each; a failed check writes the step number to port 0xf4):
 *   real mode   INT 0x30 through an IVT entry, IRET back
 *   pm16        far jump into a 16-bit code segment and back
 *   pm32        IDT: #DE (handler fixes the divisor, DIV restarts), #UD (ud2), #GP from
 *               loading a TSS selector into DS; PAE paging with CR0.WP: #PF on a
 *               not-present page, handler maps it, the store restarts (CR2, error code)
 *   ring 3      SYSEXIT to CPL 3; CLI there: #GP delivered on the TSS ring-0 stack; a store
 *               to a supervisor page: #PF (error code 7); SYSENTER back to CPL 0
 *   long mode   64-bit IDT: #UD on IST1, #GP for a non-canonical address, #PF at CPL 0
 *               (demand mapping), SYSCALL with STAR/LSTAR/SFMASK and SWAPGS in the handler,
 *               a far call into a 32-bit compatibility-mode segment and far RET back
 * Finally it prints the number of checks passed and leaves RAX..R15 as listed in
 * tests/guests/test_sysmodes.py before writing 0 to the isa-debug-exit port.
 */
        .include "boot.inc"

        .set IDT32,      0x10000
        .set IDT64,      0x11000
        .set TSS32,      0x12000
        .set TSS64,      0x12100
        .set PERCPU,     0x13000        /* kernel GS base: a magic word, then scratch */
        .set KSTACK0,    0x1a000        /* TSS ESP0 and SYSENTER_ESP */
        .set USTACK,     0x1b000
        .set IST1_TOP,   0x1c000
        .set DEMAND,     0x1f000        /* page mapped on demand by the #PF handler */
        .set SEL_SYSENTER, 0x28         /* 0x28 code, 0x30 data, 0x38|3 user code, 0x40|3 data */
        .set SEL_CODE16, 0x48
        .set SEL_TSS32,  0x50
        .set SEL_TSS64,  0x58
        .set GS_MAGIC,   0x6b65726e

/* Record the stack pointer and the resume point for the next fault. */
.macro  TRY32 resume
        mov     %esp, ksp
        movl    $\resume, resume
.endm
.macro  TRY64 resume
        mov     %rsp, ksp
        movl    $\resume, resume
.endm
/* Compare the low 32 bits of a variable with a constant; count the check or fail. */
.macro  CHECK var, value, fail
        cmpl    $\value, \var
        jne     \fail
        incl    nchecks
.endm
.macro  STEP32 n, msg
        movb    $\n, step
        mov     $\msg, %esi
        call    puts32
.endm
.macro  STEP64 n, msg
        movb    $\n, step
        mov     $\msg, %esi
        call    puts64
.endm

        .code16
stage16:
        movw    $rm_int30, 0x30 * 4
        movw    $0, 0x30 * 4 + 2
        mov     $0x1111, %bx
        int     $0x30
        cmp     $0x2222, %bx
        jne     fail16
        incl    nchecks
        movb    $1, step
        mov     $msg_real, %si
        jmp     puts16
rm_int30:
        add     %bx, %bx
        iret
fail16:
        mov     $1, %al
        out     %al, $DEBUG_EXIT
        hlt

pm16:                                   /* CS = SEL_CODE16, 16-bit protected mode */
        mov     %cs, %ax
        mov     %ax, last_cs
        ljmpl   $SEL_CODE32, $pm16_back

        .code32
stage32:
        lgdtl   gdt_desc2
        ljmp    $SEL_CODE16, $pm16
pm16_back:
        CHECK   last_cs, SEL_CODE16, fail32
        STEP32  2, msg_pm16

        mov     $gates, %esi            /* IDT32: gate low dword = handler | CS 0x08 */
1:      movzbl  (%esi), %ebx
        movzwl  2(%esi), %eax
        or      $(SEL_CODE32 << 16), %eax
        mov     %eax, IDT32(,%ebx,8)
        movl    $0x8e00, IDT32 + 4(,%ebx,8)
        add     $4, %esi
        cmp     $gates_end, %esi
        jb      1b
        lidtl   idt32_desc

        mov     $30, %eax               /* #DE: the handler sets ECX = 3, DIV runs again */
        xor     %edx, %edx
        xor     %ecx, %ecx
        TRY32   2f
2:      div     %ecx
        CHECK   last_vec, 0, fail32
        CHECK   last_cs, SEL_CODE32, fail32
        cmp     $10, %eax
        jne     fail32
        TRY32   3f                      /* #UD */
        ud2
3:      CHECK   last_vec, 6, fail32
        mov     ksp, %eax
        sub     $4, %eax                /* EFLAGS is left on the same stack */
        cmp     %eax, last_sp
        jne     fail32
        TRY32   4f                      /* #GP(selector): a TSS is not a data segment */
        mov     $SEL_TSS32, %ax
        mov     %ax, %ds
4:      CHECK   last_vec, 13, fail32
        CHECK   last_err, SEL_TSS32, fail32
        STEP32  3, msg_exc32


        movl    $KSTACK0, TSS32 + 4     /* ESP0 */
        movl    $SEL_DATA, TSS32 + 8    /* SS0 */
        mov     $SEL_TSS32, %ax
        ltr     %ax
        mov     $0x174, %ecx            /* SYSENTER_CS, _ESP, _EIP */
        mov     $SEL_SYSENTER, %eax
        xor     %edx, %edx
        wrmsr
        inc     %ecx
        mov     $KSTACK0, %eax
        wrmsr
        inc     %ecx
        mov     $sysenter32, %eax
        wrmsr
        mov     $user_cli, %edx
        TRY32   6f
        call    to_user
6:      CHECK   last_vec, 13, fail32
        CHECK   last_err, 0, fail32
        CHECK   last_cs, 0x3b, fail32
        CHECK   last_sp, KSTACK0-12, fail32
        mov     $user_sysenter, %edx
        TRY32   8f
        call    to_user
8:      CHECK   last_vec, 0x100, fail32
        CHECK   last_cs, SEL_SYSENTER, fail32
        CHECK   last_err, 0x3b, fail32
        ljmp    $SEL_CODE32, $9f        /* back to boot.inc's selectors */
9:      mov     $SEL_DATA, %ax
        mov     %ax, %ss
        STEP32  4, msg_ring3
        ret

to_user:                                /* SYSEXIT to CPL 3 at EDX */
        mov     $USTACK, %ecx
        sysexit
user_cli:
        cli
user_sysenter:
        mov     %cs, %eax
        sysenter
sysenter32:                             /* records CS and the caller's CS as vector 0x100 */
        movl    $0x100, last_vec
        mov     %eax, last_err
        mov     %cs, %eax
        mov     %eax, last_cs
        mov     ksp, %esp
        jmp     *resume

de32:   mov     $3, %ecx
        push    $0
        push    $0
        jmp     c32
ud32:   push    $0
        push    $6
        jmp     c32
gp32:   push    $13
        jmp     c32
/* Common 32-bit handler: stack = vector, error code, EIP, CS, EFLAGS [, ESP, SS]. */
c32:    pop     last_vec
        pop     last_err
        pop     last_eip
        pop     last_cs
        mov     %esp, last_sp
        mov     ksp, %esp
        jmp     *resume

fail32: movzbl  step, %eax
        out     %al, $DEBUG_EXIT
        hlt

        .code64
main64:
        STEP64  5, msg_long
        mov     $gates64, %esi          /* IDT64: CS 0x18, IST from the table */
1:      movzbl  (%rsi), %ebx
        shl     $4, %ebx
        movzwl  2(%rsi), %eax
        or      $(SEL_CODE64 << 16), %eax
        mov     %eax, IDT64(%rbx)
        movzbl  1(%rsi), %eax
        or      $0x8e00, %eax
        mov     %eax, IDT64 + 4(%rbx)
        add     $4, %esi
        cmp     $gates64_end, %esi
        jb      1b
        lidt    idt64_desc
        movl    $IST1_TOP, TSS64 + 0x24
        mov     $SEL_TSS64, %ax
        ltr     %ax

        TRY64   2f                      /* #UD, delivered on the IST1 stack */
        ud2
2:      CHECK   last_vec, 6, fail64
        CHECK   last_cs, SEL_CODE64, fail64
        CHECK   last_sp, IST1_TOP-24, fail64
        TRY64   3f                      /* #GP(0): non-canonical address */
        movabs  $0x8000000000000000, %rax
        mov     (%rax), %rax
3:      CHECK   last_vec, 13, fail64
        CHECK   last_err, 0, fail64
        movl    $0x5ca1ab1e, DEMAND + 8
        movq    $0, PT_LOW + DEMAND / 512   /* #PF on a page made not present */
        invlpg  DEMAND
        TRY64   4f
4:      mov     DEMAND + 8, %r8
        CHECK   last_vec, 14, fail64
        CHECK   last_err, 0, fail64
        CHECK   last_cr2, DEMAND+8, fail64
        cmp     $0x5ca1ab1e, %r8
        jne     fail64
        STEP64  6, msg_exc64

        mov     $0xc0000080, %ecx       /* EFER.SCE */
        rdmsr
        or      $1, %eax
        wrmsr
        mov     $0xc0000081, %ecx       /* STAR: SYSCALL CS 0x18, SS 0x20 */
        xor     %eax, %eax
        mov     $SEL_CODE64, %edx
        wrmsr
        inc     %ecx                    /* LSTAR */
        mov     $syscall64, %eax
        xor     %edx, %edx
        wrmsr
        mov     $0xc0000084, %ecx       /* SFMASK: TF, IF, DF */
        mov     $0x700, %eax
        wrmsr
        mov     $0xc0000102, %ecx       /* KERNEL_GS_BASE */
        mov     $PERCPU, %eax
        wrmsr
        movl    $GS_MAGIC, PERCPU
        std
        syscall
        cld
        CHECK   PERCPU+8, GS_MAGIC, fail64
        mov     %r11, %rax
        and     $0x400, %eax            /* R11 = RFLAGS before: DF set */
        jz      fail64
        mov     PERCPU + 16, %rax       /* RFLAGS in the handler: DF masked */
        and     $0x400, %eax
        jnz     fail64
        mov     $0xc0000102, %ecx       /* SWAPGS ran twice: the bases are back */
        rdmsr
        cmp     $PERCPU, %eax
        jne     fail64
        STEP64  7, msg_syscall

        lcall   *compat_ptr             /* 32-bit compatibility mode and back */
        CHECK   last_cs, SEL_CODE32, fail64
        cmp     $0x87654321, %ebp
        jne     fail64
        STEP64  8, msg_compat

        mov     $msg_done, %rsi
        call    puts64
        mov     nchecks, %eax
        call    put_dec64
        mov     $msg_checks, %rsi
        call    puts64

        movabs  $0x1111111111111100, %rax
        movabs  $0x2222222222222222, %rbx
        movabs  $0x3333333333333333, %rcx
        movabs  $0x5555555555555555, %rsi
        movabs  $0x6666666666666666, %rdi
        movabs  $0x7777777777777777, %rbp
        movabs  $0x8888888888888888, %r8
        movabs  $0x9999999999999999, %r9
        movabs  $0xaaaaaaaaaaaaaaaa, %r10
        movabs  $0xbbbbbbbbbbbbbbbb, %r11
        movabs  $0xcccccccccccccccc, %r12
        movabs  $0xdddddddddddddddd, %r13
        movabs  $0xeeeeeeeeeeeeeeee, %r14
        movabs  $0xffffffffffffffff, %r15
        jmp     debug_exit

syscall64:
        swapgs
        mov     %gs:0, %eax
        mov     %eax, %gs:8
        pushfq
        popq    %gs:16
        swapgs
        push    %r11
        popfq
        jmp     *%rcx

ud64:   push    $0
        push    $6
        jmp     c64
gp64:   push    $13
        jmp     c64
pf64:   push    $14
/* Common 64-bit handler: stack = vector, error code, RIP, CS, RFLAGS, RSP, SS.  Clobbers RAX. */
c64:    popq    last_vec
        popq    last_err
        popq    last_eip
        popq    last_cs
        mov     %rsp, last_sp
        mov     %cr2, %rax
        mov     %rax, last_cr2
        cmpl    $14, last_vec
        jne     1f
        movq    $(DEMAND | PTE_P_W), PT_LOW + DEMAND / 512
1:      mov     ksp, %rsp
        jmp     *resume

fail64: movzbl  step, %eax
        out     %al, $DEBUG_EXIT
        hlt

        .code32
compat32:                               /* CS = SEL_CODE32 while EFER.LMA = 1 */
        mov     %cs, %eax
        mov     %eax, last_cs
        mov     $0x87654321, %eax
        push    %eax
        pop     %ebp
        lret

/* IDT entries: vector, IST (long mode), handler (below 64 KiB). */
        .p2align 2
gates:
        .byte   0, 0
        .word   de32
        .byte   6, 0
        .word   ud32
        .byte   13, 0
        .word   gp32
gates_end:
gates64:
        .byte   6, 1
        .word   ud64
        .byte   13, 0
        .word   gp64
        .byte   14, 0
        .word   pf64
gates64_end:

        .p2align 3
gdt2:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x10: data */
        .quad   0x00af9a000000ffff      /* 0x18: 64-bit code */
        .quad   0x00cf92000000ffff      /* 0x20: data (SYSCALL SS) */
        .quad   0x00cf9a000000ffff      /* 0x28: 32-bit code (SYSENTER CS) */
        .quad   0x00cf92000000ffff      /* 0x30: data (SYSENTER SS) */
        .quad   0x00cffa000000ffff      /* 0x38: user 32-bit code (SYSEXIT CS) */
        .quad   0x00cff2000000ffff      /* 0x40: user data (SYSEXIT SS) */
        .quad   0x00009a000000ffff      /* 0x48: 16-bit code */
        .word   0x67, TSS32 & 0xffff, 0x8900 | (TSS32 >> 16), 0             /* 0x50 */
        .word   0x67, TSS64 & 0xffff, 0x8900 | (TSS64 >> 16), 0, 0, 0, 0, 0 /* 0x58 */
gdt2_end:
gdt_desc2:
        .word   gdt2_end - gdt2 - 1
        .long   gdt2
idt32_desc:
        .word   0x7ff
        .long   IDT32
idt64_desc:
        .word   0xfff
        .quad   IDT64
compat_ptr:
        .long   compat32
        .word   SEL_CODE32

        .p2align 3
nchecks:  .quad 0
ksp:      .quad 0
resume:   .quad 0
last_vec: .quad 0
last_err: .quad 0
last_eip: .quad 0
last_cs:  .quad 0
last_sp:  .quad 0
last_cr2: .quad 0
step:     .byte 0

msg_real:    .asciz "sysmodes: real mode INT/IRET\r\n"
msg_pm16:    .asciz "sysmodes: 16-bit protected mode\r\n"
msg_exc32:   .asciz "sysmodes: pm32 #DE #UD #GP\r\n"
msg_ring3:   .asciz "sysmodes: ring 3 #GP SYSENTER\r\n"
msg_long:    .asciz "sysmodes: long mode\r\n"
msg_exc64:   .asciz "sysmodes: lm #UD(IST) #GP #PF\r\n"
msg_syscall: .asciz "sysmodes: SYSCALL SWAPGS\r\n"
msg_compat:  .asciz "sysmodes: compatibility mode\r\n"
msg_done:    .asciz "sysmodes: "
msg_checks:  .asciz " checks ok\r\n"
