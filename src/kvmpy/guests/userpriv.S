/*
 * userpriv.S - user mode with the system tables on supervisor-only pages, as Linux keeps
 * them (tests/guests/test_userpriv.py).
 *
 * The processor reaches the GDT, LDT, IDT and TSS with *implicit supervisor-mode
 * accesses* (SDM vol. 3, 4.6) whatever the CPL: a segment load, an interrupt or an INT
 * taken at CPL 3 reads them with supervisor rights, and the accessed bit of a descriptor
 * loaded there is set the same way.  The guest:
 *   - moves the GDT (with a 64-bit TSS), the IDT and the ring-0 stack to pages without
 *     the U/S bit; the code pages and a user stack page get it;
 *   - IRETQ to CPL 3; there loads DS with a user data selector whose descriptor is not yet
 *     accessed, then INT 0x80 through a DPL-3 gate;
 *   - the ring-0 handler checks the frame on the TSS's RSP0 stack, IRETQs back to user
 *     mode, which takes a #PF on a supervisor page (error code 7) through the IDT again;
 *   - the #PF handler checks DS's descriptor is now accessed, prints the last line and
 *     writes 0 to isa-debug-exit.  Any other exception n ends the run with status 0x10 + n, a failed check with 0x0f.
 */
        .include "boot.inc"

        .set SYS_IDT,     0x10000       /* supervisor pages: IDT, GDT + TSS, ring-0 stack */
        .set SYS_GDT,     0x11000
        .set SYS_TSS,     0x11100
        .set RING0_TOP,   0x13000
        .set USER_STACK,  0x14000       /* user page: the user stack ends at its top */
        .set USER_TOP,    0x15000
        .set SEL_KDATA,   0x10
        .set SEL_KCODE,   0x18
        .set SEL_UDATA,   0x23
        .set SEL_UCODE,   0x2b
        .set SEL_TSS,     0x30
        .set PTE_US,      0x4

        .code16
stage16:
        ret

        .code32
stage32:
        ret

        .code64
main64:
        mov     $msg_start, %rsi
        call    puts64
        /* the GDT: 0x10 kernel data, 0x18 kernel code, 0x20 user data (not accessed),
         * 0x28 user code, 0x30 the 64-bit TSS */
        mov     $SYS_GDT, %edi
        xor     %eax, %eax
        mov     $(0x2000 / 4), %ecx
        rep stosl
        movq    $0, SYS_GDT
        movabs  $0x00cf93000000ffff, %rax
        mov     %rax, SYS_GDT + 0x10
        movabs  $0x00af9b000000ffff, %rax
        mov     %rax, SYS_GDT + 0x18
        movabs  $0x00cff2000000ffff, %rax
        mov     %rax, SYS_GDT + 0x20
        movabs  $0x00affb000000ffff, %rax
        mov     %rax, SYS_GDT + 0x28
        movabs  $(0x0000890000000067 | ((SYS_TSS & 0xffff) << 16) | (((SYS_TSS >> 16) & 0xff) << 32)), %rax
        mov     %rax, SYS_GDT + 0x30
        movq    $RING0_TOP, SYS_TSS + 4                 /* RSP0 */
        /* the IDT: the exceptions to their bad_vector stubs, 14 to pf_handler, 0x80
         * (DPL 3) to int80 */
        xor     %ebx, %ebx
1:      lea     bad_vectors(, %rbx, 8), %eax
        call    set_gate
        inc     %ebx
        cmp     $32, %ebx
        jne     1b
        mov     $14, %ebx
        mov     $pf_handler, %eax
        call    set_gate
        mov     $0x80, %ebx
        mov     $int80, %eax
        call    set_gate
        orb     $0x60, SYS_IDT + 0x80 * 16 + 5          /* DPL 3 */
        lgdt    gdt_sys_desc
        lidt    idt_sys_desc
        mov     $SEL_TSS, %ax
        ltr     %ax
        mov     $SEL_KDATA, %ax
        mov     %ax, %ss
        mov     %ax, %ds
        mov     %ax, %es
        /* U/S: the upper levels, the code pages 0x7000-0x8fff and the user stack page */
        orq     $PTE_US, PML4
        orq     $PTE_US, PDPT
        orq     $PTE_US, PD_LOW
        orq     $PTE_US, PT_LOW + 7 * 8
        orq     $PTE_US, PT_LOW + 8 * 8
        orq     $PTE_US, PT_LOW + (USER_STACK >> 12) * 8
        mov     %cr3, %rax
        mov     %rax, %cr3
        mov     $RING0_TOP, %rsp
        pushq   $SEL_UDATA
        pushq   $USER_TOP
        pushq   $0x2
        pushq   $SEL_UCODE
        pushq   $user_code
        iretq

/* IDT entry EBX: a 64-bit interrupt gate (DPL 0) to EAX in SEL_KCODE. */
set_gate:
        mov     %ebx, %edi
        shl     $4, %edi
        add     $SYS_IDT, %edi
        mov     %ax, (%rdi)
        movw    $SEL_KCODE, 2(%rdi)
        movw    $0x8e00, 4(%rdi)
        shr     $16, %eax
        mov     %ax, 6(%rdi)
        movq    $0, 8(%rdi)
        ret

user_code:
        mov     $SEL_UDATA, %ax
        mov     %ax, %ds
        mov     $42, %eax
        int     $0x80
        mov     $0x77, %bl
        movb    %bl, SYS_GDT + 0x40                     /* a store to a supervisor page */
        jmp     .

int80:
        cmp     $42, %eax
        jne     fail
        cmpq    $SEL_UCODE, 8(%rsp)                     /* the frame: CS, RSP, SS of user mode */
        jne     fail
        cmpq    $USER_TOP, 24(%rsp)
        jne     fail
        cmpq    $SEL_UDATA, 32(%rsp)
        jne     fail
        lea     40(%rsp), %rax                          /* on the TSS's RSP0 stack */
        cmp     $RING0_TOP, %rax
        jne     fail
        mov     $msg_int80, %rsi
        call    puts64
        iretq

pf_handler:
        cmpq    $7, (%rsp)                              /* present | write | user */
        jne     fail
        mov     %cr2, %rax
        cmp     $(SYS_GDT + 0x40), %rax
        jne     fail
        testb   $1, SYS_GDT + 0x20 + 5                  /* DS's descriptor: accessed */
        jz      fail
        mov     $msg_pf, %rsi
        call    puts64
        xor     %eax, %eax
        jmp     debug_exit

fail:
        mov     $0x0f, %al
        jmp     debug_exit

/* exception n: status 0x10 + n */
        .p2align 3
bad_vectors:
        .set    n, 0
        .rept   32
        .p2align 3
        mov     $(0x10 + n), %al
        jmp     debug_exit
        .set    n, n + 1
        .endr

        .p2align 3
gdt_sys_desc:
        .word   0x40 - 1
        .quad   SYS_GDT
idt_sys_desc:
        .word   256 * 16 - 1
        .quad   SYS_IDT

msg_start:  .asciz "userpriv: tables on supervisor pages\r\n"
msg_int80:  .asciz "userpriv: INT 0x80 from CPL 3\r\n"
msg_pf:     .asciz "userpriv: #PF from CPL 3, DS accessed\r\n"
