/*
 * pit.S - the 8254 PIT seen from a guest (tests/guests/test_pit_guest.py), in real mode.
 *
 * Needs an in-kernel PIT with the speaker port (KVM_CREATE_PIT2, KVM_PIT_SPEAKER_DUMMY).
 *   channel 2  gate on through port 0x61, mode 0 with a count of 0x100 (lobyte/hibyte):
 *              BL = OUT (0x61 bit 5) right after the load, ECX = polls of 0x61 until OUT
 *              rose (at most 0x1000000), BH = 0x61 & 0x23 at the end (gate, data, OUT)
 *   channel 0  mode 2, count 0: SI and DI = two counter-latch reads, a delay apart;
 *              DL = the status byte a read-back command latched
 *   channel 1  mode 0 with a BCD count of 0x5000: BP = the latched count after a delay
 *              (KVM counts in binary in BCD mode)
 * then the TSC goes to 0x6000 (8 bytes) and an OUT of 0 to isa-debug-exit (0xf4) ends the run.
 */
        .code16
        .globl _start
_start:
        cli
        /* channel 2 through the speaker port */
        mov $0x01, %al
        out %al, $0x61                  /* gate 2 on, speaker data off */
        mov $0xb0, %al                  /* channel 2, lobyte/hibyte, mode 0, binary */
        out %al, $0x43
        mov $0x00, %al
        out %al, $0x42
        mov $0x01, %al
        out %al, $0x42
        in $0x61, %al
        and $0x20, %al
        mov %al, %bl
        xor %ecx, %ecx
1:      inc %ecx
        cmp $0x1000000, %ecx
        je 2f
        in $0x61, %al
        test $0x20, %al
        jz 1b
2:      in $0x61, %al
        and $0x23, %al
        mov %al, %bh

        /* channel 0: counter latch, delay, counter latch, read-back status */
        mov $0x34, %al                  /* channel 0, lobyte/hibyte, mode 2 */
        out %al, $0x43
        xor %al, %al
        out %al, $0x40
        out %al, $0x40
        call latch0
        mov %ax, %si
        mov $2000, %dx
3:      dec %dx
        jnz 3b
        call latch0
        mov %ax, %di
        mov $0xe2, %al                  /* read-back: status only, channel 0 */
        out %al, $0x43
        in $0x40, %al
        mov %al, %dl

        /* channel 1: BCD */
        mov $0x71, %al                  /* channel 1, lobyte/hibyte, mode 0, BCD */
        out %al, $0x43
        xor %al, %al
        out %al, $0x41
        mov $0x50, %al                  /* count 0x5000: BCD 5000 */
        out %al, $0x41
        mov $2000, %ax
4:      dec %ax
        jnz 4b
        mov $0x40, %al                  /* counter latch, channel 1 */
        out %al, $0x43
        in $0x41, %al
        mov %al, %ah
        in $0x41, %al
        xchg %al, %ah
        mov %ax, %bp

        push %edx
        rdtsc                           /* the TSC at the end, to 0x6000 */
        mov %eax, 0x6000
        mov %edx, 0x6004
        pop %edx
        xor %al, %al
        out %al, $0xf4
        hlt

latch0: xor %al, %al                    /* counter latch, channel 0 */
        out %al, $0x43
        in $0x40, %al
        mov %al, %ah
        in $0x40, %al
        xchg %al, %ah
        ret
