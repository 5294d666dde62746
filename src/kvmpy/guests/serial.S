/*
 * serial.S - COM1's interrupts through the in-kernel 8259 (tests/vmm/test_serial_guest.py),
 * real mode, the sequence Linux's 8250 driver goes through.  Needs the in-kernel irqchip
 * (kvmpy run -machine kernel-irqchip=on).
 *
 *   1. The master PIC: vector base 0x20, only IRQ 4 unmasked.  The UART: FIFOs on (IIR must
 *      read 0xc1), MCR DTR|RTS without OUT2.
 *   2. OUT2 gates the IRQ: IER.THRI raises the THR-empty interrupt, but with OUT2 clear no
 *      IRQ 4 comes through an STI window.  Then the start-up THRE test of Linux's driver
 *      (UART_BUG_THRE): IIR after IER=THRI, IIR again (the first read acknowledged it),
 *      IIR after IER=0 and IER=THRI once more (re-asserted).
 *   3. OUT2 on; the message goes out by interrupts alone: IER=THRI, and each IRQ 4 whose IIR
 *      says THR-empty writes the next byte (the last one clears THRI); the main loop waits
 *      in HLT.
 *   4. IER=RDI: each IRQ 4 takes every byte LSR.DR shows, until a newline came; HLT between.
 *   5. With interrupts off, by polling: the probe's IIR values, the interrupts counted
 *      (gated, THR-empty, at least one receive), the IIR of the first receive interrupt,
 *      and the line received; then an OUT of 0 to isa-debug-exit (0xf4).
 */
        .code16
        .set VEC_IRQ4, 0x24
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x7000, %sp
        movw $irq4, VEC_IRQ4 * 4
        movw $0, VEC_IRQ4 * 4 + 2

        mov $0x11, %al                  /* ICW1: edge, cascade, ICW4 follows */
        out %al, $0x20
        mov $0x20, %al                  /* ICW2: vector base 0x20 */
        out %al, $0x21
        mov $0x04, %al                  /* ICW3: a slave on IRQ 2 */
        out %al, $0x21
        mov $0x01, %al                  /* ICW4: 8086 mode, normal EOI */
        out %al, $0x21
        mov $0xef, %al                  /* OCW1: only IRQ 4 */
        out %al, $0x21

        mov $COM1 + 1, %dx              /* IER = 0 */
        xor %al, %al
        out %al, %dx
        mov $COM1 + 2, %dx              /* FCR: FIFOs on, both cleared, trigger 1 */
        mov $0x07, %al
        out %al, %dx
        mov $COM1 + 4, %dx              /* MCR: DTR | RTS, no OUT2 */
        mov $0x03, %al
        out %al, %dx

        /* 2. THRI raised but gated by OUT2; then Linux's THRE test */
        mov $COM1 + 1, %dx
        mov $0x02, %al
        out %al, %dx
        sti
        mov $1000, %cx
1:      loop 1b
        cli
        mov $COM1 + 2, %dx              /* iir1 */
        in %dx, %al
        mov %al, probe
        in %dx, %al                     /* acknowledged by the first read */
        mov %al, probe + 1
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx
        mov $0x02, %al
        out %al, %dx
        mov $COM1 + 2, %dx              /* re-asserted */
        in %dx, %al
        mov %al, probe + 2
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx
        movb irqs_thre, %al             /* THR-empty interrupts taken while gated */
        mov %al, gated

        /* 3. output by THR-empty interrupts */
        mov $COM1 + 4, %dx              /* MCR: DTR | RTS | OUT2 */
        mov $0x0b, %al
        out %al, %dx
        movw $message, txp
        mov $COM1 + 1, %dx
        mov $0x02, %al
        out %al, %dx
2:      cli
        cmpw $0, txp
        je 3f
        sti
        hlt
        jmp 2b

        /* 4. input by receive interrupts */
3:      mov $COM1 + 1, %dx
        mov $0x01, %al
        out %al, %dx
4:      cli
        cmpb $0, rxdone
        jne 5f
        sti
        hlt
        jmp 4b

        /* 5. the report, polled */
5:      mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx
        mov $s_probe, %si
        call puts
        mov probe, %al
        call puthex
        mov probe + 1, %al
        call puthex
        mov probe + 2, %al
        call puthex
        mov $s_gated, %si
        call puts
        mov gated, %al
        call puthex
        mov $s_thre, %si
        call puts
        mov irqs_thre, %al
        call puthex
        mov $s_rx, %si
        call puts
        cmpb $0, irqs_rx
        setne %al
        call puthex
        mov $s_rxiir, %si
        call puts
        mov rxiir, %al
        call puthex
        mov $s_line, %si
        call puts
        mov $rxbuf, %si
        call puts
        xor %al, %al
        out %al, $0xf4
        hlt

/* IRQ 4: the UART's interrupt, served as Linux's serial8250_handle_irq does. */
irq4:   push %ax
        push %dx
        push %si
        mov $COM1 + 2, %dx
        in %dx, %al
        test $0x01, %al
        jnz 9f                          /* none pending (the PIC latched an old edge) */
        and $0x0f, %al
        cmp $0x02, %al
        je 7f
        cmpb $0, irqs_rx                /* receive (0x04) or character timeout (0x0c) */
        jne 5f
        mov %al, rxiir
5:      incb irqs_rx
6:      mov $COM1 + 5, %dx
        in %dx, %al
        test $0x01, %al
        jz 9f
        mov $COM1, %dx
        in %dx, %al
        mov rxp, %si
        cmp $rxbuf + RXMAX, %si
        jae 6b
        mov %al, (%si)
        incw rxp
        cmp $'\n', %al
        jne 6b
        movb $1, rxdone
        jmp 6b
7:      incb irqs_thre
        mov txp, %si
        or %si, %si
        jz 9f                           /* gated phase: nothing to send */
        lodsb
        or %al, %al
        jz 8f
        mov $COM1, %dx
        out %al, %dx
        mov %si, txp
        jmp 9f
8:      movw $0, txp                    /* the end: THRI off */
        mov $COM1 + 1, %dx
        xor %al, %al
        out %al, %dx
9:      mov $0x20, %al                  /* non-specific EOI */
        out %al, $0x20
        pop %si
        pop %dx
        pop %ax
        iret

        .include "uart_puts.inc"

message: .asciz "serial: output by THR-empty interrupts\n"
s_probe: .asciz "probe iir "
s_gated: .asciz "\ngated "
s_thre:  .asciz "thre "
s_rx:    .asciz "rx "
s_rxiir: .asciz "rx-iir "
s_line:  .asciz "\nline "
        .set RXMAX, 64
probe:  .byte 0, 0, 0
gated:  .byte 0
irqs_thre: .byte 0
irqs_rx: .byte 0
rxiir:  .byte 0
rxdone: .byte 0
txp:    .word 0
rxp:    .word rxbuf
rxbuf:  .fill RXMAX + 1, 1, 0
