/*
 * bench_workloads.S - the three guest workloads of bench/run.py, in one bootable image.
 *
 *   int       64-bit long mode: xorshift64 with a data-dependent branch (integer/branch loop)
 *   sieve32   32-bit protected mode, PAGING OFF: sieve of Eratosthenes over a 64 KiB byte
 *             array at 0x10000, then a pass summing the primes
 *   memcpy64  64-bit long mode, 4-level paging (4 KiB pages): REP MOVSB from the 2 MiB alias
 *             mapping, a byte-copy loop, a qword add loop and REP MOVSQ over 0x110000-0x13ffff
 *
 * Each workload runs ``count`` times (see the parameter block) and prints one line with a
 * checksum; a count of 0 skips it, so an all-zero block is the "empty" guest that boots
 * through every mode and exits at once (bench/run.py subtracts its time and instructions).
 * Output, for the counts in the block below:
 *   int 0x<16 hex digits>       r12 + r13 after the loop (see int_loop)
 *   sieve32 6542 <sum>          primes below 65536 in the last pass, and the sum of the
 *                               primes over all passes modulo 2^32
 *   memcpy64 0x<16 hex digits>  rotate-xor hash of the qwords at 0x110000-0x13ffff
 *   bench done
 * then isa-debug-exit with value 0.
 *
 * The image is also a bootable disk: the first sector carries the 0x55aa signature, and when
 * a BIOS is present (int 0x13 vector set) stage16 reads sectors 1..7 to 0x7e00 with the
 * EDD read (int 0x13, AH=0x42) from the boot drive in DL.  Under kvmpy's VMM and the host's
 * KVM the VMM has loaded the whole image and there is no BIOS: the IVT is zero and nothing
 * is read.  So QEMU boots the same image from a raw disk.
 */
        .include "boot.inc"

        .set BIOS_DISK_VECTOR, 0x13 * 4
        .set REST_SECTORS,     7          /* the image is at most 4096 bytes */
        .set RESULTS,          SCRATCH    /* sieve32 results, printed in long mode */
        .set SIEVE,            0x10000
        .set SIEVE_SIZE,       65536
        .set BUF_A,            0x100000   /* 64 KiB of i * GOLDEN, read through the alias */
        .set BUF_B,            0x110000
        .set BUF_C,            0x120000
        .set BUF_D,            0x130000
        .set BUF_END,          0x140000

        .code16
/* With a BIOS, load the rest of the image; it must fit before the signature. */
stage16:
        mov     BIOS_DISK_VECTOR, %ax
        or      BIOS_DISK_VECTOR + 2, %ax
        jz      1f
        pushl   $0                      /* disk address packet, built on the stack: */
        pushl   $1                      /*   LBA 1 (qword) */
        pushl   $0x7e00                 /*   buffer 0000:7e00 */
        pushw   $REST_SECTORS           /*   sector count */
        pushw   $0x10                   /*   packet size */
        mov     %sp, %si
        mov     $0x42, %ah
        sti
        int     $0x13
        cli
        add     $16, %sp
1:      ret

        .org    510
        .word   0xaa55

/* The parameter block, at 0x7e00 (image offset 512): bench/run.py patches the counts. */
params:
        .ascii  "KVMPYBNC"
int_count:      .long 200000            /* loop iterations (15 instructions each) */
sieve_count:    .long 4                 /* sieve passes (~860,000 instructions each) */
memcpy_count:   .long 100               /* copy rounds (~31,000 instructions each) */

        .code32
/* Sieve passes; leaves the prime count and the summed prime sums at RESULTS. */
stage32:
        mov     sieve_count, %ebp
        movl    $0, RESULTS + 4
        test    %ebp, %ebp
        jz      9f
1:      mov     $SIEVE, %edi            /* every byte = 1: "maybe prime" */
        mov     $0x01010101, %eax
        mov     $(SIEVE_SIZE / 4), %ecx
2:      mov     %eax, (%edi)
        add     $4, %edi
        dec     %ecx
        jnz     2b
        movw    $0, SIEVE               /* 0 and 1 are not prime */
        mov     $2, %ebx
3:      mov     %ebx, %eax
        imul    %ebx, %eax
        cmp     $SIEVE_SIZE, %eax
        jae     6f
        cmpb    $0, SIEVE(%ebx)
        je      5f
4:      movb    $0, SIEVE(%eax)
        add     %ebx, %eax
        cmp     $SIEVE_SIZE, %eax
        jb      4b
5:      inc     %ebx
        jmp     3b
6:      xor     %ebx, %ebx
        xor     %edx, %edx              /* primes found */
        xor     %esi, %esi              /* their sum */
7:      cmpb    $0, SIEVE(%ebx)
        je      8f
        inc     %edx
        add     %ebx, %esi
8:      inc     %ebx
        cmp     $SIEVE_SIZE, %ebx
        jb      7b
        mov     %edx, RESULTS
        add     %esi, RESULTS + 4
        dec     %ebp
        jnz     1b
9:      ret

        .code64
main64:
        mov     int_count, %ecx
        test    %ecx, %ecx
        jz      1f
        call    int_loop
        push    %rax
        mov     $msg_int, %rsi
        call    puts64
        pop     %rax
        mov     $16, %ecx
        call    put_hex64
        call    newline
1:      cmpl    $0, sieve_count
        je      2f
        mov     $msg_sieve, %rsi
        call    puts64
        mov     RESULTS, %eax
        call    put_dec64
        mov     $msg_space, %rsi
        call    puts64
        mov     RESULTS + 4, %eax
        call    put_dec64
        call    newline
2:      mov     memcpy_count, %ecx
        test    %ecx, %ecx
        jz      3f
        call    memcpy_rounds
        push    %rax
        mov     $msg_memcpy, %rsi
        call    puts64
        pop     %rax
        mov     $16, %ecx
        call    put_hex64
        call    newline
3:      mov     $msg_done, %rsi
        call    puts64
        xor     %eax, %eax
        jmp     debug_exit

newline:
        mov     $msg_newline, %rsi
        jmp     puts64

/* ECX iterations of xorshift64 from a fixed seed; the low bit of each value picks
 * r12 += x or r13 ^= x.  Both arms end in a jump, so every iteration is 15 instructions
 * and the count is exactly linear in ECX (bench/run.py extrapolates it).
 * Returns RAX = r12 + r13. */
int_loop:
        mov     $0x2545f4914f6cdd1d, %rbx
        xor     %r12d, %r12d
        xor     %r13d, %r13d
1:      mov     %rbx, %rax
        shl     $13, %rax
        xor     %rax, %rbx
        mov     %rbx, %rax
        shr     $7, %rax
        xor     %rax, %rbx
        mov     %rbx, %rax
        shl     $17, %rax
        xor     %rax, %rbx
        test    $1, %bl
        jz      2f
        add     %rbx, %r12
        jmp     3f
2:      xor     %rbx, %r13
        jmp     3f
3:      dec     %ecx
        jnz     1b
        lea     (%r12, %r13), %rax
        ret

/* ECX rounds of copying; returns RAX = the hash of BUF_B..BUF_END.  Round r, with
 * off = (13 * r) & 0xff:
 *   B[0:16384]      = A[off:off+16384]   REP MOVSB, A read at its alias ALIAS_BASE + A
 *   C[off:off+4096] = B[0:4096]          byte loop
 *   D.q[i]         += C.q[i], i < 2048   qword loop
 *   B[8192:12288]   = C[0:4096]          REP MOVSQ
 * The buffers start zeroed except A[i*8] = i * 0x9e3779b97f4a7c15 (qwords, i < 8192). */
memcpy_rounds:
        mov     %ecx, %r8d
        mov     $BUF_A, %edi            /* fill A, zero B..D */
        xor     %eax, %eax
        mov     $0x9e3779b97f4a7c15, %rdx
        mov     $8192, %ecx
1:      mov     %rax, (%rdi)
        add     %rdx, %rax
        add     $8, %rdi
        dec     %ecx
        jnz     1b
        xor     %eax, %eax
        mov     $((BUF_END - BUF_B) / 8), %ecx
        rep stosq
        xor     %r9d, %r9d              /* off */
2:      lea     (ALIAS_BASE + BUF_A)(%r9), %rsi
        mov     $BUF_B, %edi
        mov     $16384, %ecx
        rep movsb
        mov     $BUF_B, %esi
        lea     BUF_C(%r9), %rdi
        xor     %ecx, %ecx
3:      mov     (%rsi, %rcx), %al
        mov     %al, (%rdi, %rcx)
        inc     %ecx
        cmp     $4096, %ecx
        jb      3b
        mov     $BUF_C, %esi
        mov     $BUF_D, %edi
        xor     %ecx, %ecx
4:      mov     (%rsi, %rcx, 8), %rax
        add     %rax, (%rdi, %rcx, 8)
        inc     %ecx
        cmp     $2048, %ecx
        jb      4b
        mov     $BUF_C, %esi
        mov     $(BUF_B + 8192), %edi
        mov     $512, %ecx
        rep movsq
        add     $13, %r9d
        and     $0xff, %r9d
        dec     %r8d
        jnz     2b
        xor     %eax, %eax              /* hash = rol(hash, 7) ^ qword */
        mov     $BUF_B, %esi
5:      rol     $7, %rax
        xor     (%rsi), %rax
        add     $8, %esi
        cmp     $BUF_END, %esi
        jb      5b
        ret

msg_int:     .asciz "int "
msg_sieve:   .asciz "sieve32 "
msg_memcpy:  .asciz "memcpy64 "
msg_space:   .asciz " "
msg_newline: .asciz "\r\n"
msg_done:    .asciz "bench done\r\n"
