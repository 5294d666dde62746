/*
 * smp.S - a multiprocessor start-up (tests/vmm/test_smp_guest.py): the boot processor
 * brings up every application processor the way firmware does, they exchange IPIs, and all
 * of them add to one counter with LOCK to an exact total.
 *
 * The number of CPUs comes from fw_cfg (FW_CFG_NB_CPUS at ports 0x510/0x511, as QEMU's and
 * kvmpy's VMM give it).  In 32-bit protected mode, paging off, the LAPIC at 0xfee00000:
 *   BSP  LAPIC on, INIT then two start-up IPIs to all but itself (vector 0x08: the APs start
 *        in real mode at 0x8000, the trampoline below); it waits until every AP has checked
 *        in, sends each a fixed IPI (vector 0x50, physical destination = its APIC ID), waits
 *        for each AP's answer (vector 0x60 + APIC ID) and adds to the counter itself.
 *   AP   protected mode, its own stack, LAPIC on, checks in with LOCK INC, waits (STI; HLT)
 *        for the BSP's IPI, adds ADDS to the counter with LOCK INC, answers, and halts with
 *        interrupts off.  An AP whose CPUID initial APIC ID (leaf 1 EBX[31:24], the VMM's to
 *        fill) is not its LAPIC's ID adds one more, so that the total is off.
 * The BSP prints "smp: <cpus> cpus, <ipis> ipis, counter <n>" and exits through
 * isa-debug-exit with 0 when the counter is cpus * ADDS and every IPI arrived, else 1.
 */
        .include "boot.inc"
        .include "apic.inc"

        .set ADDS,        1000
        .set TO_AP_VEC,   0x50
        .set TO_BSP_VEC,  0x60          /* + the AP's APIC ID (one IRR bit per AP) */
        .set NVEC,        0x70
        .set AP_STACKS,   0x70000       /* 4 KiB per APIC ID below this */

        .set V_COUNTER,   SCRATCH + 0x00
        .set V_ALIVE,     SCRATCH + 0x04
        .set V_IPIS,      SCRATCH + 0x08    /* answers the BSP took */
        .set V_CPUS,      SCRATCH + 0x0c
        .set V_GOT,       SCRATCH + 0x40    /* byte per APIC ID: the AP took the BSP's IPI */
        .set idt,         SCRATCH + 0x100   /* NVEC gates */

stage16:
        ret

        AP_TRAMPOLINE ap32

        .code32
stage32:
        FW_CFG_CPUS
        mov     %eax, V_CPUS
        movl    $0, V_COUNTER
        movl    $0, V_ALIVE
        movl    $0, V_IPIS
        call    idt_setup
        movl    $0x1ff, L_SVR
        mov     $0xff, %al              /* the 8259s stay quiet */
        out     %al, $0x21
        out     %al, $0xa1

        movl    $ICR_INIT_OTHERS, L_ICR
        movl    $ICR_SIPI_OTHERS | SIPI_VECTOR, L_ICR  /* start-up, twice as the MP spec says */
        movl    $ICR_SIPI_OTHERS | SIPI_VECTOR, L_ICR

        mov     V_CPUS, %ecx            /* wait for every AP to check in */
        dec     %ecx
1:      pause
        cmp     V_ALIVE, %ecx
        ja      1b

        mov     $1, %edi                /* each AP: our IPI to it, its IPI back */
2:      cmp     V_CPUS, %edi
        jae     4f
        mov     %edi, %eax
        shl     $24, %eax
        mov     %eax, L_ICR2
        movl    $TO_AP_VEC, L_ICR
        inc     %edi
        jmp     2b
4:      mov     $ADDS, %ecx
5:      lock incl V_COUNTER
        loop    5b
        mov     V_CPUS, %ecx
        dec     %ecx
6:      cli
        cmp     V_IPIS, %ecx
        jbe     7f
        sti
        hlt
        jmp     6b
7:      mov     $msg_head, %esi
        call    puts32
        mov     V_CPUS, %eax
        call    putdec
        mov     $msg_cpus, %esi
        call    puts32
        mov     V_IPIS, %eax
        call    putdec
        mov     $msg_ipis, %esi
        call    puts32
        mov     V_COUNTER, %eax
        call    putdec
        mov     $msg_nl, %esi
        call    puts32
        mov     V_CPUS, %eax            /* exit 0 iff the counter and the IPIs are exact */
        imul    $ADDS, %eax
        cmp     V_COUNTER, %eax
        jne     8f
        mov     V_CPUS, %eax
        dec     %eax
        cmp     V_IPIS, %eax
        jne     8f
        xor     %al, %al
        jmp     9f
8:      mov     $1, %al
9:      out     %al, $DEBUG_EXIT
        cli
        hlt

/* An IDT of NVEC interrupt gates: every vector to bad_irq but the IPIs'. */
idt_setup:
        xor     %ecx, %ecx
1:      mov     $bad_irq, %eax
        cmp     $TO_AP_VEC, %ecx
        jne     2f
        mov     $to_ap_irq, %eax
2:      cmp     $TO_BSP_VEC, %ecx
        jb      3f
        mov     $to_bsp_irq, %eax
3:      mov     %ax, idt(,%ecx,8)
        movw    $SEL_CODE32, idt+2(,%ecx,8)
        movw    $0x8e00, idt+4(,%ecx,8)
        shr     $16, %eax
        mov     %ax, idt+6(,%ecx,8)
        inc     %ecx
        cmp     $NVEC, %ecx
        jb      1b
        lidt    idt_desc
        ret

bad_irq:
        mov     $2, %al
        out     %al, $DEBUG_EXIT
        cli
        hlt


to_bsp_irq:                             /* on the BSP: an AP answered */
        lock incl V_IPIS
        movl    $0, L_EOI
        IRQ_RETURN

to_ap_irq:                              /* on an AP: the BSP's IPI */
        push    %eax
        mov     L_ID, %eax
        shr     $24, %eax
        movb    $1, V_GOT(%eax)
        movl    $0, L_EOI
        pop     %eax
        IRQ_RETURN

/* Print EAX in decimal. */
putdec:
        mov     $SCRATCH + 0x3f, %edi
        movb    $0, (%edi)
        mov     $10, %ecx
1:      xor     %edx, %edx
        div     %ecx
        add     $'0', %dl
        dec     %edi
        mov     %dl, (%edi)
        test    %eax, %eax
        jnz     1b
        mov     %edi, %esi
        jmp     puts32



/* The application processors' code, protected mode once the trampoline has switched. */
ap32:
        mov     $SEL_DATA, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     L_ID, %ebx
        shr     $24, %ebx               /* EBX = APIC ID */
        mov     %ebx, %eax
        shl     $12, %eax
        mov     $AP_STACKS, %esp
        sub     %eax, %esp
        push    %ebx
        mov     $1, %eax
        cpuid
        shr     $24, %ebx
        mov     %ebx, %eax
        pop     %ebx
        cmp     %ebx, %eax
        je      5f
        lock incl V_COUNTER             /* CPUID's APIC ID is not the LAPIC's */
5:      lidt    idt_desc
        movl    $0x1ff, L_SVR
        lock incl V_ALIVE
1:      cli                             /* wait for the BSP's IPI */
        cmpb    $0, V_GOT(%ebx)
        jne     2f
        sti
        hlt
        jmp     1b
2:      mov     $ADDS, %ecx
3:      lock incl V_COUNTER
        loop    3b
        movl    $0, L_ICR2              /* answer: physical destination 0, the BSP */
        lea     TO_BSP_VEC(%ebx), %eax
        mov     %eax, L_ICR
4:      cli
        hlt
        jmp     4b

main64:
        hlt
        jmp     main64

msg_head:  .asciz "smp: "
msg_cpus:  .asciz " cpus, "
msg_ipis:  .asciz " ipis, counter "
msg_nl:    .asciz "\r\n"
        .p2align 3
idt_desc:  .word NVEC * 8 - 1
           .long idt
