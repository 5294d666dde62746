/*
 * serial_ioapic.S - COM1's interrupts through the in-kernel IOAPIC and LAPIC, the route
 * Linux takes with ACPI (tests/vmm/test_serial_guest.py), in 32-bit protected mode.  Needs
 * the in-kernel irqchip.
 *
 * Both 8259s masked; IOAPIC pin 4 (ISA IRQ 4, no MADT override) -> vector 0x34, fixed,
 * edge, active high, to LAPIC 0.  The UART: FIFOs on, OUT2.  The message goes out by
 * THR-empty interrupts alone (the handler writes the next byte; the last clears THRI),
 * then receive interrupts take a line; with interrupts off, polled: "ioapic: thre NN line
 * <the line>", and an OUT of 0 to isa-debug-exit.
 */
        .include "boot.inc"
        .include "apic.inc"

        .set IOREGSEL,    0xfec00000
        .set IOWIN,       0xfec00010
        .set UART_VEC,    0x34
        .set NVEC,        0x40
        .set V_TXP,       SCRATCH + 0x00
        .set V_THRE,      SCRATCH + 0x04
        .set V_RXP,       SCRATCH + 0x08
        .set V_RXDONE,    SCRATCH + 0x0c
        .set RXBUF,       SCRATCH + 0x40
        .set RXMAX,       0x40
        .set idt,         SCRATCH + 0x100

stage16:
        ret

        .code32
stage32:
        movl    $0, V_THRE
        movl    $RXBUF, V_RXP
        movl    $0, V_RXDONE
        SET_GATE idt, UART_VEC, uart_irq
        lidt    idt_desc
        movl    $0x1ff, L_SVR
        mov     $0xff, %al              /* the 8259s out of the way */
        out     %al, $0x21
        out     %al, $0xa1
        movl    $0x10 + 2 * 4, IOREGSEL /* pin 4: redirection entry, low then high */
        movl    $UART_VEC, IOWIN
        movl    $0x10 + 2 * 4 + 1, IOREGSEL
        movl    $0, IOWIN

        mov     $COM1 + 2, %dx          /* FCR: FIFOs on and cleared */
        mov     $0x07, %al
        out     %al, %dx
        mov     $COM1 + 4, %dx          /* MCR: DTR | RTS | OUT2 */
        mov     $0x0b, %al
        out     %al, %dx

        movl    $message, V_TXP
        mov     $COM1 + 1, %dx          /* IER: THRI */
        mov     $0x02, %al
        out     %al, %dx
1:      cli
        cmpl    $0, V_TXP
        je      2f
        sti
        hlt
        jmp     1b

2:      mov     $COM1 + 1, %dx          /* IER: RDI */
        mov     $0x01, %al
        out     %al, %dx
3:      cli
        cmpl    $0, V_RXDONE
        jne     4f
        sti
        hlt
        jmp     3b

4:      mov     $COM1 + 1, %dx
        xor     %al, %al
        out     %al, %dx
        mov     $s_thre, %esi
        call    puts
        mov     V_THRE, %al
        call    puthex
        mov     $s_line, %esi
        call    puts
        mov     $RXBUF, %esi
        call    puts
        xor     %al, %al
        out     %al, $DEBUG_EXIT
        cli
        hlt

uart_irq:
        push    %eax
        push    %edx
        push    %esi
        mov     $COM1 + 2, %dx
        in      %dx, %al
        test    $0x01, %al
        jnz     9f
        and     $0x0f, %al
        cmp     $0x02, %al
        je      7f
6:      mov     $COM1 + 5, %dx          /* receive: every byte LSR.DR shows */
        in      %dx, %al
        test    $0x01, %al
        jz      9f
        mov     $COM1, %dx
        in      %dx, %al
        mov     V_RXP, %esi
        cmp     $RXBUF + RXMAX - 1, %esi
        jae     6b
        mov     %al, (%esi)
        incl    V_RXP
        cmp     $'\n', %al
        jne     6b
        movl    $1, V_RXDONE
        jmp     6b
7:      incl    V_THRE
        mov     V_TXP, %esi
        lodsb
        or      %al, %al
        jz      8f
        mov     $COM1, %dx
        out     %al, %dx
        mov     %esi, V_TXP
        jmp     9f
8:      movl    $0, V_TXP               /* the end: THRI off */
        mov     $COM1 + 1, %dx
        xor     %al, %al
        out     %al, %dx
9:      movl    $0, L_EOI
        pop     %esi
        pop     %edx
        pop     %eax
        IRQ_RETURN

        .include "uart_puts.inc"

main64:
        hlt
        jmp     main64

        .p2align 3
idt_desc:  .word NVEC * 8 - 1
           .long idt
message:   .asciz "ioapic: output by THR-empty interrupts\n"
s_thre:    .asciz "ioapic: thre "
s_line:    .asciz "line "
