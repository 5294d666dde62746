/*
 * vendor.S - what a guest can tell about its CPU's vendor: one probe per behaviour in which
 * Intel and AMD silicon differ (kvmpy.hw.models), each printed as one console line
 * "vendor: <probe> <value>" (tests/guests/test_cpu_models.py runs it under each CPU model).
 *
 *   cpuid           the vendor string and CPUID.1:EAX (family, model, stepping)
 *   sysenter64      SYSENTER in 64-bit mode: ff (it ran) or 06 (#UD)
 *   syscall32       SYSCALL in compatibility mode: ff (reached CSTAR) or 06 (#UD)
 *   sysret-nc       SYSRETQ to a non-canonical RCX: the vector and the CS it was raised in
 *                   (0d 18: #GP at CPL 0; 0d 3b: #GP at CPL 3, on the fetch after the return)
 *   null-gs-base    GS base after loading a null selector into GS in 64-bit mode
 *   mxcsr-mask      FXSAVE's MXCSR_MASK
 *   ldmxcsr-mm      LDMXCSR with bit 17 (MM, misaligned SSE mode): ff (loaded) or 0d (#GP)
 *   fxsave-fip      FIP that FXSAVE stores after FXRSTOR loaded one, no exception pending
 *   xstate-bv       XSAVE's XSTATE_BV after FNINIT and PXOR put x87 and SSE in their
 *                   initial configuration
 *   xsaveopt        XSAVEOPT of that state over a garbage-filled legacy area: the FCW word
 *                   it leaves (037f: the legacy area was written, a5a5: not) and XSTATE_BV
 *   fcos-tiny-rd    the exponent word of FCOS(1e-300) rounded toward -inf (3ffe: 0.FFFF...,
 *                   3fff: 1.0)
 *   cpuid-ext       CPUID 0x80000000 EBX (the vendor string's first word on AMD, 0 on Intel)
 *                   and CPUID 4.0 EAX (Intel's deterministic cache leaf; AMD: reserved, 0)
 *   msr-vm-cr       RDMSR of AMD's VM_CR (0xc0010114): ff (read) or 0d (#GP)
 *   msr-feat-ctl    RDMSR of Intel's IA32_FEATURE_CONTROL (0x3a): ff or 0d
 *   flags-*         RFLAGS & 0x8d5 (OF SF ZF AF PF CF) after one instruction whose flags the
 *                   manuals leave (partly) undefined, from a known starting RFLAGS; bsf/bsr
 *                   also print the destination (AMD APM: unchanged for a zero source)
 *
 * A VMM may skip probes: the image's last quadword (skip_mask) has bit 0 for sysenter64,
 * bit 1 for syscall32 and sysret-nc, bit 2 for the MSR probes, bit 3 for
 * the x87 and SSE probes after mxcsr-mask (ldmxcsr-mm .. fcos-tiny-rd); a
 * skipped probe prints nothing.  (On a host whose KVM emulates the instruction, e.g.
 * SYSENTER in 64-bit mode, that KVM's emulator may give up with KVM_EXIT_INTERNAL_ERROR.)
 * A probe's exceptions (#UD, #GP) go through a 64-bit IDT whose handlers record the vector
 * and the CS pushed, then resume the probe's report like a longjmp.  The low 2 MiB are made
 * user-accessible, so that the fault at CPL 3 after SYSRETQ can be delivered whatever its
 * cause.  Ends with 0 written to the isa-debug-exit port.
 */
        .include "boot.inc"

        .set IDT64,      0x11000
        .set TSS64,      0x12000
        .set XAREA,      0x13000        /* XSAVE area, 64-byte aligned */
        .set FXIMG,      0x14000        /* FXRSTOR image */
        .set FXOUT,      0x14200        /* FXSAVE output */
        .set XAREA2,     0x15000        /* XSAVEOPT area */
        .set KSTACK,     0x1a000        /* TSS RSP0: where a fault at CPL 3 lands */
        .set SEL_DATA0,  0x20           /* SYSCALL SS */
        .set SYSRET_BASE, 0x28          /* +8: user data, +16: user 64-bit code */
        .set SEL_TSS,    0x40
        .set NONCANON,   0x800000000000

/* Jump to \label when the VMM asked to skip the probes of \bit. */
.macro  SKIP bit, label
        testq   $\bit, skip_mask
        jnz     \label
.endm
/* RFLAGS & 0x8d5 after \insn run from RFLAGS = \start (0x2 | \start), printed after \msg. */
.macro  UFLAGS msg, start, insn:vararg
        pushq   $(2 | \start)
        popfq
        \insn
        mov     %rax, scratch + 8       /* the destination, for bsf/bsr */
        pushfq
        popq    %rax
        and     $0x8d5, %eax
        mov     %rax, scratch
        PRINT   \msg
        mov     scratch, %rax
        mov     $3, %ecx
        call    put_hex64
.endm
.macro  ENDLINE
        PRINT   crlf
.endm
/* A flags probe of a shift or rotate of EAX = \value by CL = \count. */
.macro  SHIFT_CL msg, start, value, count, insn:vararg
        mov     $\value, %eax
        mov     $\count, %ecx
        UFLAGS  \msg, \start, \insn
        ENDLINE
.endm

/* Arm a probe: its report is at \resume, whether the probe faults or not. */
.macro  TRY64 resume
        movq    $0xee, last_vec
        mov     %rsp, ksp
        movq    $\resume, resume
.endm
.macro  PRINT msg
        mov     $\msg, %esi
        call    puts64
.endm
/* Print \msg, then the low \digits hex digits of \value (a register or memory quad). */
.macro  REPORT msg, value, digits
        PRINT   \msg
        mov     \value, %rax
        mov     $\digits, %ecx
        call    put_hex64
        PRINT   crlf
.endm
.macro  WRMSR64 msr, value
        mov     $\msr, %ecx
        mov     $\value, %rax
        mov     %rax, %rdx
        shr     $32, %rdx
        wrmsr
.endm
.macro  GATE vector, handler
        movw    $\handler, IDT64 + 16 * \vector
        movw    $SEL_CODE64, IDT64 + 16 * \vector + 2
        movw    $0x8e00, IDT64 + 16 * \vector + 4
.endm

        .code16
stage16:
        ret

        .code32
stage32:
        ret

        .code64
main64:
        orl     $4, PML4                /* U/S on the path to the low 2 MiB */
        orl     $4, PDPT
        orl     $4, PD_LOW
        mov     $PT_LOW, %edi
        mov     $512, %ecx
1:      orl     $4, (%rdi)
        add     $8, %rdi
        loop    1b
        mov     %cr3, %rax
        mov     %rax, %cr3
        lgdt    gdt64_desc
        movq    $KSTACK, TSS64 + 4
        movq    $0, KSTACK - 8          /* touch the CPL 3 fault stack before it is needed */
        mov     $SEL_TSS, %ax
        ltr     %ax
        GATE    6, ud_handler
        GATE    13, gp_handler
        lidt    idt64_desc
        mov     %cr4, %rax
        or      $0x40600, %rax          /* OSFXSR, OSXMMEXCPT, OSXSAVE */
        mov     %rax, %cr4
        mov     %cr0, %rax
        and     $~0xc, %rax             /* EM, TS off */
        or      $0x22, %rax             /* MP, NE */
        mov     %rax, %cr0

        xor     %eax, %eax              /* cpuid: vendor string and signature */
        cpuid
        mov     %ebx, vendor_buf
        mov     %edx, vendor_buf + 4
        mov     %ecx, vendor_buf + 8
        PRINT   msg_cpuid
        PRINT   vendor_buf
        mov     $1, %eax
        cpuid
        mov     %eax, %eax
        mov     %rax, scratch
        REPORT  space, scratch, 8

        SKIP    1, 2f
        WRMSR64 0x174, SEL_CODE64       /* sysenter64 */
        WRMSR64 0x175, KSTACK
        WRMSR64 0x176, landed
        TRY64   1f
        sysenter
1:      REPORT  msg_sysenter, last_vec, 2
2:      SKIP    2, 2f

        mov     $0xc0000080, %ecx       /* syscall32: EFER.SCE, STAR, CSTAR */
        rdmsr
        or      $1, %eax
        wrmsr
        WRMSR64 0xc0000081, (SYSRET_BASE << 48 | SEL_CODE64 << 32)
        WRMSR64 0xc0000083, landed
        TRY64   1f
        pushq   $SEL_CODE32             /* far return into compatibility mode */
        pushq   $compat_syscall
        lretq
1:      REPORT  msg_syscall, last_vec, 2

        TRY64   1f                      /* sysret-nc */
        mov     $NONCANON, %rcx
        mov     $2, %r11d
        sysretq
1:      PRINT   msg_sysret
        mov     last_vec, %rax
        mov     $2, %ecx
        call    put_hex64
        REPORT  space, last_cs, 2

2:
        WRMSR64 0xc0000101, 0x12345000  /* null-gs-base */
        xor     %eax, %eax
        mov     %ax, %gs
        mov     $0xc0000101, %ecx
        rdmsr
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, scratch
        REPORT  msg_nullgs, scratch, 8

        fxsave64 FXOUT                  /* mxcsr-mask */
        mov     FXOUT + 28, %eax
        mov     %rax, scratch
        REPORT  msg_mxcsr_mask, scratch, 8

        SKIP    8, 2f
        movl    $0x21f80, scratch       /* ldmxcsr-mm */
        TRY64   1f
        ldmxcsr scratch
        movq    $0xff, last_vec
1:      REPORT  msg_ldmxcsr, last_vec, 2
        movl    $0x1f80, scratch
        ldmxcsr scratch

        movw    $0x37f, FXIMG           /* fxsave-fip */
        movw    $0x5d9, FXIMG + 6
        movq    $0x11223344, FXIMG + 8
        movq    $0x55667788, FXIMG + 16
        movl    $0x1f80, FXIMG + 24
        fxrstor64 FXIMG
        fxsave64 FXOUT
        REPORT  msg_fip, FXOUT + 8, 8

        xor     %ecx, %ecx              /* xstate-bv: XCR0 = x87 | SSE */
        mov     $3, %eax
        xor     %edx, %edx
        xsetbv
        fninit
        pxor    %xmm0, %xmm0
        pxor    %xmm1, %xmm1
        pxor    %xmm2, %xmm2
        pxor    %xmm3, %xmm3
        pxor    %xmm4, %xmm4
        pxor    %xmm5, %xmm5
        pxor    %xmm6, %xmm6
        pxor    %xmm7, %xmm7
        pxor    %xmm8, %xmm8
        pxor    %xmm9, %xmm9
        pxor    %xmm10, %xmm10
        pxor    %xmm11, %xmm11
        pxor    %xmm12, %xmm12
        pxor    %xmm13, %xmm13
        pxor    %xmm14, %xmm14
        pxor    %xmm15, %xmm15
        mov     $3, %eax
        xor     %edx, %edx
        xsave   XAREA
        REPORT  msg_xstate_bv, XAREA + 512, 2

        mov     $XAREA2, %edi           /* xsaveopt */
        mov     $0xa5, %al
        mov     $512, %ecx              /* the legacy area; the header stays 0 */
        rep stosb
        mov     $3, %eax
        xor     %edx, %edx
        xsaveopt XAREA2
        movzwl  XAREA2, %eax
        mov     %rax, scratch
        PRINT   msg_xsaveopt
        mov     scratch, %rax
        mov     $4, %ecx
        call    put_hex64
        REPORT  space, XAREA2 + 512, 2

        fninit                          /* fcos-tiny-rd */
        fldcw   cw_down
        fldt    tiny
        fcos
        fstpt   scratch
        movzwl  scratch + 8, %eax
        mov     %rax, scratch
        REPORT  msg_fcos, scratch, 4
2:

        mov     $0x80000000, %eax       /* cpuid-ext */
        cpuid
        mov     %ebx, %ebx
        mov     %rbx, scratch
        PRINT   msg_cpuid_ext
        mov     scratch, %rax
        mov     $8, %ecx
        call    put_hex64
        mov     $4, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %eax, %eax
        mov     %rax, scratch
        REPORT  space, scratch, 8

        SKIP    4, 2f
        TRY64   1f                      /* msr-vm-cr */
        mov     $0xc0010114, %ecx
        rdmsr
        movq    $0xff, last_vec
1:      REPORT  msg_vm_cr, last_vec, 2
        TRY64   1f                      /* msr-feat-ctl */
        mov     $0x3a, %ecx
        rdmsr
        movq    $0xff, last_vec
1:      REPORT  msg_feat_ctl, last_vec, 2

2:      mov     $0x1234, %eax           /* flags-*: the undefined flags */
        xor     %ebx, %ebx
        UFLAGS  msg_f_bsf, 0x8d5, bsf %rbx, %rax
        REPORT  space, scratch + 8, 4
        mov     $0x1234, %eax
        UFLAGS  msg_f_bsr, 0, bsr %rbx, %rax
        REPORT  space, scratch + 8, 4
        mov     $3, %eax
        mov     $5, %ebx
        UFLAGS  msg_f_mul, 0x8d5, mul %rbx
        ENDLINE
        mov     $1, %eax
        shl     $63, %rax
        mov     $1, %ebx
        UFLAGS  msg_f_imul, 0, imul %rbx, %rax
        ENDLINE
        SHIFT_CL msg_f_shl0, 0x8d5, 0x80000001, 0, shl %cl, %eax
        SHIFT_CL msg_f_shl9, 0, 0x81, 9, shl %cl, %al
        SHIFT_CL msg_f_shr2, 0, 0xc0000001, 2, shr %cl, %eax
        SHIFT_CL msg_f_rol9, 0, 0x81, 9, rol %cl, %al

        PRINT   msg_done
        xor     %eax, %eax
        jmp     debug_exit

        .code32
compat_syscall:
        syscall
        .code64

landed:                                 /* SYSENTER_EIP, CSTAR: the transfer happened */
        movq    $0xff, last_vec
        jmp     unwind
ud_handler:
        movq    $6, last_vec
        mov     8(%rsp), %rax
        jmp     1f
gp_handler:
        movq    $13, last_vec
        mov     16(%rsp), %rax
1:      mov     %rax, last_cs
unwind:
        mov     ksp, %rsp
        jmp     *resume

        .p2align 3
gdt64:
        .quad   0
        .quad   0x00cf9a000000ffff      /* 0x08: 32-bit code (compatibility mode) */
        .quad   0x00cf92000000ffff      /* 0x10: data */
        .quad   0x00af9a000000ffff      /* 0x18: 64-bit code (SYSCALL, SYSENTER CS) */
        .quad   0x00cf92000000ffff      /* 0x20: data (SYSCALL and SYSENTER SS) */
        .quad   0x00cffa000000ffff      /* 0x28: user 32-bit code */
        .quad   0x00cff2000000ffff      /* 0x30: user data (SYSRET SS) */
        .quad   0x00affa000000ffff      /* 0x38: user 64-bit code (SYSRETQ CS) */
        .quad   0x0000890120000067, 0   /* 0x40: 64-bit TSS at TSS64 */
gdt64_end:
gdt64_desc:
        .word   gdt64_end - gdt64 - 1
        .quad   gdt64
idt64_desc:
        .word   16 * 14 - 1
        .quad   IDT64
last_vec:    .quad 0
last_cs:     .quad 0
ksp:         .quad 0
resume:      .quad 0
scratch:     .quad 0, 0
tiny:        .quad 0xab70fe17c79ac800   /* 1e-300 as an 80-bit extended value */
             .word 0x3c1a
cw_down:     .word 0x77f
vendor_buf:  .fill 13, 1, 0
msg_cpuid:   .asciz "vendor: cpuid "
msg_sysenter: .asciz "vendor: sysenter64 "
msg_syscall: .asciz "vendor: syscall32 "
msg_sysret:  .asciz "vendor: sysret-nc "
msg_nullgs:  .asciz "vendor: null-gs-base "
msg_mxcsr_mask: .asciz "vendor: mxcsr-mask "
msg_ldmxcsr: .asciz "vendor: ldmxcsr-mm "
msg_fip:     .asciz "vendor: fxsave-fip "
msg_xstate_bv: .asciz "vendor: xstate-bv "
msg_fcos:    .asciz "vendor: fcos-tiny-rd "
msg_xsaveopt: .asciz "vendor: xsaveopt "
msg_cpuid_ext: .asciz "vendor: cpuid-ext "
msg_vm_cr:   .asciz "vendor: msr-vm-cr "
msg_feat_ctl: .asciz "vendor: msr-feat-ctl "
msg_f_bsf:   .asciz "vendor: flags-bsf-zero "
msg_f_bsr:   .asciz "vendor: flags-bsr-zero "
msg_f_mul:   .asciz "vendor: flags-mul "
msg_f_imul:  .asciz "vendor: flags-imul "
msg_f_shl0:  .asciz "vendor: flags-shl-count0 "
msg_f_shl9:  .asciz "vendor: flags-shl8-count9 "
msg_f_shr2:  .asciz "vendor: flags-shr-count2 "
msg_f_rol9:  .asciz "vendor: flags-rol8-count9 "
msg_done:    .asciz "vendor: done\r\n"
space:       .asciz " "
crlf:        .asciz "\r\n"
        .p2align 3
skip_mask:   .quad 0                    /* the image's last quadword: see the header */
