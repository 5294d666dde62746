/*
 * acpi.S - the firmware tables and platform devices as a guest finds them, the way
 * kvm-unit-tests and Linux do (tests/vmm/test_acpi_guest.py runs it through the VMM).
 *
 * In long mode (boot.inc), it
 *   - scans the BIOS area 0xe0000-0xfffff in 16-byte steps for "RSD PTR ", checks both RSDP
 *     checksums, follows the RSDT (32-bit entries) and the XSDT (64-bit entries), checking
 *     every table's signature and checksum, and requires both to list the same MADT and FADT;
 *   - walks the MADT: the enabled Local APICs (the CPU count), the IOAPIC's address and GSI
 *     base, the GSI of ISA IRQ 0;
 *   - reads the FADT: the FACS (signature) and the DSDT (signature, checksum, the 64-bit
 *     pointer agrees), the PM timer port and width (TMR_VAL_EXT), the reset register
 *     (RESET_REG_SUP, an I/O port, its value);
 *   - reads the PM timer and the TSC around a delay loop of DELAY iterations, and prints
 *     both readings and the elapsed ticks modulo 2^24 (a reading above 24 bits fails);
 *   - scans PCI bus 0 through 0xcf8/0xcfc and prints each device's IDs; if a pci-testdev
 *     (1b36:0005) is there, prints its BARs and runs three of its tests: mmio-no-eventfd and
 *     portio-no-eventfd (three writes: count 3), portio-datamatch-eventfd (three writes the
 *     eventfd takes: count 0);
 *   - if a pc-testdev answers at port 0xe0: writes its register at several widths and
 *     through the byte window at 0xe8 and with `rep outsb`, reads it back, stores a qword in
 *     its memory at 0xff000000 and reads half of it, flushes a page through port 0xe4 and
 *     reads the page back;
 *   - prints PM1a_CNT's SCI_EN (1: in ACPI mode) and resets the machine by writing the
 *     FADT's reset value to its reset port.
 * A check that fails prints "FAIL: ..." and writes 1 to isa-debug-exit; if the reset does not
 * end the run, it prints "FAIL: no reset" and does the same.
 */
        .include "boot.inc"

        .set BIOS_AREA,     0xe0000
        .set BIOS_END,      0x100000
        .set PCI_ADDR,      0xcf8
        .set PCI_DATA,      0xcfc
        .set PCI_ENABLE,    0x80000000
        .set TESTDEV_ID,    0x00051b36
        .set DELAY,         500000
        .set PC_TESTDEV,        0xe0
        .set PC_TESTDEV_FLUSH,  0xe4
        .set PC_TESTDEV_BYTES,  0xe8
        .set PC_TESTDEV_MEM,    0xff000000
        .set PM1A_CNT,      0xb004
        .set SIG_RSDT,      0x54445352
        .set SIG_XSDT,      0x54445358
        .set SIG_FACP,      0x50434146
        .set SIG_APIC,      0x43495041
        .set SIG_FACS,      0x53434146
        .set SIG_DSDT,      0x54445344

/* Print the string at \str. */
.macro  PRINT str
        mov     $\str, %esi
        call    puts64
.endm

/* Print \src in hex with \digits digits. */
.macro  PUTHEX src, digits
        mov     \src, %rax
        mov     $\digits, %ecx
        call    put_hex64
.endm

/* Print \src in decimal. */
.macro  PUTDEC src
        mov     \src, %rax
        call    put_dec64
.endm

/* Go on if condition \cc holds, else fail with \msg. */
.macro  CHECK cc, msg
        j\cc    .Lok\@
        mov     $\msg, %esi
        jmp     fail
.Lok\@:
.endm

        .code16
stage16:
        ret

        .code32
stage32:
        ret

        .code64
main64:
        /* the RSDP */
        mov     $BIOS_AREA, %ebx
        movabs  $0x2052545020445352, %rdx       /* "RSD PTR " */
1:      cmp     (%rbx), %rdx
        je      2f
        add     $16, %ebx
        cmp     $BIOS_END, %ebx
        jb      1b
        mov     $s_no_rsdp, %esi
        jmp     fail
2:      PRINT   s_rsdp
        PUTHEX  %rbx, 5
        mov     %rbx, %rsi
        mov     $20, %ecx
        call    checksum
        CHECK   z, s_bad_rsdp
        mov     %rbx, %rsi
        mov     20(%rbx), %ecx
        call    checksum
        CHECK   z, s_bad_rsdp
        PRINT   s_revision
        movzbl  15(%rbx), %eax
        call    put_dec64

        /* RSDT, then XSDT: each gives the MADT in R8 and the FADT in R9 */
        PRINT   s_rsdt
        mov     16(%rbx), %esi
        cmpl    $SIG_RSDT, (%rsi)
        CHECK   e, s_bad_sig
        mov     $4, %ebp
        call    walk
        mov     %r8, %r10
        mov     %r9, %r11
        PRINT   s_xsdt
        mov     24(%rbx), %rsi
        cmpl    $SIG_XSDT, (%rsi)
        CHECK   e, s_bad_sig
        mov     $8, %ebp
        call    walk
        cmp     %r8, %r10
        CHECK   e, s_differ
        cmp     %r9, %r11
        CHECK   e, s_differ
        test    %r8, %r8
        CHECK   nz, s_no_madt
        test    %r9, %r9
        CHECK   nz, s_no_fadt

        /* the MADT: R15 enabled LAPICs, R12 IOAPIC address, R13 its GSI base, R14 IRQ0's GSI */
        xor     %r15d, %r15d
        xor     %r12d, %r12d
        xor     %r13d, %r13d
        xor     %r14d, %r14d                    /* no override: IRQ 0 is GSI 0 */
        lea     44(%r8), %rbx
        mov     4(%r8), %ebp
        add     %r8, %rbp
3:      cmp     %rbp, %rbx
        jae     6f
        movzbl  (%rbx), %eax
        cmp     $0, %al
        jne     4f
        testb   $1, 4(%rbx)
        jz      5f
        inc     %r15d
        jmp     5f
4:      cmp     $1, %al
        jne     4f
        mov     4(%rbx), %r12d
        mov     8(%rbx), %r13d
        jmp     5f
4:      cmp     $2, %al
        jne     5f
        cmpb    $0, 3(%rbx)
        jne     5f
        mov     4(%rbx), %r14d
5:      movzbl  1(%rbx), %eax
        test    %eax, %eax
        CHECK   nz, s_bad_madt
        add     %rax, %rbx
        jmp     3b
6:      PRINT   s_cpus
        PUTDEC  %r15
        PRINT   s_lapic
        mov     36(%r8), %eax
        PUTHEX  %rax, 8
        PRINT   s_ioapic
        PUTHEX  %r12, 8
        PRINT   s_gsi_base
        PUTDEC  %r13
        PRINT   s_irq0
        PUTDEC  %r14

        /* the FADT: FACS, DSDT, PM timer (port in R12), reset register (R13 port, R14 value) */
        mov     36(%r9), %esi
        cmpl    $SIG_FACS, (%rsi)
        CHECK   e, s_bad_facs
        mov     40(%r9), %esi
        cmp     140(%r9), %rsi
        CHECK   e, s_bad_dsdt
        cmpl    $SIG_DSDT, (%rsi)
        CHECK   e, s_bad_dsdt
        mov     4(%rsi), %ecx
        call    checksum
        CHECK   z, s_bad_dsdt
        PRINT   s_fadt
        mov     76(%r9), %r12d
        PUTHEX  %r12, 4
        PRINT   s_bits24
        testl   $0x100, 112(%r9)                /* TMR_VAL_EXT */
        jz      7f
        PRINT   s_bits32
7:      testl   $0x400, 112(%r9)                /* RESET_REG_SUP */
        CHECK   nz, s_no_reset
        cmpb    $1, 116(%r9)                    /* in I/O space */
        CHECK   e, s_no_reset
        mov     120(%r9), %rax
        mov     %ax, reset_port
        movzbl  128(%r9), %eax
        mov     %al, reset_value
        PRINT   s_reset
        movzwl  reset_port, %eax
        PUTHEX  %rax, 3
        PRINT   s_value
        movzbl  reset_value, %eax
        PUTHEX  %rax, 1

        /* the PM timer and the TSC around a delay */
        mov     %r12d, %edx
        in      %dx, %eax
        mov     %eax, %r8d
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        mov     %rdx, %r10
        mov     $DELAY, %ecx
8:      dec     %ecx
        jnz     8b
        rdtsc
        shl     $32, %rdx
        or      %rax, %rdx
        mov     %rdx, %r11
        mov     %r12d, %edx
        in      %dx, %eax
        mov     %eax, %r9d
        PRINT   s_pm
        PUTHEX  %r8, 8
        PRINT   s_then
        PUTHEX  %r9, 8
        mov     %r8d, %eax
        or      %r9d, %eax
        shr     $24, %eax
        CHECK   z, s_wide
        mov     %r9d, %eax
        sub     %r8d, %eax
        and     $0xffffff, %eax
        CHECK   nz, s_stuck
        mov     %rax, %r15
        PRINT   s_ticks
        PUTDEC  %r15
        PRINT   s_tsc
        mov     %r11, %rax
        sub     %r10, %rax
        call    put_dec64

        /* PCI bus 0 */
        xor     %ebx, %ebx                      /* device number */
        xor     %r15d, %r15d                    /* a pci-testdev's device number + 1 */
9:      mov     %ebx, %edi
        xor     %esi, %esi
        call    pci_read
        cmp     $0xffffffff, %eax
        je      10f
        mov     %rax, %rbp
        PRINT   s_pci
        PUTHEX  %rbx, 2
        PRINT   s_ids
        PUTHEX  %rbp, 8
        cmp     $TESTDEV_ID, %ebp
        jne     10f
        lea     1(%rbx), %r15d
10:     inc     %ebx
        cmp     $32, %ebx
        jb      9b
        test    %r15d, %r15d
        jz      pc_testdev

        /* pci-testdev: R12 its memory BAR, R13 its I/O BAR */
        lea     -1(%r15), %edi
        mov     $0x10, %esi
        call    pci_read
        and     $~0xf, %eax
        mov     %rax, %r12
        lea     -1(%r15), %edi
        mov     $0x14, %esi
        call    pci_read
        and     $~0x3, %eax
        mov     %rax, %r13
        PRINT   s_bars
        PUTHEX  %r12, 8
        PRINT   s_space
        PUTHEX  %r13, 4

        movb    $0, (%r12)                      /* mmio-no-eventfd */
        mov     4(%r12), %eax
        movzbl  8(%r12), %ecx
        mov     %cl, (%r12, %rax)
        mov     %cl, (%r12, %rax)
        mov     %cl, (%r12, %rax)
        PRINT   s_nl
        lea     16(%r12), %rsi
        call    puts64
        PRINT   s_count
        mov     12(%r12), %eax
        call    put_dec64

        xor     %r14d, %r14d                    /* portio-no-eventfd, then -datamatch-eventfd */
11:     mov     %r13d, %edx
        mov     %r14b, %al
        out     %al, %dx
        add     $4, %edx
        in      %dx, %eax
        mov     %eax, %edi
        add     $4, %edx
        in      %dx, %al
        lea     (%r13, %rdi), %edx
        out     %al, %dx
        out     %al, %dx
        out     %al, %dx
        PRINT   s_nl
        lea     16(%r13), %edi                  /* the name, a port at a time */
12:     mov     %edi, %edx
        in      %dx, %al
        test    %al, %al
        jz      13f
        mov     $COM1, %dx
        out     %al, %dx
        inc     %edi
        jmp     12b
13:     PRINT   s_count
        lea     12(%r13), %edx
        in      %dx, %eax
        call    put_dec64
        add     $2, %r14d
        cmp     $2, %r14d
        je      11b

pc_testdev:
        /* pc-testdev, if its register answers: widths, the byte window, string I/O, the
         * device memory, a flushed page keeping its contents */
        xor     %eax, %eax
        out     %eax, $PC_TESTDEV
        in      $PC_TESTDEV, %eax
        test    %eax, %eax
        jnz     reset
        mov     $0x12345678, %eax
        out     %eax, $PC_TESTDEV
        mov     $0xab, %al
        out     %al, $PC_TESTDEV_BYTES + 1
        mov     $s_pc_testdev + 1, %esi
        mov     $PC_TESTDEV, %dx
        mov     $3, %ecx
        rep outsb                               /* "pc-" to byte 0: the last, '-', stays */
        PRINT   s_pc_testdev
        in      $PC_TESTDEV, %eax
        PUTHEX  %rax, 8
        PRINT   s_space
        in      $PC_TESTDEV + 2, %al
        movzbl  %al, %eax
        PUTHEX  %rax, 2
        movabs  $0x1122334455667788, %rax
        mov     %rax, PC_TESTDEV_MEM + 16
        PRINT   s_space
        mov     PC_TESTDEV_MEM + 20, %eax
        PUTHEX  %rax, 8
        movl    $0x600dc0de, SCRATCH
        mov     $SCRATCH, %eax
        out     %eax, $PC_TESTDEV_FLUSH
        PRINT   s_flushed
        mov     SCRATCH, %eax
        PUTHEX  %rax, 8

reset:
        /* ACPI mode, as PM1a_CNT says; then the FADT's reset */
        PRINT   s_pm1
        mov     $PM1A_CNT, %dx
        in      %dx, %ax
        and     $1, %eax
        PUTDEC  %rax
        PRINT   s_resetting
        movzwl  reset_port, %edx
        movzbl  reset_value, %eax
        out     %al, %dx
        mov     $s_no_reset_done, %esi
fail:
        push    %rsi
        PRINT   s_fail
        pop     %rsi
        call    puts64
        PRINT   s_nl
        mov     $1, %al
        jmp     debug_exit

/* AL = the sum of the ECX bytes at RSI (ZF: they sum to 0). Clobbers RCX, RSI. */
checksum:
        xor     %eax, %eax
1:      add     (%rsi), %al
        inc     %rsi
        dec     %ecx
        jnz     1b
        test    %al, %al
        ret

/* Walk the RSDT/XSDT at RSI with entries of EBP bytes: print each table's signature after
 * checking its checksum; R8 = the MADT, R9 = the FADT (0 if absent). Clobbers RAX-RDI, R12-R14. */
walk:
        mov     %rsi, %r12
        mov     4(%rsi), %ecx
        call    checksum
        CHECK   z, s_bad_sum
        xor     %r8d, %r8d
        xor     %r9d, %r9d
        lea     36(%r12), %r13
        mov     4(%r12), %r14d
        add     %r12, %r14
1:      cmp     %r14, %r13
        jae     4f
        mov     (%r13), %rsi
        cmp     $4, %ebp
        jne     2f
        mov     %esi, %esi
2:      add     %rbp, %r13
        push    %rsi
        mov     4(%rsi), %ecx
        call    checksum
        pop     %rsi
        CHECK   z, s_bad_sum
        mov     (%rsi), %eax
        cmp     $SIG_APIC, %eax
        jne     3f
        mov     %rsi, %r8
3:      cmp     $SIG_FACP, %eax
        jne     3f
        mov     %rsi, %r9
3:      mov     %eax, sig_buf
        push    %rsi
        PRINT   s_space
        PRINT   sig_buf
        pop     %rsi
        jmp     1b
4:      ret

/* EAX = the configuration dword at register ESI of device EDI (function 0) on bus 0. */
pci_read:
        mov     %edi, %eax
        shl     $11, %eax
        or      %esi, %eax
        or      $PCI_ENABLE, %eax
        mov     $PCI_ADDR, %dx
        out     %eax, %dx
        mov     $PCI_DATA, %dx
        in      %dx, %eax
        ret

sig_buf:        .long 0, 0
reset_port:     .word 0
reset_value:    .byte 0
s_rsdp:         .asciz "RSDP at "
s_revision:     .asciz " revision "
s_rsdt:         .asciz "\nrsdt:"
s_xsdt:         .asciz "\nxsdt:"
s_cpus:         .asciz "\nmadt: cpus "
s_lapic:        .asciz " lapic "
s_ioapic:       .asciz " ioapic "
s_gsi_base:     .asciz " gsi base "
s_irq0:         .asciz " irq0 -> gsi "
s_fadt:         .asciz "\nfadt: facs ok, dsdt ok, pm timer port "
s_bits24:       .asciz " (24 bits"
s_bits32:       .asciz ", TMR_VAL_EXT"
s_reset:        .asciz "), reset port "
s_value:        .asciz " value "
s_pm:           .asciz "\npm timer "
s_then:         .asciz " then "
s_ticks:        .asciz " ticks "
s_tsc:          .asciz " tsc "
s_pci:          .asciz "\npci 00:"
s_ids:          .asciz ".0 "
s_bars:         .asciz "\npci-testdev bars "
s_count:        .asciz " count "
s_space:        .asciz " "
s_nl:           .asciz "\n"
s_pc_testdev:   .asciz "\npc-testdev "
s_flushed:      .asciz " flushed page keeps "
s_pm1:          .asciz "\nsci_en "
s_resetting:    .asciz "\nresetting\n"
s_fail:         .asciz "\nFAIL: "
s_no_rsdp:      .asciz "no RSDP"
s_bad_rsdp:     .asciz "RSDP checksum"
s_bad_sig:      .asciz "RSDT/XSDT signature"
s_bad_sum:      .asciz "table checksum"
s_differ:       .asciz "RSDT and XSDT differ"
s_no_madt:      .asciz "no MADT"
s_no_fadt:      .asciz "no FADT"
s_bad_madt:     .asciz "MADT entry of length 0"
s_bad_facs:     .asciz "FACS"
s_bad_dsdt:     .asciz "DSDT"
s_no_reset:     .asciz "no reset register"
s_wide:         .asciz "PM timer above 24 bits"
s_stuck:        .asciz "PM timer stuck"
s_no_reset_done: .asciz "no reset"
