/*
 * longmode.S - differential-test guest: the same bytes run on the host's /dev/kvm and on
 * kvmpy must produce the same console output, the same sequence of exits and the same
 * final registers (tests/guests/test_host_vs_soft.py, driven by tests/support/rawvmm.py).
 *
 * What it exercises, by stage (mode switches and page tables come from boot.inc):
 *   real mode    COM1 output; 8-bit IN from COM1 LSR (0x3fd) with AH kept
 *   protected    COM1 output; MMIO read with paging off; 32-bit IN from test port 0x510
 *   long mode    COM1 output; IN of 8 bits (upper RAX kept), 32 bits (RAX zero-extended)
 *                and 16 bits; MMIO writes of 4 and 8 bytes, MMIO reads of 4 and 1 bytes,
 *                a read-modify-write (ADD) on MMIO; a store through the 2 MiB alias page
 *                read back through the 4 KiB identity pages; `rep outsb` string output;
 *                `rep insb` string input (KVM reads such input ahead, several bytes per exit).
 * It then leaves the results and distinctive constants in RAX..R15 and writes 0 to the
 * isa-debug-exit port 0xf4 (value 0 = every stage ran), with `cli; hlt` behind it.
 *
 * The test VMM answers: port 0x3fd -> 0x60, port 0x510 -> the low bytes of 0xfeedc0de,
 * an MMIO read at 0xd0000000 + i -> byte (i mod 8) of 0x9abcdef012345678.
 * Expected final registers:
 *   RAX 0x5a5a5a5a5a5a5a00  RBX 0xdededededededede (rep insb)  RCX 0  RDX 0xf4
 *   RSI msg_outs_end  RDI SCRATCH + 0x28  RBP 0x0123456789abcdef
 *   R8  0xffffffffffffff60 (IN AL)   R9  0xfeedc0de (IN EAX)   R10 0xffffffffffffc0de (IN AX)
 *   R11 0x12345678 (MMIO dword)      R12 0x56 (MMIO byte at +1)
 *   R13 0x1122334455667788 (alias)   R14 0xbe60 (real-mode IN)  R15 0xfeedc0de12345678
 */
        .include "boot.inc"

        .set TEST_PORT, 0x510

        .code16
stage16:
        mov     $msg_real, %si
        call    puts16
        mov     $0xbeef, %ax
        mov     $COM1_LSR, %dx
        in      %dx, %al
        mov     %ax, SCRATCH
        ret

        .code32
stage32:
        mov     $msg_prot, %esi
        call    puts32
        mov     $MMIO_BASE, %ebx
        mov     (%ebx), %eax
        mov     %eax, SCRATCH + 8
        mov     $TEST_PORT, %dx
        in      %dx, %eax
        mov     %eax, SCRATCH + 12
        ret

        .code64
main64:
        mov     $msg_long, %rsi
        call    puts64

        mov     $COM1_LSR, %dx
        mov     $-1, %rax
        in      %dx, %al
        mov     %rax, %r8
        mov     $TEST_PORT, %dx
        mov     $-1, %rax
        in      %dx, %eax
        mov     %rax, %r9
        mov     $-1, %rax
        in      %dx, %ax
        mov     %rax, %r10

        mov     $MMIO_BASE, %ebx
        movl    $0xcafef00d, (%rbx)
        movabs  $0x0807060504030201, %rax
        mov     %rax, 8(%rbx)
        mov     (%rbx), %r11d
        movzbl  1(%rbx), %r12d
        addl    $1, (%rbx)

        movabs  $0x1122334455667788, %rax
        mov     $(SCRATCH + ALIAS_BASE + 16), %edi
        mov     %rax, (%rdi)
        mov     SCRATCH + 16, %r13
        sub     $16, %rdi

        mov     $msg_outs, %rsi
        mov     $(msg_outs_end - msg_outs), %ecx
        mov     $COM1, %dx
        rep outsb

        mov     $(SCRATCH + 0x20), %edi
        mov     $8, %ecx
        mov     $TEST_PORT, %dx
        rep insb
        mov     SCRATCH + 0x20, %rbx

        movzwl  SCRATCH, %r14d
        mov     SCRATCH + 8, %r15
        movabs  $0x0123456789abcdef, %rbp
        movabs  $0x5a5a5a5a5a5a5a00, %rax
        cmp     %r13, %rbp
        jmp     debug_exit

msg_real:   .asciz "longmode: real mode\r\n"
msg_prot:   .asciz "longmode: protected mode\r\n"
msg_long:   .asciz "longmode: long mode\r\n"
msg_outs:   .ascii "longmode: rep outsb done\r\n"
msg_outs_end:
