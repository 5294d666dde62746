/*
 * rtc.S - the CMOS real-time clock seen from a guest (tests/vmm/test_rtc_guest.py), real
 * mode.  The first byte on COM1 (polled) says what to do: 'p' the polled reads only, 'i'
 * the update interrupt too (which needs the in-kernel irqchip).
 *
 *   1. After UIP clears, the date and time in BCD (register B 0x02, as firmware leaves it):
 *      "date CC YY MM DD HH MM SS wd WD"
 *   2. The hour, minute and second in binary 24-hour mode (B 0x06), the hour in binary
 *      12-hour (B 0x04) and BCD 12-hour (B 0x00) modes, register D:
 *      "bin HH MM SS 12h HH bcd12h HH d DD"
 *   3. 'i': register C read (cleared), IRQ 8 unmasked on the slave 8259 (vector 0x28), B
 *      0x12 (UIE); three update interrupts, each handler reading C; then the date again:
 *      "uie C1 C2 C3 date CC YY MM DD HH MM SS"
 *   4. The guest sets the clock (B.SET, 2025-06-15 12:34:56, SET cleared) and reads it back:
 *      "set CC YY MM DD HH MM SS"
 *   then an OUT of 0 to isa-debug-exit (0xf4).
 */
        .code16
        .set VEC_IRQ8, 0x28

.macro  RTC idx                         /* AL = RTC register \idx */
        mov $\idx, %al
        out %al, $0x70
        in $0x71, %al
.endm

.macro  RTC_SET idx, value              /* RTC register \idx = \value */
        mov $\idx, %al
        out %al, $0x70
        mov $\value, %al
        out %al, $0x71
.endm

.macro  SAY string                      /* the string at \string */
        mov $\string, %si
        call puts
.endm

.macro  SHOW idx                        /* RTC register \idx in hex */
        RTC \idx
        call puthex
.endm

        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $irq8, VEC_IRQ8 * 4
        movw $0, VEC_IRQ8 * 4 + 2

        mov $COM1 + 5, %dx              /* the mode byte */
1:      in %dx, %al
        test $0x01, %al
        jz 1b
        mov $COM1, %dx
        in %dx, %al
        mov %al, mode

        /* 1. BCD, 24-hour */
1:      RTC 0x0a
        test $0x80, %al                 /* UIP: the registers are being updated */
        jnz 1b
        SAY s_date
        call showdate
        SAY s_wday
        SHOW 0x06

        /* 2. binary and 12-hour */
        RTC_SET 0x0b, 0x06
        SAY s_bin
        SHOW 0x04
        SHOW 0x02
        SHOW 0x00
        RTC_SET 0x0b, 0x04
        SAY s_12h
        SHOW 0x04
        RTC_SET 0x0b, 0x00
        SAY s_bcd12h
        SHOW 0x04
        RTC_SET 0x0b, 0x02
        SAY s_d
        SHOW 0x0d

        /* 3. update interrupts */
        cmpb $'i', mode
        jne 4f
        mov $0x11, %al                  /* ICW1 to both 8259s */
        out %al, $0x20
        out %al, $0xa0
        mov $0x20, %al                  /* ICW2: vector bases 0x20 and 0x28 */
        out %al, $0x21
        mov $0x28, %al
        out %al, $0xa1
        mov $0x04, %al                  /* ICW3: the slave on IRQ 2 */
        out %al, $0x21
        mov $0x02, %al
        out %al, $0xa1
        mov $0x01, %al                  /* ICW4 */
        out %al, $0x21
        out %al, $0xa1
        mov $0xfb, %al                  /* master: only the cascade */
        out %al, $0x21
        mov $0xfe, %al                  /* slave: only IRQ 8 */
        out %al, $0xa1
        RTC 0x0c                        /* clear the flags */
        RTC_SET 0x0b, 0x12              /* UIE, 24-hour, BCD */
2:      cli
        cmpw $3, count
        jae 3f
        sti
        hlt
        jmp 2b
3:      RTC_SET 0x0b, 0x02
        SAY s_uie
        mov flags, %al
        call puthex
        mov flags + 1, %al
        call puthex
        mov flags + 2, %al
        call puthex
        SAY s_date
        call showdate

        /* 4. the guest sets the clock */
4:      RTC_SET 0x0b, 0x82              /* SET: updates stop */
        RTC_SET 0x32, 0x20
        RTC_SET 0x09, 0x25
        RTC_SET 0x08, 0x06
        RTC_SET 0x07, 0x15
        RTC_SET 0x04, 0x12
        RTC_SET 0x02, 0x34
        RTC_SET 0x00, 0x56
        RTC_SET 0x0b, 0x02              /* running again, from the time written */
        SAY s_set
        call showdate
        SAY s_nl
        xor %al, %al
        out %al, $0xf4
        hlt

/* century, year, month, day, hours, minutes, seconds */
showdate:
        SHOW 0x32
        SHOW 0x09
        SHOW 0x08
        SHOW 0x07
        SHOW 0x04
        SHOW 0x02
        SHOW 0x00
        ret

/* IRQ 8: register C, as Linux's rtc_cmos handler reads it (which ends the interrupt). */
irq8:   push %ax
        push %bx
        RTC 0x0c
        mov count, %bx
        cmp $3, %bx
        jae 1f
        mov %al, flags(%bx)
        incw count
1:      mov $0x20, %al                  /* EOI: slave, then master */
        out %al, $0xa0
        out %al, $0x20
        pop %bx
        pop %ax
        iret

        .include "uart_puts.inc"

s_date:   .asciz "date "
s_wday:   .asciz "wd "
s_bin:    .asciz "\nbin "
s_12h:    .asciz "12h "
s_bcd12h: .asciz "bcd12h "
s_d:      .asciz "d "
s_uie:    .asciz "\nuie "
s_set:    .asciz "\nset "
s_nl:     .asciz "\n"
mode:   .byte 0
count:  .word 0
flags:  .byte 0, 0, 0
