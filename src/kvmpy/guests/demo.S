/*
 * demo.S - the guest `kvmpy run` boots when given no image.
 *
 * It walks the whole path a boot sector takes to 64-bit code (see boot.inc), printing a
 * line at each stage, then talks to the three kinds of device a VMM serves: an MMIO
 * write and read at 0xd0000000, an IN from COM1's line status register, and COM1 output.
 * Finally it computes the first 20 primes in long mode and prints them in decimal.
 *
 * Exit convention (isa-debug-exit, port 0xf4):
 *   value 0  success: the MMIO read returned 0x12345678 and the primes add up to 639
 *            (QEMU would report process status (0<<1)|1 = 1; kvmpy's VMM maps it to 0)
 *   value 1  failure: one of those checks failed
 */
        .include "boot.inc"

        .set NPRIMES, 20
        .set PRIME_SUM, 639             /* 2 + 3 + 5 + ... + 71 */

        .code16
stage16:
        mov     $msg_real, %si
        jmp     puts16

        .code32
stage32:
        mov     $msg_prot, %esi
        jmp     puts32

        .code64
main64:
        mov     $msg_long, %rsi
        call    puts64

        mov     $MMIO_BASE, %ebx
        movl    $0xcafef00d, (%rbx)     /* the VMM records this write */
        mov     (%rbx), %r12d           /* and answers this read */
        mov     $msg_mmio, %rsi
        call    puts64
        mov     %r12, %rax
        mov     $8, %ecx
        call    put_hex64

        mov     $COM1_LSR, %dx
        in      %dx, %al
        movzbl  %al, %r13d
        mov     $msg_lsr, %rsi
        call    puts64
        mov     %r13, %rax
        mov     $2, %ecx
        call    put_hex64

        mov     $msg_primes, %rsi
        call    puts64
        xor     %r14d, %r14d            /* sum of primes */
        xor     %r15d, %r15d            /* primes found */
        mov     $2, %ebx                /* candidate */
next_candidate:
        mov     $2, %ecx                /* trial divisor */
trial:
        mov     %ecx, %eax
        imul    %ecx, %eax
        cmp     %ebx, %eax
        ja      is_prime                /* divisor^2 > candidate */
        mov     %ebx, %eax
        xor     %edx, %edx
        div     %ecx
        test    %edx, %edx
        jz      not_prime
        inc     %ecx
        jmp     trial
is_prime:
        add     %rbx, %r14
        inc     %r15d
        mov     $' ', %al
        mov     $COM1, %dx
        out     %al, %dx
        mov     %rbx, %rax
        call    put_dec64
not_prime:
        inc     %ebx
        cmp     $NPRIMES, %r15d
        jb      next_candidate

        mov     $msg_sum, %rsi
        call    puts64
        mov     %r14, %rax
        call    put_dec64

        mov     $1, %al
        cmp     $0x12345678, %r12d
        jne     report
        cmp     $PRIME_SUM, %r14
        jne     report
        xor     %eax, %eax
report:
        mov     %eax, %ebx
        mov     $msg_ok, %rsi
        test    %bl, %bl
        jz      1f
        mov     $msg_fail, %rsi
1:      call    puts64
        mov     %ebx, %eax
        jmp     debug_exit

msg_real:   .asciz "kvmpy demo: hello from 16-bit real mode\r\n"
msg_prot:   .asciz "kvmpy demo: 32-bit protected mode\r\n"
msg_long:   .asciz "kvmpy demo: 64-bit long mode, 4-level paging\r\n"
msg_mmio:   .asciz "mmio read 0xd0000000 = "
msg_lsr:    .asciz "\r\ncom1 line status = "
msg_primes: .asciz "\r\nfirst 20 primes:"
msg_sum:    .asciz "\r\nsum = "
msg_ok:     .asciz "\r\ndemo ok, exiting with value 0\r\n"
msg_fail:   .asciz "\r\ndemo FAILED, exiting with value 1\r\n"
