/*
 * pic.S - the in-kernel 8259 pair seen from a guest (tests/guests/test_pic_guest.py), real mode.
 *
 * Needs KVM_CREATE_IRQCHIP.  Programs both PICs (ICW1-4: vectors 0x20 and 0x28, cascade on
 * IRQ 2), unmasks IRQ 1, 2 and 10, makes IRQ 10 level-triggered through the ELCR (BH = the
 * ELCR read back), then six times: OUT to 0x80 (the VMM raises the next line: IRQ 1 as an
 * edge, IRQ 10 as a level, in turn) and "sti; hlt" until the interrupt wakes it.
 *   IRQ 1   SI += 1, non-specific EOI
 *   IRQ 10  DI += 1, OUT to 0x82 (the VMM lowers the line), specific EOI to the slave (pin
 *           2), non-specific EOI to the master
 * With IF=0, OUT to 0x83 has the VMM raise IRQ 1 once more, which the guest takes by poll
 * mode: BL = the poll byte, CL = IRR and CH = ISR of the master afterwards.  An OUT of 0 to
 * isa-debug-exit (0xf4) ends the run.
 */
        .code16
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $irq1, 0x21 * 4
        movw $0, 0x21 * 4 + 2
        movw $irq10, 0x2a * 4
        movw $0, 0x2a * 4 + 2

        mov $0x11, %al                  /* ICW1: edge, cascade, ICW4 follows */
        out %al, $0x20
        out %al, $0xa0
        mov $0x20, %al                  /* ICW2: vector bases */
        out %al, $0x21
        mov $0x28, %al
        out %al, $0xa1
        mov $0x04, %al                  /* ICW3: slave on IRQ 2 / slave id 2 */
        out %al, $0x21
        mov $0x02, %al
        out %al, $0xa1
        mov $0x01, %al                  /* ICW4: 8086 mode, normal EOI */
        out %al, $0x21
        out %al, $0xa1
        mov $0xf9, %al                  /* OCW1: IRQ 1 and 2 unmasked */
        out %al, $0x21
        mov $0xfb, %al                  /* IRQ 10 unmasked */
        out %al, $0xa1
        mov $0x4d1, %dx                 /* ELCR 2: IRQ 10 level-triggered */
        mov $0x04, %al
        out %al, %dx
        in %dx, %al
        mov %al, %bh

        xor %si, %si
        xor %di, %di
1:      cli
        out %al, $0x80                  /* the VMM raises the next line */
        sti
        hlt                             /* in the STI shadow: the interrupt ends the halt */
        mov %si, %ax
        add %di, %ax
        cmp $6, %ax
        jb 1b

        cli
        out %al, $0x83                  /* the VMM raises IRQ 1 with IF=0 */
        mov $0x0c, %al                  /* OCW3: poll */
        out %al, $0x20
        in $0x20, %al
        mov %al, %bl
        mov $0x0a, %al                  /* OCW3: read IRR */
        out %al, $0x20
        in $0x20, %al
        mov %al, %cl
        mov $0x0b, %al                  /* OCW3: read ISR */
        out %al, $0x20
        in $0x20, %al
        mov %al, %ch
        xor %al, %al
        out %al, $0xf4
        hlt

irq1:   inc %si
        mov $0x20, %al                  /* OCW2: non-specific EOI */
        out %al, $0x20
        iret

irq10:  inc %di
        out %al, $0x82                  /* the VMM lowers IRQ 10 */
        mov $0x62, %al                  /* OCW2: specific EOI, pin 2 of the slave */
        out %al, $0xa0
        mov $0x20, %al
        out %al, $0x20
        iret
