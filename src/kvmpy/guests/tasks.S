/*
 * tasks.S - guest for call gates, hardware task switches and virtual-8086 mode, checked
 * against QEMU TCG (tests/guests/test_tasks.py; the host's KVM emulator does none of these).
 *
 * Steps (one console line each after its checks pass; a failed check writes the step
 * number to port 0xf4, success writes 0):
 *   1 gate same-priv   LCALL through a DPL-0 32-bit call gate at CPL 0, LRET back
 *   2 gate ring 3->0   IRET to CPL 3; LCALL through a DPL-3 gate with 2 parameters: TSS
 *                      stack, copied parameters, old SS:ESP; LRET 8 back to CPL 3; LCALL
 *                      through a DPL-0 gate from CPL 3: #GP(gate)
 *   3 task call/iret   LCALL to a task gate: new task sees NT, back link, its registers,
 *                      CR0.TS; IRET (NT=1) returns; busy bits checked in the GDT
 *   4 task jmp         LJMP to the TSS, the task LJMPs back: busy bits, no NT
 *   5 task idt         INT through a task gate in the IDT; #GP through a task gate: the
 *                      error code on the new task's stack, faulting EIP in the old TSS
 *   6 vm86             IRET to VM=1 (IOPL 3): segments as in real mode, PUSHF/CLI/STI,
 *                      INT to a 32-bit ring-0 handler (frame with ES DS FS GS, data
 *                      segments cleared), IRET back to vm86, IRET inside vm86
 *   7 vm86 iopl0       VM=1 with IOPL 0: CLI is #GP(0) with a vm86 frame
 *   8 lm gate same     64-bit (16-byte) call gate at CPL 0, LRETQ back
 *   9 lm gate 3->0     IRETQ to CPL 3; LCALL through the 64-bit gate: RSP0 from the TSS,
 *                      null SS, 8-byte frame; LRETQ to CPL 3; a task switch in long mode
 *                      is #GP(selector)
 */
        .include "boot.inc"

        .set IDT32,      0x10000
        .set IDT64,      0x11000
        .set TSS_A,      0x12000        /* the main task (TR from the start) */
        .set TSS_B,      0x12100        /* reached by LCALL through a task gate, then LJMP */
        .set TSS_C,      0x12200        /* IDT vector 0x40 */
        .set TSS_D,      0x12300        /* IDT vector 13 while step 5 runs */
        .set TSS64,      0x12400
        .set KSTACK0,    0x1a000        /* TSS_A ESP0, TSS64 RSP0 */
        .set USTACK,     0x1b000
        .set STACK_B,    0x1c000
        .set STACK_C,    0x1c800
        .set STACK_D,    0x1d000
        .set VM86_SS,    0x0600         /* vm86 stack segment: linear 0x6000 + SP */
        .set VM86_SP,    0x0800
        .set SEL_CODE3,  0x23           /* 0x20 | RPL 3 */
        .set SEL_DATA3,  0x2b
        .set SEL_TSS_A,  0x30
        .set SEL_TSS_B,  0x38
        .set SEL_GATE3,  0x43           /* 32-bit call gate, DPL 3, 2 parameters */
        .set SEL_TGATE,  0x48           /* task gate -> TSS_B */
        .set SEL_TSS_C,  0x50
        .set SEL_GATE0,  0x58           /* 32-bit call gate, DPL 0 */
        .set SEL_TSS64,  0x60
        .set SEL_GATE64, 0x73           /* 64-bit call gate, DPL 3 (16 bytes: 0x70, 0x78) */
        .set SEL_CODE64_3, 0x83
        .set SEL_TSS_D,  0x88
        .set EFL_NT,     0x4000
        .set EFL_VM,     0x20000
        .set EFL_IOPL3,  0x3000

.macro  CHECK var, value, fail
        cmpl    $\value, \var
        jne     \fail
.endm
.macro  STEP n
        movb    $\n, step
.endm
.macro  DONE32 msg
        mov     $\msg, %esi
        call    puts32
.endm
.macro  TRY resume
        mov     %esp, ksp
        movl    $\resume, resume
.endm
/* 8-byte descriptors */
.macro  TSSDESC base
        .word   0x67, \base & 0xffff
        .byte   (\base >> 16) & 0xff, 0x89, 0, \base >> 24
.endm
.macro  GATE sel, target, access, params
        .word   \target, \sel
        .byte   \params, \access
        .word   0
.endm

        .code16
stage16:
        ret

        .code32
stage32:
        lgdt    gdt_desc32
        lidt    idt_desc32
        xor     %eax, %eax              /* zero IDT and TSS pages */
        mov     $IDT32, %edi
        mov     $(0x3000 / 4), %ecx
        rep stosl
        mov     $13, %ecx
        mov     $gp32, %eax
        mov     $0x8e, %bl
        call    set_gate32
        mov     $0x41, %ecx
        mov     $vm86_int, %eax
        mov     $0xee, %bl              /* interrupt gate, DPL 3 (INT n from vm86) */
        call    set_gate32
        movl    $(SEL_TSS_C << 16), IDT32 + 0x40 * 8
        movl    $0x8500, IDT32 + 0x40 * 8 + 4
        mov     $TSS_A, %edi
        xor     %eax, %eax
        xor     %ecx, %ecx
        call    init_tss
        movl    $KSTACK0, TSS_A + 4     /* ESP0 */
        movl    $0x10, TSS_A + 8        /* SS0 */
        mov     $TSS_B, %edi
        mov     $task_b, %eax
        mov     $STACK_B, %ecx
        call    init_tss
        movl    $0xb0b0, TSS_B + 0x28   /* EAX */
        mov     $TSS_C, %edi
        mov     $task_c, %eax
        mov     $STACK_C, %ecx
        call    init_tss
        mov     $TSS_D, %edi
        mov     $task_d, %eax
        mov     $STACK_D, %ecx
        call    init_tss
        mov     $SEL_TSS_A, %ax
        ltr     %ax

/* 1: call gate at the same privilege level */
        STEP    1
        mov     %esp, %ebp
        lcall   $SEL_GATE0, $0
gate_ret1:
        cmp     %esp, %ebp
        jne     fail32
        CHECK   g_cs, SEL_CODE32, fail32
        CHECK   g_ret, gate_ret1, fail32
        lea     -8(%ebp), %eax
        cmp     %eax, g_esp
        jne     fail32
        DONE32  msg_1

/* 2: ring 3 -> ring 0 through a gate with parameters, LRET back, then #GP */
        STEP    2
        TRY     2f
        pushl   $SEL_DATA3
        pushl   $USTACK
        pushl   $0x2
        pushl   $SEL_CODE3
        pushl   $ring3
        iret
2:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        CHECK   gp_err, (SEL_GATE0&~3), fail32
        CHECK   gp_cs, SEL_CODE3, fail32
        CHECK   g_esp, KSTACK0-24, fail32
        CHECK   g_ret, r3_ret, fail32
        CHECK   g_cs, SEL_CODE3, fail32
        CHECK   g_frame + 8, 0x2222, fail32
        CHECK   g_frame + 12, 0x1111, fail32
        CHECK   g_frame + 16, USTACK-8, fail32
        CHECK   g_frame + 20, SEL_DATA3, fail32
        CHECK   r3_esp, USTACK, fail32
        CHECK   r3_cs, SEL_CODE3, fail32
        DONE32  msg_2

/* 3: CALL to a task gate, IRET back through the back link */
        STEP    3
        mov     $0x600d, %edi
        lcall   $SEL_TGATE, $0
        cmp     $0x600d, %edi
        jne     fail32
        CHECK   b_eax, 0xb0b0, fail32
        CHECK   b_link, SEL_TSS_A, fail32
        CHECK   b_tr, SEL_TSS_B, fail32
        testl   $EFL_NT, b_flags
        jz      fail32
        testl   $8, b_cr0               /* CR0.TS set by the switch */
        jz      fail32
        pushf
        testl   $EFL_NT, (%esp)
        jnz     fail32
        popf
        cmpb    $0x89, gdt32 + SEL_TSS_B + 5    /* B available again, A still busy */
        jne     fail32
        cmpb    $0x8b, gdt32 + SEL_TSS_A + 5
        jne     fail32
        str     %ax
        cmp     $SEL_TSS_A, %ax
        jne     fail32
        clts
        DONE32  msg_3

/* 4: JMP to the TSS; the task JMPs back */
        STEP    4
        movl    $0, b_flags
        ljmp    $SEL_TSS_B, $0
        CHECK   b_eax, 0xb1b1, fail32
        testl   $EFL_NT, b_flags        /* B was left by IRET, which cleared its saved NT */
        jnz     fail32
        cmpb    $0x89, gdt32 + SEL_TSS_B + 5
        jne     fail32
        cmpb    $0x8b, gdt32 + SEL_TSS_A + 5
        jne     fail32
        pushf
        testl   $EFL_NT, (%esp)
        jnz     fail32
        popf
        DONE32  msg_4

/* 5: task gates in the IDT: INT n, and #GP with an error code */
        STEP    5
        int     $0x40
        CHECK   c_link, SEL_TSS_A, fail32
        testl   $EFL_NT, c_flags
        jz      fail32
        movl    $(SEL_TSS_D << 16), IDT32 + 13 * 8
        movl    $0x8500, IDT32 + 13 * 8 + 4
gp_here:
        ljmp    $SEL_TSS_A, $0          /* busy TSS: #GP(0x30) through the task gate */
        jmp     fail32
gp_skip:
        CHECK   d_err, SEL_TSS_A, fail32
        CHECK   d_eip, gp_here, fail32
        mov     $13, %ecx
        mov     $gp32, %eax
        mov     $0x8e, %bl
        call    set_gate32
        clts
        DONE32  msg_5

/* 6: virtual-8086 mode with IOPL 3 */
        STEP    6
        TRY     6f
        mov     $(EFL_VM | EFL_IOPL3 | 2), %eax
        mov     $vm86_code, %ebx
        call    enter_vm86
6:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        CHECK   v_frame, vm86_int_ret, fail32
        CHECK   v_frame + 4, 0, fail32
        CHECK   v_frame + 12, VM86_SP, fail32
        CHECK   v_frame + 16, VM86_SS, fail32
        CHECK   v_frame + 20, 0x0700, fail32     /* ES */
        CHECK   v_frame + 24, 0x0600, fail32     /* DS */
        CHECK   v_frame + 28, 0x0020, fail32     /* FS */
        CHECK   v_frame + 32, 0x0030, fail32     /* GS */
        testl   $EFL_VM, v_frame + 8
        jz      fail32
        CHECK   v_ds, 0, fail32
        CHECK   v_result, 0x1234abcd, fail32
        CHECK   gp_err, 0, fail32
        CHECK   gp_eip, vm86_done, fail32
        DONE32  msg_6

/* 7: vm86 with IOPL 0: CLI faults */
        STEP    7
        TRY     7f
        mov     $(EFL_VM | 2), %eax
        mov     $vm86_cli, %ebx
        call    enter_vm86
7:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        CHECK   gp_err, 0, fail32
        CHECK   gp_eip, vm86_cli, fail32
        CHECK   gp_cs, 0, fail32
        testl   $EFL_VM, gp_eflags
        jz      fail32
        DONE32  msg_7
        ret

/* IRET to vm86 with EFLAGS in EAX and IP in EBX (CS = 0, SS:SP = VM86_SS:VM86_SP). */
enter_vm86:
        pushl   $0x0030                 /* GS */
        pushl   $0x0020                 /* FS */
        pushl   $0x0600                 /* DS */
        pushl   $0x0700                 /* ES */
        pushl   $VM86_SS
        pushl   $VM86_SP
        push    %eax
        pushl   $0
        push    %ebx
        iret

/* IDT entry ECX -> handler EAX in the 32-bit code segment, access byte BL. */
set_gate32:
        mov     %ax, IDT32(, %ecx, 8)
        movw    $SEL_CODE32, IDT32 + 2(, %ecx, 8)
        shr     $16, %eax
        mov     %ax, IDT32 + 6(, %ecx, 8)
        mov     %bl, IDT32 + 5(, %ecx, 8)
        movb    $0, IDT32 + 4(, %ecx, 8)
        ret

/* A ring-0 32-bit TSS at EDI: EIP = EAX, ESP = ECX, flat segments, no LDT. */
init_tss:
        movl    %eax, 0x20(%edi)
        movl    $2, 0x24(%edi)
        movl    %ecx, 0x38(%edi)
        movl    $SEL_DATA, 0x48(%edi)
        movl    $SEL_CODE32, 0x4c(%edi)
        movl    $SEL_DATA, 0x50(%edi)
        movl    $SEL_DATA, 0x54(%edi)
        movl    $SEL_DATA, 0x58(%edi)
        movl    $SEL_DATA, 0x5c(%edi)
        movw    $0x68, 0x66(%edi)       /* I/O bitmap beyond the limit: none */
        ret

/* #GP at CPL 0 (from ring 3 or vm86 too): record, then resume like a longjmp. */
gp32:   mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        popl    gp_err
        mov     (%esp), %eax
        mov     %eax, gp_eip
        mov     4(%esp), %eax
        mov     %eax, gp_cs
        mov     8(%esp), %eax
        mov     %eax, gp_eflags
        mov     ksp, %esp
        jmp     *resume

/* Target of both 32-bit call gates: record the frame, return past the parameters. */
gate32: mov     %esp, %ss:g_esp
        mov     %ss:(%esp), %eax
        mov     %eax, %ss:g_ret
        movzwl  %ss:4(%esp), %eax
        mov     %eax, %ss:g_cs
        mov     %ss:8(%esp), %eax
        mov     %eax, %ss:g_frame + 8
        mov     %ss:12(%esp), %eax
        mov     %eax, %ss:g_frame + 12
        mov     %ss:16(%esp), %eax
        mov     %eax, %ss:g_frame + 16
        mov     %ss:20(%esp), %eax
        mov     %eax, %ss:g_frame + 20
        testb   $3, %ss:4(%esp)
        jz      1f
        lret    $8
1:      lret

ring3:  mov     $SEL_DATA3, %ax
        mov     %ax, %ds
        mov     %ax, %es
        pushl   $0x1111
        pushl   $0x2222
        lcall   $SEL_GATE3, $0
r3_ret: mov     %esp, r3_esp
        movl    $0, r3_cs
        mov     %cs, r3_cs
        lcall   $SEL_GATE0 | 3, $0      /* gate DPL 0 < CPL 3: #GP, handled at CPL 0 */
        jmp     .

/* Task B: first entered by LCALL (returns with IRET), then by LJMP (leaves with LJMP). */
task_b: mov     %eax, b_eax
        pushf
        popl    b_flags
        movzwl  TSS_B, %eax
        mov     %eax, b_link
        str     %ax
        movzwl  %ax, %eax
        mov     %eax, b_tr
        mov     %cr0, %eax
        mov     %eax, b_cr0
        iret
        movl    $0xb1b1, b_eax
        pushf
        popl    b_flags
        ljmp    $SEL_TSS_A, $0
        jmp     fail32

task_c: movzwl  TSS_C, %eax
        mov     %eax, c_link
        pushf
        popl    c_flags
        iret
        jmp     fail32

/* #GP through a task gate: the error code is on this task's stack; skip the fault. */
task_d: popl    d_err
        mov     TSS_A + 0x20, %eax
        mov     %eax, d_eip
        movl    $gp_skip, TSS_A + 0x20
        iret
        jmp     fail32

/* 32-bit ring-0 handler for INT 0x41 from vm86: record the frame, IRET back to vm86. */
vm86_int:
        mov     %ds, %ax
        movzwl  %ax, %eax
        mov     $0x10, %cx
        mov     %cx, %ds
        mov     %eax, v_ds
        mov     %esp, %esi
        mov     $v_frame, %edi
        mov     $9, %ecx
1:      mov     (%esi), %eax
        mov     %eax, (%edi)
        add     $4, %esi
        add     $4, %edi
        loop    1b
        iret

fail32: movzbl  step, %eax
        out     %al, $DEBUG_EXIT
        hlt

        .code16
vm86_code:
        mov     %cs, %ax                /* 0 */
        test    %ax, %ax
        jnz     1f
        movl    $0x1234abcd, %ds:0x10   /* DS = 0x600: linear 0x6010 */
        cli
        sti
        pushf
        popf
        int     $0x41
vm86_int_ret:
        mov     %ds, %ax
        cmp     $0x0600, %ax
        jne     1f
        pushf                           /* IRET inside vm86 (IOPL 3) */
        push    %cs
        push    $2f
        iret
1:      jmp     1b                      /* a failed check spins: the run times out */
2:      mov     %ds:0x10, %eax
        xor     %bx, %bx
        mov     %bx, %ds
        mov     %eax, v_result
        cli                             /* IOPL 3: allowed */
vm86_done:
        hlt                             /* CPL 3: #GP(0) back to protected mode */
vm86_cli:
        cli                             /* IOPL 0: #GP(0) */
        jmp     .

/* ---------------------------------------------------------------- long mode */
        .code64
main64:
        lidt    idt_desc64
        mov     $IDT64 + 13 * 16, %rdi
        mov     $gp64, %eax
        mov     %ax, (%rdi)
        movw    $SEL_CODE64, 2(%rdi)
        movw    $0x8e00, 4(%rdi)
        shr     $16, %eax
        mov     %ax, 6(%rdi)
        movq    $0, 8(%rdi)
        orq     $4, PML4                /* user pages for CPL 3: the first 2 MiB */
        orq     $4, PDPT
        orq     $4, PD_LOW
        mov     $PT_LOW, %edi
        mov     $512, %ecx
1:      orq     $4, (%rdi)
        add     $8, %rdi
        loop    1b
        mov     %cr3, %rax
        mov     %rax, %cr3
        movq    $KSTACK0, TSS64 + 4     /* RSP0 */
        movw    $0x68, TSS64 + 0x66
        mov     $SEL_TSS64, %ax
        ltr     %ax

/* 8: 64-bit call gate at CPL 0 */
        movb    $8, step
        mov     %rsp, %rbp
        lcall   *gate64_ptr
        cmp     %rsp, %rbp
        jne     fail64
        cmpq    $SEL_CODE64, g_cs
        jne     fail64
        lea     -16(%rbp), %rax
        cmp     %rax, g_esp
        jne     fail64
        mov     $msg_8, %esi
        call    puts64

/* 9: to CPL 3 and back through the gate; a task switch is #GP */
        movb    $9, step
        mov     %rsp, ksp
        movq    $9f, resume
        pushq   $SEL_DATA3
        pushq   $USTACK
        pushq   $2
        pushq   $SEL_CODE64_3
        pushq   $ring3_64
        iretq
9:      cmpq    $KSTACK0 - 32, g_esp
        jne     fail64
        cmpq    $r3_64_ret, g_ret
        jne     fail64
        cmpq    $SEL_CODE64_3, g_cs
        jne     fail64
        cmpq    $USTACK, g_frame + 16
        jne     fail64
        cmpq    $SEL_DATA3, g_frame + 24
        jne     fail64
        cmpq    $0, g_ss
        jne     fail64
        cmpq    $SEL_CODE64_3, r3_cs
        jne     fail64
        cmpq    $USTACK, r3_esp
        jne     fail64
        movq    $0, gp_err
        mov     %rsp, ksp
        movq    $1f, resume
        ljmp    *tss_ptr
        jmp     fail64
1:      cmpq    $SEL_TSS_A, gp_err
        jne     fail64
        mov     $msg_9, %esi
        call    puts64
        mov     $msg_end, %esi
        call    puts64
        xor     %eax, %eax
        jmp     debug_exit

gp64:   popq    gp_err
        mov     ksp, %rsp
        jmpq    *resume

/* Target of the 64-bit call gate: from CPL 0 return at once; from CPL 3 the first call
   returns to CPL 3 and the second (phase 1) resumes at CPL 0. */
gate64: mov     %rsp, g_esp
        testb   $3, 8(%rsp)
        jz      2f
        cmpb    $0, phase
        jne     1f
        mov     %ss, %eax
        movzwl  %ax, %eax
        mov     %rax, g_ss
        mov     (%rsp), %rax
        mov     %rax, g_ret
        mov     8(%rsp), %rax
        mov     %rax, g_cs
        mov     16(%rsp), %rax
        mov     %rax, g_frame + 16
        mov     24(%rsp), %rax
        mov     %rax, g_frame + 24
        movb    $1, phase
        lretq
1:      mov     ksp, %rsp
        jmpq    *resume
2:      mov     8(%rsp), %rax
        mov     %rax, g_cs
        lretq

ring3_64:
        lcall   *gate64_ptr
r3_64_ret:
        mov     %rsp, r3_esp
        mov     %cs, %eax
        movzwl  %ax, %eax
        mov     %rax, r3_cs
        lcall   *gate64_ptr             /* phase 1: back to CPL 0 for good */
        jmp     .

fail64: movzbl  step, %eax
        out     %al, $DEBUG_EXIT
        hlt

/* ---------------------------------------------------------------- data */
        .p2align 3
gdt32:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code */
        .quad   0x00cf92000000ffff      /* 0x10: data */
        .quad   0x00af9a000000ffff      /* 0x18: 64-bit code */
        .quad   0x00cffa000000ffff      /* 0x20: 32-bit code, DPL 3 */
        .quad   0x00cff2000000ffff      /* 0x28: data, DPL 3 */
        TSSDESC TSS_A                   /* 0x30 */
        TSSDESC TSS_B                   /* 0x38 */
        GATE    SEL_CODE32, gate32, 0xec, 2     /* 0x40: call gate, DPL 3, 2 dwords */
        GATE    SEL_TSS_B, 0, 0x85, 0           /* 0x48: task gate */
        TSSDESC TSS_C                   /* 0x50 */
        GATE    SEL_CODE32, gate32, 0x8c, 0     /* 0x58: call gate, DPL 0 */
        TSSDESC TSS64                   /* 0x60: 64-bit TSS (same type), upper half: */
        .quad   0
        GATE    SEL_CODE64, gate64, 0xec, 0     /* 0x70: 64-bit call gate, DPL 3 */
        .quad   0
        .quad   0x00affa000000ffff      /* 0x80: 64-bit code, DPL 3 */
        TSSDESC TSS_D                   /* 0x88 */
gdt32_end:
gdt_desc32:
        .word   gdt32_end - gdt32 - 1
        .long   gdt32
idt_desc32:
        .word   0x7ff
        .long   IDT32
idt_desc64:
        .word   0xfff
        .quad   IDT64
gate64_ptr:
        .long   0
        .word   SEL_GATE64
tss_ptr:
        .long   0
        .word   SEL_TSS_A

        .p2align 3
ksp:      .quad 0
resume:   .quad 0
gp_err:   .quad 0
gp_eip:   .quad 0
gp_cs:    .quad 0
gp_eflags: .quad 0
g_esp:    .quad 0
g_ret:    .quad 0
g_cs:     .quad 0
g_ss:     .quad 0
g_frame:  .quad 0, 0, 0, 0
r3_esp:   .quad 0
r3_cs:    .quad 0
b_eax:    .long 0
b_flags:  .long 0
b_link:   .long 0
b_tr:     .long 0
b_cr0:    .long 0
c_link:   .long 0
c_flags:  .long 0
d_err:    .long 0
d_eip:    .long 0
v_ds:     .long 0
v_result: .long 0
v_frame:  .fill 9, 4, 0
step:     .byte 0
phase:    .byte 0

msg_1:  .asciz "tasks: call gate, same privilege\r\n"
msg_2:  .asciz "tasks: call gate ring 3 -> 0, 2 parameters, #GP(gate)\r\n"
msg_3:  .asciz "tasks: task gate CALL, IRET via back link\r\n"
msg_4:  .asciz "tasks: JMP to TSS and back\r\n"
msg_5:  .asciz "tasks: IDT task gates, #GP error code on the new stack\r\n"
msg_6:  .asciz "tasks: vm86 IOPL 3, INT to ring 0 and back\r\n"
msg_7:  .asciz "tasks: vm86 IOPL 0, CLI #GP\r\n"
msg_8:  .asciz "tasks: 64-bit call gate, same privilege\r\n"
msg_9:  .asciz "tasks: 64-bit call gate ring 3 -> 0, task switch #GP\r\n"
msg_end: .asciz "tasks: done\r\n"
